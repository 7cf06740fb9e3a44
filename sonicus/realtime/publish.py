"""Publishing to a user's open sockets, from any process (web or worker).

Low level on purpose: it depends on the app's settings and Redis only. With ``REDIS_URL``,
one PUBLISH on the app's namespaced channel, which every web process's broker listens to
(through the process's one Redis back-off: a sick Redis is skipped, not waited for); without
it (the embedded default), straight to this process's broker, which registers its local
delivery here at app creation.
"""

from __future__ import annotations

import json

from flask import current_app

from ..extensions import channel_prefix, get_redis, guarded_redis_call

LOCAL_DELIVERY_KEY = "sonicus_local_delivery"
CLOSE_FORBIDDEN = 4403  # a suspended (or no longer allowed) account
CLOSE_INVALID_TOKEN = 4401  # a bad token, or an account erased since: sign in again

__all__ = ["channel_prefix", "close_user_sockets", "publish_to_user", "user_events_channel"]


def user_events_channel(config) -> str:
    return channel_prefix(config) + "user-events"


def _send(payload: dict) -> bool:
    """Hand ``payload`` to every web process (Redis) or to this one's broker (no Redis)."""
    app = current_app
    client = get_redis()
    if client is None:
        deliver = app.extensions.get(LOCAL_DELIVERY_KEY)
        if deliver is not None:
            deliver(payload)
        return True
    channel, text = user_events_channel(app.config), json.dumps(payload, separators=(",", ":"))
    return guarded_redis_call("live update publish",
                              lambda client: client.publish(channel, text) >= 0, False)


def publish_to_user(user_id: int, message: dict) -> bool:
    """Send ``message`` to every open socket of ``user_id``, on whichever process it is."""
    text = json.dumps(message, separators=(",", ":"), default=str)
    return _send({"user_id": user_id, "text": text})


def close_user_sockets(user_id: int, code: int = CLOSE_FORBIDDEN,
                       reason: str = "account suspended") -> bool:
    """Close every open socket of ``user_id`` on every process (a suspended account, say)."""
    return _send({"user_id": user_id, "close": code, "reason": reason})
