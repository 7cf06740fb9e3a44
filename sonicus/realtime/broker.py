"""Fan-out of per-user messages to open sockets, across every web process.

- ``publish_to_user`` (web processes and workers alike): with REDIS_URL, one PUBLISH on the
  app's namespaced channel; without it, straight to this process's sockets.
- Each web process runs ONE Redis subscriber thread, started lazily by the first socket
  (so after a fork), reconnecting with capped exponential backoff. It delivers each message
  to the sockets of that user registered in this process, and to no one else.
- The registry of local sockets is a dict of sets behind one lock; each connection has its
  own send lock (a socket is not safe to write from two threads at once).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from urllib.parse import urlparse

from flask import current_app

log = logging.getLogger(__name__)

EXTENSION_KEY = "sonicus_broker"
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 10.0


def channel_prefix(config) -> str:
    """``REDIS_CHANNEL_PREFIX``, else one derived from the Redis db number (``sonicus:db3:``)."""
    prefix = config.get("REDIS_CHANNEL_PREFIX")
    if prefix:
        return prefix
    url = config.get("REDIS_URL") or ""
    path = urlparse(url).path.strip("/") if url else ""
    return f"sonicus:db{path or '0'}:"


class Connection:
    """One open socket of one user, with its own send lock."""

    def __init__(self, ws, user_id: int):
        self.ws = ws
        self.user_id = user_id
        self.send_lock = threading.Lock()
        self.closed = False

    def send(self, text: str) -> bool:
        with self.send_lock:
            if self.closed:
                return False
            try:
                self.ws.send(text)
                return True
            except Exception:
                self.closed = True
                return False

    def close(self, code: int, reason: str) -> None:
        with self.send_lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.ws.close(reason=code, message=reason)
            except Exception:  # already gone
                pass


class Broker:
    def __init__(self, app):
        self.app = app
        self.redis_url = app.config.get("REDIS_URL")
        self.channel = channel_prefix(app.config) + "user-events"
        self._lock = threading.Lock()
        self._sockets: dict[int, set[Connection]] = {}
        self._listener: threading.Thread | None = None
        self._listener_pid: int | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._publisher = None
        self._publisher_pid: int | None = None
        self.reconnects = 0
        self.listener_starts = 0

    # ---- the local registry ----------------------------------------------------------------
    def register(self, conn: Connection, limit: int | None = None) -> bool:
        """Add a local socket; False (and nothing added) when ``limit`` sockets are open."""
        with self._lock:
            if limit is not None and sum(map(len, self._sockets.values())) >= limit:
                return False
            self._sockets.setdefault(conn.user_id, set()).add(conn)
        self._ensure_listener()
        return True

    def unregister(self, conn: Connection) -> None:
        with self._lock:
            conns = self._sockets.get(conn.user_id)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._sockets[conn.user_id]

    def local_socket_count(self) -> int:
        with self._lock:
            return sum(len(conns) for conns in self._sockets.values())

    def local_user_count(self) -> int:
        with self._lock:
            return len(self._sockets)

    def deliver_local(self, user_id: int, text: str) -> int:
        with self._lock:
            conns = list(self._sockets.get(user_id, ()))
        sent = 0
        for conn in conns:
            if conn.send(text):
                sent += 1
            else:
                self.unregister(conn)
        return sent

    def close_local(self, user_id: int, code: int, reason: str) -> int:
        """Close every socket of ``user_id`` held by this process."""
        with self._lock:
            conns = list(self._sockets.pop(user_id, ()))
        for conn in conns:
            conn.close(code, reason)
        return len(conns)

    # ---- publishing ------------------------------------------------------------------------
    def _publisher_client(self):
        if self._publisher is None or self._publisher_pid != os.getpid():
            import redis

            self._publisher = redis.Redis.from_url(self.redis_url, socket_timeout=2,
                                                   socket_connect_timeout=2)
            self._publisher_pid = os.getpid()
        return self._publisher

    def publish(self, user_id: int, message: dict) -> bool:
        text = json.dumps(message, separators=(",", ":"), default=str)
        if not self.redis_url:
            self.deliver_local(user_id, text)
            return True
        return self._publish_envelope({"user_id": user_id, "text": text})

    def disconnect(self, user_id: int, code: int, reason: str) -> bool:
        """Close the user's sockets on every process (a suspended account, say)."""
        if not self.redis_url:
            self.close_local(user_id, code, reason)
            return True
        return self._publish_envelope({"user_id": user_id, "close": code, "reason": reason})

    def _publish_envelope(self, payload: dict) -> bool:
        envelope = json.dumps(payload, separators=(",", ":"))
        try:
            self._publisher_client().publish(self.channel, envelope)
            return True
        except Exception as exc:
            log.warning("live update publish failed: %s", type(exc).__name__)
            return False

    # ---- the one subscriber per process ----------------------------------------------------
    def _ensure_listener(self) -> None:
        if not self.redis_url:
            self._ready.set()
            return
        with self._lock:
            pid = os.getpid()
            if (self._listener is not None and self._listener.is_alive()
                    and self._listener_pid == pid):
                return
            # A thread does not survive a fork: the child starts its own.
            self._ready = threading.Event()
            self._stop = threading.Event()
            self._listener_pid = pid
            self._listener = threading.Thread(target=self._listen, name="sonicus-live-updates",
                                              daemon=True)
            self._listener.start()
            self.listener_starts += 1

    def wait_ready(self, timeout: float) -> bool:
        """Wait until this process is subscribed (so nothing published after is missed)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()

    def _listen(self) -> None:
        import redis

        failures = 0
        while not self._stop.is_set():
            client = pubsub = None
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                              socket_timeout=None, health_check_interval=15)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._ready.set()
                if failures:
                    log.info("live updates: subscribed again after %d failed attempts",
                             failures)
                    self._resync()
                failures = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except Exception as exc:
                self._ready.clear()
                failures += 1
                self.reconnects += 1
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** (failures - 1)))
                log.warning("live updates: subscriber lost Redis (%s); retrying in %.2fs",
                            type(exc).__name__, delay)
                self._stop.wait(delay)
            finally:
                for closable in (pubsub, client):
                    try:
                        if closable is not None:
                            closable.close()
                    except Exception:
                        pass

    def _resync(self) -> None:
        """After a gap in the subscription, send every local socket its current figures
        (anything published during the gap was missed)."""
        from ..extensions import db
        from ..models import User
        from ..services.analytics import get_user_analytics

        with self._lock:
            user_ids = list(self._sockets)
        for user_id in user_ids:
            try:
                with self.app.app_context():
                    user = db.session.get(User, user_id)
                    if user is not None:
                        data = get_user_analytics(user)
                        self.deliver_local(user_id, json.dumps(
                            {"type": "analytics.updated", "data": data},
                            separators=(",", ":"), default=str))
                    db.session.remove()
            except Exception as exc:
                log.warning("live updates: resync of a socket failed: %s", type(exc).__name__)

    def _dispatch(self, raw) -> None:
        try:
            payload = json.loads(raw)
            user_id = int(payload["user_id"])
            if "close" in payload:
                from ..identity_cache import forget_user

                forget_user(user_id)  # the account changed: no stale sign-in here either
                self.close_local(user_id, int(payload["close"]), str(payload.get("reason", "")))
                return
            text = payload["text"]
        except Exception:
            log.warning("live updates: ignored a malformed message")
            return
        self.deliver_local(user_id, text)


def get_broker(app=None) -> Broker:
    app = app or current_app._get_current_object()
    broker = app.extensions.get(EXTENSION_KEY)
    if broker is None:
        broker = app.extensions.setdefault(EXTENSION_KEY, Broker(app))
    return broker


def publish_to_user(user_id: int, message: dict) -> bool:
    """Send ``message`` to every open socket of ``user_id``, on whichever process it is."""
    return get_broker().publish(user_id, message)


CLOSE_ACCOUNT_SUSPENDED = 4403


def disconnect_user(user_id: int) -> bool:
    """Close every open socket of ``user_id``, on whichever process it is (code 4403)."""
    return get_broker().disconnect(user_id, CLOSE_ACCOUNT_SUSPENDED, "account suspended")
