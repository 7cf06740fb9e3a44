"""Unbound extensions; ``create_app`` binds them. Nothing here connects at import time.

Redis is optional (``REDIS_URL``) and never fails a request: every use of the app's client in
a process goes through ONE back-off (``RedisGate``). A call that finds Redis unreachable or
hung trips it; for ``REDIS_RETRY_SECONDS`` the cache reads as a miss, enqueues and
publishes are skipped (what they carried is recorded elsewhere and retried) and the rate
limiter counts alone. Then one call probes again. A sick Redis therefore costs a process one
timeout every few seconds, not one per call.

A few writes must not be lost that way (``guarded_redis_call(..., owed=command)``): the
delete of a cache entry a change made wrong (the analytics of a user whose goal changed, the
recent recaps of a user whose sessions changed: one script that reads the recaps' generation
and deletes them, ``cache.cache_delete_generation``) and the publish of a caller
invalidation. Skipped, or failed on an outage, such a command is *owed*: kept by the gate
(deduplicated, at most ``MAX_OWED_CALLS``) and sent, in pipelines, before the process's next
Redis call that the back-off lets through; every web process's subscriber thread makes one
within a second once the back-off is over
(``pay_owed_redis_calls``), a worker's scheduler thread within its tick. Redis may well be
back for the other processes meanwhile (this process's own failure, a call that timed out
once, made it back off); they then see the change about ``REDIS_RETRY_SECONDS`` late,
instead of for the cached entry's whole lifetime. Replaying is harmless: a delete or an
invalidation sent late, or twice, only costs a read from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlparse

import redis
from flask import current_app
from flask_migrate import Migrate
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy

from .models.base import Base
from .openapi import DocumentedApi

log = logging.getLogger(__name__)

# A write's answer is built from what its transaction loaded (``services.transaction``):
# objects keep their state after the commit instead of being re-read from the database.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
migrate = Migrate()
api = DocumentedApi()
sock = Sock()

REDIS_SOCKET_TIMEOUT_SECONDS = 2.0
REDIS_RETRY_SECONDS = 5.0
REDIS_KEY = "sonicus_redis"
GATE_KEY = "sonicus_redis_gate"
MAX_OWED_CALLS = 10000  # owed commands a gate keeps (the oldest are dropped past it, logged)
OWED_PIPELINE = 500  # owed commands sent per pipeline


def get_redis():
    """The app's Redis client, or None on the embedded default (no REDIS_URL)."""
    app = current_app
    if not app.config.get("REDIS_URL"):
        return None
    client = app.extensions.get(REDIS_KEY)
    if client is None:
        timeout = app.config.get("REDIS_SOCKET_TIMEOUT_SECONDS", REDIS_SOCKET_TIMEOUT_SECONDS)
        client = redis.Redis.from_url(app.config["REDIS_URL"], socket_timeout=timeout,
                                      socket_connect_timeout=timeout, health_check_interval=30)
        app.extensions[REDIS_KEY] = client
    return client


def channel_prefix(config) -> str:
    """Pub/sub channel namespace: ``REDIS_CHANNEL_PREFIX``, else one derived from the Redis
    db number (``sonicus:db3:``)."""
    prefix = config.get("REDIS_CHANNEL_PREFIX")
    if prefix:
        return prefix
    url = config.get("REDIS_URL") or ""
    path = urlparse(url).path.strip("/") if url else ""
    return f"sonicus:db{path or '0'}:"


def is_outage(exc: BaseException) -> bool:
    """Redis unreachable or not answering (as opposed to a bad command)."""
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            OSError))


