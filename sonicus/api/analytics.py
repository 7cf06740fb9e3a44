"""Routes of the analytics area: personal analytics and the dashboard (see API.md)."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..schemas.analytics import (
    AnalyticsSchema,
    DashboardSchema,
    RecapArgsSchema,
    RecapSchema,
    RefreshQueuedSchema,
)
from ..schemas.recommendations import RecommendationArgsSchema, RecommendationSchema
from ..services import analytics, dashboard, recaps, recommendations

blp = Blueprint("analytics", __name__, url_prefix="/api/user",
                description="Personal analytics and the dashboard. Live updates: WebSocket "
                            "`/ws/analytics` (token as `?access_token=` or subprotocol "
                            "`bearer, <token>`; close code 4401 on a bad token).")


@blp.route("/analytics")
class Analytics(MethodView):
    @require_user
    @blp.response(200, AnalyticsSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """The caller's listening analytics (cached; computed on a miss)."""
        return analytics.get_user_analytics(caller)


@blp.route("/analytics/refresh")
class AnalyticsRefresh(MethodView):
    @require_user
    @blp.response(202, RefreshQueuedSchema)
    @blp.errors(401, 403)
    def post(self, caller):
        """Ask for a fresh computation; the result arrives as `analytics.updated` on the socket."""
        analytics.queue_refresh(caller.id)
        set_message("Analytics refresh queued.")
        return {"status": "queued"}


@blp.route("/dashboard")
class Dashboard(MethodView):
    @require_user
    @blp.response(200, DashboardSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """The app's home in one call: profile, subscription, analytics, what next."""
        return dashboard.get_dashboard(caller)


@blp.route("/recap")
class Recap(MethodView):
    @require_user
    @blp.arguments(RecapArgsSchema, location="query")
    @blp.response(200, RecapSchema)
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """A week, month or year of the caller's listening, with the previous one's totals
        (the period containing `date`, default today, in the caller's days; cached)."""
        return recaps.get_recap(caller, args["period"], args.get("date"))


@blp.route("/recommendations")
class Recommendations(MethodView):
    @require_user
    @blp.arguments(RecommendationArgsSchema, location="query")
    @blp.response(200, RecommendationSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """Packages the caller can play, best first, by measured mood outcomes: their own,
        those of people with their goals and a similar starting mood, the population's."""
        return recommendations.recommendations_for(caller.id, caller.tier, caller.preferences,
                                                   args["limit"])
