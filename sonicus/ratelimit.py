"""Rate limits per token and per client address, in fixed windows.

Each limit is one or more windows (``120/second;3000/minute``, parsed by the ``limits``
library). A request counts against every window of both limits. Counting happens in this
process; with Redis, processes add their counts into shared per-window keys (see
``RateLimiter`` for when), so the limits hold for the deployment as a whole. On the
embedded default (no Redis), and while Redis is down or hung (the process's one back-off,
``extensions.RedisGate``, shared with the cache and the queue), each process counts alone: a
Redis outage never fails a request.

Answers carry ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` for the window closest to its
limit; a request over any window gets 429 ``rate_limited`` with ``Retry-After``.
``/api/health``, ``/api/ready`` and CORS preflights are never counted.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from flask import g, request
from limits import parse_many

from config import ConfigError

from .api_errors import RATE_LIMIT_EXEMPT_PATHS, ApiError
from .extensions import get_redis, redis_gate
from .tokens import request_token_digest

EXEMPT_PATHS = RATE_LIMIT_EXEMPT_PATHS


@dataclass(frozen=True)
class Window:
    amount: int
    seconds: int


def parse_limits(text: str) -> tuple[Window, ...]:
    """``"120/second;3000/minute"`` → its windows; ValueError when it does not parse."""
    try:
        items = parse_many(text)
    except Exception as exc:  # the library raises ValueError for most, others for a few
        raise ValueError(f"not a rate limit: {text!r}") from exc
    if not items:
        raise ValueError(f"not a rate limit: {text!r}")
    return tuple(Window(item.amount, item.get_expiry()) for item in items)


# A process's pending hits of several windows, added in one command; a window's expiry is
# set when it is created. Returns the deployment's totals.
_ADD_SCRIPT = """
local totals = {}
for i, key in ipairs(KEYS) do
  local added = tonumber(ARGV[2 * i - 1])
  local n = redis.call('INCRBY', key, added)
  if n == added then redis.call('EXPIREAT', key, ARGV[2 * i]) end
  totals[i] = n
