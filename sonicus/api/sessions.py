"""The caller's listening sessions: start, heartbeat, complete, history."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..auth import current_user, require_user
from ..envelope import Blueprint, set_message
from ..schemas.sessions import (
    SessionCompleteSchema,
    SessionHeartbeatSchema,
    SessionHistoryArgsSchema,
    SessionSchema,
    SessionStartSchema,
)
from ..services import listening

blp = Blueprint("sessions", __name__, url_prefix="/api/user",
                description="Listening sessions within the tier's limits.")


@blp.route("/sessions")
class Sessions(MethodView):
    @require_user
    @blp.arguments(SessionHistoryArgsSchema, location="query", unknown=ma.RAISE)
    @blp.response(200, SessionSchema(many=True))
    def get(self, args):
        """The caller's sessions, newest first; ``from``/``to`` are days, inclusive."""
        return listening.list_history(current_user._get_current_object(), args)

    @require_user
    @blp.arguments(SessionStartSchema)
    @blp.response(201, SessionSchema)
    @blp.alt_response(403, description="`package_locked`: the package is above the tier.")
    @blp.alt_response(429, description="`daily_session_limit_reached`, with `resets_at`.")
    def post(self, body):
        """Start a session (counts against today's quota)."""
        return listening.start_session(current_user._get_current_object(), body["package_id"],
                                       body.get("track_id"), body.get("mood_before"))


@blp.route("/sessions/<int:session_id>")
class SessionDetail(MethodView):
    @require_user
    @blp.response(200, SessionSchema)
    def get(self, session_id):
        """One of the caller's sessions."""
        return listening.get_session(current_user._get_current_object(), session_id)

    @require_user
    @blp.arguments(SessionHeartbeatSchema)
    @blp.response(200, SessionSchema)
    @blp.alt_response(409, description="`conflict`: the session has already ended.")
    def patch(self, body, session_id):
        """Progress heartbeat: listened seconds, clamped by the server and never decreasing."""
        return listening.heartbeat(current_user._get_current_object(), session_id,
                                   body["listened_seconds"])


@blp.route("/sessions/<int:session_id>/complete")
class SessionComplete(MethodView):
    @require_user
    @blp.arguments(SessionCompleteSchema)
    @blp.response(200, SessionSchema)
    @blp.alt_response(409, description="`conflict`: the session has already ended.")
    def post(self, body, session_id):
        """End the session with the listened time, whether it was finished, and mood."""
        session = listening.complete_session(
            current_user._get_current_object(), session_id, body["listened_seconds"],
            body["completed"], body.get("mood_after"), body.get("note"))
        set_message("Session completed." if session.completed else "Session ended.")
        return session