class RedisGate:
    """The one back-off of a process's Redis calls (cache, queue, rate limits, publishing).

    ``allows()`` before a call, then ``succeeded()`` or ``failed(exc)``. After a failure every
    call is refused for ``retry_seconds``; when that has passed, ONE call (the probe) is let
    through and the others stay refused until it has succeeded.
    """

    def __init__(self, retry_seconds: float = REDIS_RETRY_SECONDS):
        self.retry_seconds = retry_seconds
        self._down_until = 0.0  # 0: healthy
        self._lock = threading.Lock()
        self.trips = 0
        # commands to send once Redis answers again (a dict: deduplicated, in order)
        self._owed: dict[tuple, None] = {}
        self.owed_dropped = 0

    @property
    def healthy(self) -> bool:
        return not self._down_until

    def allows(self) -> bool:
        until = self._down_until
        if not until:
            return True
        now = time.monotonic()
        if now < until:
            return False
        with self._lock:
            if self._down_until != until:  # another call took the probe (or succeeded)
                return not self._down_until
            self._down_until = now + self.retry_seconds  # the others wait for this probe
            return True

    def succeeded(self) -> None:
        if self._down_until:
            with self._lock:
                self._down_until = 0.0
            log.info("Redis reachable again")

    def failed(self, exc: BaseException, what: str) -> None:
        """A call failed; an outage trips the back-off (a bad command does not)."""
        if not is_outage(exc):
            log.warning("Redis %s failed: %s", what, type(exc).__name__)
            return
        with self._lock:
            self._down_until = time.monotonic() + self.retry_seconds
            self.trips += 1
        log.warning("Redis unavailable (%s during %s): skipped for %.0f s", type(exc).__name__,
                    what, self.retry_seconds)

    # ---- commands owed ------------------------------------------------------------------------
    @property
    def owes(self) -> bool:
        return bool(self._owed)

    def owe(self, commands) -> None:
        """Keep these commands (tuples: ``("DEL", key)``) for ``pay_owed``."""
        with self._lock:
            for command in commands:
                self._owed.pop(command, None)  # the latest position: the order they were made
                self._owed[command] = None
            dropped = len(self._owed) - MAX_OWED_CALLS
            for _ in range(max(0, dropped)):
                del self._owed[next(iter(self._owed))]
        if dropped > 0:
            self.owed_dropped += dropped
            log.warning("Redis unavailable: %d owed commands dropped (over %d kept)", dropped,
                        MAX_OWED_CALLS)

    def pay_owed(self, client) -> bool:
        """Send the owed commands (the back-off has let the caller through); False when Redis
        failed meanwhile. What an outage interrupts is owed again and trips the back-off; a command
        Redis refuses is dropped."""
        with self._lock:
            commands, self._owed = list(self._owed), {}
        sent = 0
        try:
            while sent < len(commands):
                batch = commands[sent:sent + OWED_PIPELINE]
                pipe = client.pipeline(transaction=False)
                for command in batch:
                    pipe.execute_command(*command)
                pipe.execute(raise_on_error=False)  # a refused command does not stop the rest
                sent += len(batch)
        except Exception as exc:
            if is_outage(exc):
                with self._lock:  # before what was owed meanwhile: the order they were made
                    self._owed = {**dict.fromkeys(commands[sent:]), **self._owed}
            self.failed(exc, "owed commands")
            return False
        if sent:
            log.info("Redis reachable again: %d owed commands sent", sent)
        return True


def redis_gate(app=None) -> RedisGate:
    """This process's back-off for the app's Redis."""
    app = app or current_app
    gate = app.extensions.get(GATE_KEY)
    if gate is None:
        gate = app.extensions.setdefault(
            GATE_KEY, RedisGate(app.config.get("REDIS_RETRY_SECONDS", REDIS_RETRY_SECONDS)))
    return gate


def guarded_redis_call(what: str, call, default=None, *, owed=None):
    """``call(client)`` through the back-off: ``default`` while backing off, when the call
    fails (logged) or without Redis.

    ``owed``: commands (tuples, ``("DEL", key)``) that do what ``call`` does and must not be
    lost: skipped while backing off, or failed on an outage, they are owed and sent before the
    process's next call that the back-off lets through (module doc)."""
    client = get_redis()
    if client is None:
        return default
    gate = redis_gate()
    if not gate.allows():
        if owed:
            gate.owe(owed)
        return default
    # What is owed goes first: a cache read after a change must not find the entry the change
    # made wrong, still there until after the read.
    if gate.owes and not gate.pay_owed(client):
        if owed:
            gate.owe(owed)
        return default
    try:
        result = call(client)
    except Exception as exc:
        gate.failed(exc, what)
        if owed and is_outage(exc):
            gate.owe(owed)
        return default
    gate.succeeded()
    return result


def pay_owed_redis_calls(app, *, last_chance: bool = False) -> bool:
    """Send what this process owes Redis (``owed`` commands skipped while it backed off), if
    anything and once the back-off lets a call through: the probe is the owed commands
    themselves. Cheap when nothing is owed (a subscriber thread calls it every second). True
    when what was owed has been sent.

    ``last_chance``: the process ends now (a forked work horse after its job), so it tries
    once whatever the back-off says (one timeout at most, and only when something is owed)."""
    gate = app.extensions.get(GATE_KEY)
    if gate is None or not gate.owes:
        return False
    with app.app_context():
        client = get_redis()
        if client is None or not (gate.allows() or last_chance):
            return False
        if not gate.pay_owed(client):
            return False
    gate.succeeded()
    return True
