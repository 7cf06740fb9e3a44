"""A short-lived, per-process cache of callers by token digest.

A single-page app fires bursts of requests with one token (the dashboard, its packages, the
analytics). The first resolves the token to an immutable caller (``caller.Caller``); for the
next ``AUTH_USER_CACHE_SECONDS`` (default 2) the same token is answered from here without a
database session.

Freshness is explicit: a service that changes a user or a subscription names the user in its
unit of work (``services.transaction``), which calls ``forget_users`` after the commit. That is
the one place a caller is invalidated, in every process: ``forget_users`` forgets the users
here and publishes them on the app's ``callers`` channel (Redis), which every web process's
listener (``realtime.broker``) hears and forgets too (a publish this process skips while it
backs off from Redis is owed and sent once it reaches Redis again: ``extensions``, owed
commands). Each listener acknowledges what it forgot, and ``forget_users`` waits for every
one of them (``FORGET_ACK_SECONDS`` at most) before the change answers: a published message
may still sit unread in another process's subscription (its listener busy, or not given the
CPU yet), and a request there right after the change's answer got the old caller. With
Redis, a process caches callers only while that listener is subscribed
(``feed_restored`` / ``feed_lost``): a process that could miss another's invalidation keeps
nothing. Every rule that enforces a limit or money re-reads and locks its rows; a cached
caller only serves reads.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time

from flask import current_app

from .extensions import channel_prefix, get_redis, guarded_redis_call

log = logging.getLogger(__name__)

EXTENSION_KEY = "sonicus_caller_cache"
# How long a change waits for every process to acknowledge that it forgot the change's users
# (a listener busy or stuck for longer: the change answers anyway, as it did before acks).
FORGET_ACK_SECONDS = 0.5
FORGET_ACK_POLL_SECONDS = 0.002
FORGET_ACK_KEEP_SECONDS = 30  # an acknowledgement nobody waits for any more is dropped then


def callers_channel(config) -> str:
    """The pub/sub channel of caller invalidations: ``{"forget": [user ids]}``."""
    return channel_prefix(config) + "callers"


class CallerCache:
    """Callers (any object with an ``id``) by token digest, each kept for ``ttl`` seconds."""

    def __init__(self, ttl_seconds: float, max_entries: int = 20000, *,
                 needs_feed: bool = False):
        self.ttl = ttl_seconds
        # With other processes (Redis), keep callers only while their invalidations arrive.
        self._feed_live = not needs_feed
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, object]] = {}
        self._by_user: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        # A caller read before a change commits must not be cached after the change forgot
        # that user: ``put`` is told when its reading began and refuses a stale caller.
        self._generation = 0
        self._forgotten_at: dict[int, int] = {}
        self._floor = 0  # callers read before this generation are never cached

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self._feed_live

    def feed_restored(self) -> None:
        """Other processes' invalidations arrive (again): start caching afresh (anything
        published while they did not arrive was missed)."""
        self.clear()
        self._feed_live = True

    def feed_lost(self) -> None:
        """Other processes' invalidations may be missed: keep nothing until restored."""
        self._feed_live = False
        self.clear()

    def get(self, digest: str):
        """The caller for this token, if it is fresh; else None."""
        if not self._feed_live:
            return None
        entry = self._entries.get(digest)
        if entry is None:
            return None
        expires, caller = entry
        if expires < time.monotonic():
            with self._lock:
                self._drop(digest, caller.id)
            return None
        return caller

    @property
    def generation(self) -> int:
        """Read it before loading a caller; pass it to ``put`` as ``read_since``."""
        return self._generation

    def put(self, digest: str, caller, read_since: int) -> None:
        """Keep ``caller`` unless its user was forgotten since the reading began."""
        if not self.enabled:
            return
        with self._lock:
            if not self._feed_live or read_since < self._floor \
                    or self._forgotten_at.get(caller.id, -1) > read_since:
                return
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
                self._by_user.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, caller)
            self._by_user.setdefault(caller.id, set()).add(digest)

    def _drop(self, digest: str, user_id: int) -> None:
        self._entries.pop(digest, None)
        digests = self._by_user.get(user_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_user[user_id]

    def forget(self, user_ids) -> None:
        with self._lock:
            self._generation += 1
            if len(self._forgotten_at) >= self.max_entries:
                self._forgotten_at.clear()
                self._floor = self._generation
            for user_id in user_ids:
                self._forgotten_at[user_id] = self._generation
                for digest in self._by_user.pop(user_id, ()):
                    self._entries.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._floor = self._generation
            self._forgotten_at.clear()
            self._entries.clear()
            self._by_user.clear()


def init_caller_cache(app) -> CallerCache:
    cache = CallerCache(app.config["AUTH_USER_CACHE_SECONDS"],
                        needs_feed=bool(app.config.get("REDIS_URL")))
    app.extensions[EXTENSION_KEY] = cache
    return cache


def get_caller_cache(app=None) -> CallerCache:
    return (app or current_app._get_current_object()).extensions[EXTENSION_KEY]


def forget_users(user_ids) -> None:
    """Drop these users' cached callers (after a committed change to them), here and, through
    the ``callers`` channel, in every other process."""
    user_ids = sorted({user_id for user_id in user_ids if user_id is not None})
    if not user_ids:
        return
    app = current_app
    cache = app.extensions.get(EXTENSION_KEY)
    if cache is not None:
        cache.forget(user_ids)
    if get_redis() is not None:
        channel = callers_channel(app.config)
        acks = f"{channel}-acks:{secrets.token_hex(8)}"
        message = json.dumps({"forget": user_ids, "ack": acks}, separators=(",", ":"))
        # Owed while this process skips Redis: sent once it reaches Redis again (the others may
        # well be subscribed meanwhile, and keep the user's callers until they expire).
        listeners = guarded_redis_call(
            "caller invalidation", lambda client: client.publish(channel, message),
            owed=[("PUBLISH", channel, message)])
        if listeners:
            _wait_for_acks(acks, int(listeners))


def _wait_for_acks(key: str, listeners: int) -> int:
    """Wait until ``listeners`` processes acknowledged the invalidation (``key``: its list of
    acknowledgements), ``FORGET_ACK_SECONDS`` at most; how many did."""
    deadline = time.monotonic() + FORGET_ACK_SECONDS

    def wait(client) -> int:
        while True:
            heard = int(client.llen(key))
            if heard >= listeners or time.monotonic() >= deadline:
                return heard
            time.sleep(FORGET_ACK_POLL_SECONDS)

    return guarded_redis_call("caller invalidation acknowledgement", wait, 0)


def heard_invalidation(app, raw) -> None:
    """A listener (``realtime.broker``) heard another process's (or this one's) invalidation:
    forget its users here, then acknowledge it (the change waits for that to answer)."""
    try:
        payload = json.loads(raw)
        user_ids = [int(user_id) for user_id in payload["forget"]]
        ack = payload.get("ack")
    except Exception:
        log.warning("caller invalidation: ignored a malformed message")
        return
    get_caller_cache(app).forget(user_ids)
    if isinstance(ack, str) and ack.startswith(callers_channel(app.config) + "-acks:"):
        def acknowledge(client):
            client.pipeline(transaction=False).rpush(ack, 1) \
                .expire(ack, FORGET_ACK_KEEP_SECONDS).execute()
            return True

        with app.app_context():
            guarded_redis_call("caller invalidation acknowledgement", acknowledge)
