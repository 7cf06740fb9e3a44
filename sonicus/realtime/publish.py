"""Publishing to a user's open sockets, from any process (web or worker).

Low level on purpose: it depends on the app's settings and Redis only. With ``REDIS_URL``,
one PUBLISH on the app's namespaced channel, which every web process's broker listens to;
without it (the embedded default), straight to this process's broker, which registers its
local delivery here at app creation.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlparse

from flask import current_app

from ..extensions import get_redis

log = logging.getLogger(__name__)

LOCAL_DELIVERY_KEY = "sonicus_local_delivery"
CLOSE_FORBIDDEN = 4403  # a suspended (or no longer allowed) account


def channel_prefix(config) -> str:
    """``REDIS_CHANNEL_PREFIX``, else one derived from the Redis db number (``sonicus:db3:``)."""
    prefix = config.get("REDIS_CHANNEL_PREFIX")
    if prefix:
        return prefix
    url = config.get("REDIS_URL") or ""
    path = urlparse(url).path.strip("/") if url else ""
    return f"sonicus:db{path or '0'}:"


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
    try:
        client.publish(user_events_channel(app.config), json.dumps(payload, separators=(",", ":")))
        return True
    except Exception as exc:
        log.warning("live update publish failed: %s", type(exc).__name__)
        return False


def publish_to_user(user_id: int, message: dict) -> bool:
    """Send ``message`` to every open socket of ``user_id``, on whichever process it is."""
    text = json.dumps(message, separators=(",", ":"), default=str)
    return _send({"user_id": user_id, "text": text})


def close_user_sockets(user_id: int, code: int = CLOSE_FORBIDDEN,
                       reason: str = "account suspended") -> bool:
    """Close every open socket of ``user_id`` on every process (a suspended account, say)."""
    return _send({"user_id": user_id, "close": code, "reason": reason})