end
return totals
"""


class _Count:
    __slots__ = ("key", "ends", "reset_text", "total", "shared", "pending", "unsent",
                 "synced_at", "syncing")

    def __init__(self, key: str, ends: int, now: float):
        self.key = key            # the window's Redis key
        self.ends = ends          # when the window closes
        self.reset_text = str(ends)  # X-RateLimit-Reset of this window
        self.total = 0            # the deployment's count as best known here
        self.shared = 0           # the highest count Redis answered
        self.pending = 0          # this process's hits not yet added in Redis (as far as known)
        self.unsent = 0           # of those, the hits no sync in flight carries
        self.synced_at = now
        self.syncing = 0          # syncs in flight


class RateLimiter:
    """Counts in this process, reconciled with Redis when it matters.

    A process adds its hits to a window's Redis count (and reads the deployment's total back)
    when a second has passed since it last did, when it has counted an eighth of the window's
    limit since, and on every hit once the known total is past half the limit (also while an
    earlier hit's addition is still on its way: a burst on two processes is not judged on
    each process's own count meanwhile). So a client well inside its limits costs no Redis
    round trip per request, one near a limit is counted exactly, and a window can be overrun
    by at most an eighth of its limit per process.

    A client's counts are found by scope and client (one list, a count per window of the
    scope) and a count is replaced when its window has closed: the window's Redis key is made
    once per window, not per request.
    """

    SYNC_SECONDS = 1.0

    def __init__(self, app):
        limits = []
        for scope, name in (("user", "RATELIMIT_PER_USER"), ("ip", "RATELIMIT_PER_IP")):
            try:
                limits.append((scope, parse_limits(app.config[name])))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc} (e.g. '120/second;3000/minute')") from exc
        self.limits = tuple(limits)
        # per scope, in order: its windows as (seconds, amount, amount as text), and its
        # clients' counts by client
        self._scopes = tuple(
            (scope, tuple((window.seconds, window.amount, str(window.amount))
                          for window in windows), {})
            for scope, windows in self.limits)
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._script = None
        self._client = None
        self._gate = None

    def _redis(self):
        if self._client is None:
            self._client = get_redis() or False  # False: this app has no Redis
            self._gate = redis_gate() if self._client else None
        if not self._client or not self._gate.allows():
            return None
        return self._client

    def _sweep(self, now: float) -> None:
        """Forget the clients whose every window has closed (with the lock held)."""
        for _scope, _windows, clients in self._scopes:
            ended = [ident for ident, counts in clients.items()
                     if all(count is None or count.ends <= now for count in counts)]
            for ident in ended:
                del clients[ident]
        self._next_sweep = now + 10

    def _count(self, user: str | None, ip: str, now: float) -> list[list]:
        """Count one hit in every window of the client's limits: [count, amount, total up to
        this hit, amount as text] per window (the deployment's total where it was synced)."""
        client = self._redis()
        hits, to_sync = [], []
        sync_before = now - self.SYNC_SECONDS
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            for scope, windows, clients in self._scopes:
                ident = ip if scope == "ip" else user
                if ident is None:
                    continue
                counts = clients.get(ident)
                if counts is None:
                    counts = clients[ident] = [None] * len(windows)
                for n, (seconds, amount, amount_text) in enumerate(windows):
                    count = counts[n]
                    if count is None or count.ends <= now:
                        start = int(now // seconds) * seconds
                        count = counts[n] = _Count(
                            f"sonicus:rl:{scope}:{ident}:{seconds}:{start}", start + seconds,
                            now)
                    count.total += 1
                    count.pending += 1
                    count.unsent += 1
                    # Near the limit every hit is added, also while another sync is on its
                    # way (else the hits meanwhile would be judged on this process's count).
                    if client is not None and (
                            count.total * 2 > amount or count.pending * 8 >= amount
                            or (not count.syncing and count.synced_at <= sync_before)):
                        count.syncing += 1
                        to_sync.append((len(hits), count, count.unsent))
                        count.unsent = 0
                    hits.append([count, amount, count.total, amount_text])
        if to_sync:
            # The deployment's totals up to this hit: what was sent ends with it.
            for i, total in self._sync(client, to_sync, now):
                hits[i][2] = total
        return hits

    def _sync(self, client, to_sync, now: float) -> list[tuple[int, int]]:
        try:
            script = self._script
            if script is None or script.registered_client is not client:
                script = self._script = client.register_script(_ADD_SCRIPT)
            args = []
            for _i, count, sent in to_sync:
                args += [sent, int(count.ends) + 1]
            totals = [int(t) for t in script(keys=[count.key for _, count, _ in to_sync],
                                             args=args)]
            self._gate.succeeded()
        except Exception as exc:  # redis.RedisError, OSError: keep counting here for a while
            totals = None
            self._gate.failed(exc, "rate limit sync")
        synced = []
        with self._lock:
            for n, (i, count, sent) in enumerate(to_sync):
                count.syncing -= 1
                if totals is not None:
                    # syncs may answer out of order: an earlier answer never lowers the count
                    count.pending -= sent
                    count.shared = max(count.shared, totals[n])
                    count.total = count.shared + count.pending
                    count.synced_at = now
                    synced.append((i, totals[n]))
                else:
                    count.unsent += sent  # sent with a later hit
        return synced

    def check(self) -> None:
        """Count this request; raise 429 when it is over a window."""
        environ = request._get_current_object().environ
        if environ.get("PATH_INFO") in EXEMPT_PATHS or environ["REQUEST_METHOD"] == "OPTIONS":
            return
        now = time.time()
        hits = self._count(_token_key(environ), environ.get("REMOTE_ADDR") or "unknown", now)
        tightest, least, over = None, 0, None
        for hit in hits:
            count, amount, total, _ = hit
            remaining = amount - total
            if tightest is None or remaining < least:
                tightest, least = hit, remaining
            if remaining < 0 and (over is None or count.ends > over):
                over = count.ends
        if tightest is not None:  # shown in X-RateLimit-* by web.py, as text
            g._get_current_object().__dict__["rate_limit"] = (
                tightest[3], str(least) if least > 0 else "0", tightest[0].reset_text)
        if over is not None:
            retry = max(1, math.ceil(over - now))
            raise ApiError(429, "rate_limited", "Too many requests; slow down and try again.",
                           headers={"Retry-After": str(retry)})


def _token_key(environ) -> str | None:
    # a scheme and its token; a scheme followed only by blanks is no token
    parts = environ.get("HTTP_AUTHORIZATION", "").split(None, 1)
    token = parts[1] if len(parts) == 2 else ""
    if not token:
        token = request.args.get("access_token", "")
    if not token:
        return None
    return request_token_digest(environ, token)[:32]


def init_rate_limits(app) -> None:
    # Parsed even when off, so a bad setting is refused at start, not found in production.
    limiter = RateLimiter(app)
    app.extensions["sonicus_rate_limiter"] = limiter
    if app.config["RATELIMIT_ENABLED"]:
        app.before_request(limiter.check)
