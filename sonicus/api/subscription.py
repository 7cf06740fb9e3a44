"""The caller's subscription: read, choose/buy/upgrade/downgrade, cancel, resume, history."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import current_user, require_user
from ..envelope import Blueprint, paginate, set_message
from ..extensions import db
from ..schemas.subscription import (
    CancelSchema,
    HistoryArgsSchema,
    SubscriptionChangeSchema,
    SubscriptionEventSchema,
    SubscriptionSchema,
)
from ..services import subscriptions

blp = Blueprint("subscription", __name__, url_prefix="/api/user",
                description="The caller's subscription.")


def _user():
    return current_user._get_current_object()


@blp.route("/subscription")
class Subscription(MethodView):
    @require_user
    @blp.response(200, SubscriptionSchema)
    def get(self):
        """The tier in force, its status, limits and today's usage."""
        return subscriptions.describe(_user())

    @require_user
    @blp.arguments(SubscriptionChangeSchema)
    @blp.response(200, SubscriptionSchema)
    @blp.alt_response(402, response="DEFAULT_ERROR")
    @blp.alt_response(403, response="DEFAULT_ERROR")
    @blp.alt_response(409, response="DEFAULT_ERROR")
    @blp.alt_response(502, response="DEFAULT_ERROR")
    def post(self, body):
        """Choose a tier: starter, a checkout for a paid tier, a trial, an upgrade or a downgrade.

        Paid tier without a trial: `incomplete` with a `checkout`; the tier takes effect when
        the payment arrives. An upgrade from a paid tier is immediate and prorated; a
        downgrade (or starter) takes effect at the end of the period.
        Errors: 402 `payment_required` (the provider declined an upgrade's charge),
        403 `email_not_verified` (paid tiers and trials), 409 `trial_already_used` (or
        `conflict`: a trial starts from starter), 502 `billing_unavailable`.
        """
        user = _user()
        sub, message = subscriptions.change_tier(user, body["tier"], body["start_trial"])
        set_message(message)
        return subscriptions.describe(user, sub)

    @require_user
    @blp.arguments(CancelSchema, required=False)
    @blp.response(200, SubscriptionSchema)
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def delete(self, body):
        """Cancel at the end of the period (or trial); a pending checkout is dropped.

        409 `conflict` when there is nothing to cancel.
        """
        user = _user()
        sub, message = subscriptions.cancel(user, body.get("reason"), body.get("comment"))
        set_message(message)
        return subscriptions.describe(user, sub)


@blp.route("/subscription/resume")
class Resume(MethodView):
    @require_user
    @blp.response(200, SubscriptionSchema)
    @blp.alt_response(409, response="DEFAULT_ERROR")
    def post(self):
        """Undo a scheduled cancellation or downgrade before the period ends.

        409 `conflict` when nothing is scheduled or the period is over.
        """
        user = _user()
        sub, message = subscriptions.resume(user)
        set_message(message)
        return subscriptions.describe(user, sub)


@blp.route("/subscription/history")
class History(MethodView):
    @require_user
    @blp.arguments(HistoryArgsSchema, location="query")
    @blp.response(200, SubscriptionEventSchema(many=True))
    def get(self, args):
        """The subscription's events, newest first."""
        events = paginate(db, subscriptions.history_query(_user()), args)
        return [subscriptions.event_view(e) for e in events]
