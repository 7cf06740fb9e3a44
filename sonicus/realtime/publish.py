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

__all__ = ["channel_prefix", "close_user_sockets", "publish_settings_change", "publish_to_user",
           "user_events_channel"]


def user_events_channel(config) -> str:
    return channel_prefix(config) + "user-events"


def _send(payload: dict, *, owed: bool = False) -> bool:
    """Hand ``payload`` to every web process (Redis) or to this one's broker (no Redis).
    ``owed``: skipped while this process backs off from Redis, or failed on an outage, it is
    sent once this process reaches Redis again (``extensions.guarded_redis_call``)."""
    app = current_app
    client = get_redis()
    if client is None:
        deliver = app.extensions.get(LOCAL_DELIVERY_KEY)
        if deliver is not None:
            deliver(payload)
        return True
    channel, text = user_events_channel(app.config), json.dumps(payload, separators=(",", ":"))
    return guarded_redis_call("live update publish",
                              lambda client: client.publish(channel, text) >= 0, False,
                              owed=[("PUBLISH", channel, text)] if owed else None)


def publish_to_user(user_id: int, message: dict, settings_version: int | None = None) -> bool:
    """Send ``message`` to every open socket of ``user_id``, on whichever process it is.
    ``settings_version``: the version of the user's settings it was computed under; a process
    that saw a later settings change (``publish_settings_change``) drops it."""
    text = json.dumps(message, separators=(",", ":"), default=str)
    payload = {"user_id": user_id, "text": text}
    if settings_version is not None:
        payload["settings"] = settings_version
    return _send(payload)


def publish_settings_change(user_id: int, settings_version: int) -> bool:
    """The user's settings changed (committed) to ``settings_version``: every process drops
    the messages computed under an earlier version that reach it after this (a refresh that
    read the user before the change must not show a streak just hidden). Published on the
    same channel as the messages, so every process sees it in the same order; owed when this
    process skips Redis (the processes that have it back hear of it late, not never)."""
    return _send({"user_id": user_id, "settings": settings_version}, owed=True)


def close_user_sockets(user_id: int, code: int = CLOSE_FORBIDDEN,
                       reason: str = "account suspended") -> bool:
    """Close every open socket of ``user_id`` on every process (a suspended account, say)."""
    return _send({"user_id": user_id, "close": code, "reason": reason})
