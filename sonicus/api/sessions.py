"""The caller's listening sessions: start, heartbeat, complete, history."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..pagination import PageArgsSchema
from ..retry_safe import no_effect_before_commit
from ..schemas.sessions import (
    PlaybackSchema,
    SessionCompleteSchema,
    SessionHeartbeatSchema,
    SessionHistoryArgsSchema,
    SessionProgressSchema,
    SessionSchema,
    SessionStartSchema,
)
from ..services import listening, playback

blp = Blueprint("sessions", __name__, url_prefix="/api/user",
                description="Listening sessions within the tier's limits.")

_ENDED = (409, "`conflict`: the session has already ended.")


@blp.route("/sessions")
class Sessions(MethodView):
    @require_user
    @blp.arguments(SessionHistoryArgsSchema, location="query")
    @blp.response(200, SessionSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """The caller's sessions, newest first; ``from``/``to`` are days, inclusive."""
        return listening.list_history(caller.id, args)

    @require_user
    @blp.arguments(SessionStartSchema)
    @blp.response(201, SessionSchema)
    @blp.alt_response(200, schema=SessionSchema, description=(
        "A session with this `client_id` exists already: it is the answer, nothing counted."))
    @blp.errors(401, (402, "`payment_required`: the tier chosen that would open it waits for "
                           "its payment (a checkout pending)."),
                (403, "`package_locked`: neither the tier nor an assignment opens it."),
                404, 422,
                (429, "`daily_session_limit_reached`, with `resets_at`."))
    @no_effect_before_commit  # one transaction on the app's session; locks only the user's
    # subscription row (never waited for by a holder of the user's row: README)
    def post(self, body, caller):
        """Start a session (counts against today's quota); retry-safe with `client_id`."""
        client_id = body.get("client_id")
        session, created = listening.start_or_find_session(
            caller.id, body["package_id"], body.get("track_id"), body.get("mood_before"),
            client_id=None if client_id is None else str(client_id))
        if client_id is not None:  # named back as the client spelled it (stored canonical)
            session = _NamedAsSent(session, client_id.sent)
        return session if created else (session, 200)


class _NamedAsSent:
    """A session read for an answer, with its ``client_id`` as the request spelled it."""

    def __init__(self, session, client_id: str):
        self._session, self.client_id = session, client_id

    def __getattr__(self, name):
        return getattr(self._session, name)


@blp.route("/sessions/<int:session_id>")
class SessionDetail(MethodView):
    @require_user
    @blp.response(200, SessionSchema)
    @blp.errors(401, 403, 404)
    def get(self, session_id, caller):
        """One of the caller's sessions."""
        return listening.get_session(caller.id, session_id)

    @require_user
    @blp.arguments(SessionHeartbeatSchema)
    @blp.response(200, SessionProgressSchema)
    @blp.errors(401, 403, 404, _ENDED, 422)
    def patch(self, body, session_id, caller):
        """Progress heartbeat: listened seconds, clamped by the server and never decreasing
        (`clamped` when the claim was cut), and where the listener is (`track_id`,
        `position_seconds`)."""
        return listening.heartbeat(caller.id, session_id, body["listened_seconds"],
                                   track_id=body.get("track_id"),
                                   position_seconds=body.get("position_seconds"))


@blp.route("/sessions/<int:session_id>/complete")
class SessionComplete(MethodView):
    @require_user
    @blp.arguments(SessionCompleteSchema)
    @blp.response(200, SessionSchema)
    @blp.errors(401, 403, 404, _ENDED, 422)
    def post(self, body, session_id, caller):
        """End the session with the listened time, whether it was finished, and mood."""
        session = listening.complete_session(
            caller.id, session_id, body["listened_seconds"], body["completed"],
            body.get("mood_after"), body.get("note"), track_id=body.get("track_id"),
            position_seconds=body.get("position_seconds"))
        set_message("Session completed." if session.completed else "Session ended.")
        return session


@blp.route("/playback")
class Playback(MethodView):
    @require_user
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, PlaybackSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """Where to resume: per package the caller can play now, the last reported track and
        position (any device), newest first."""
        return playback.playback(caller.id, caller.tier, args)
