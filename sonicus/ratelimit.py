"""Rate limits per token and per client address, in fixed windows.

Each limit is one or more windows (``120/second;3000/minute``, parsed by the ``limits``
library). A request counts against every window of both limits at once:
- with Redis, in one round trip (a short script that counts every window key and sets its
  expiry on the first hit), so every process of the deployment shares the counts;
- on the embedded default (no Redis), and for a few seconds after Redis fails, in this
  process's memory: a Redis outage never fails a request.

Answers carry ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` for the window closest to its
limit; a request over any window gets 429 ``rate_limited`` with ``Retry-After``.
``/api/health``, ``/api/ready`` and CORS preflights are never counted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass

from flask import g, request
from limits import parse_many

from .envelope import ApiError

log = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset(("/api/health", "/api/ready"))
REDIS_RETRY_SECONDS = 5.0


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


class MemoryCounts:
    """Fixed-window counters in this process; windows that ended are swept now and then."""

    def __init__(self):
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def hit(self, keys: list[tuple[str, int]], now: float) -> list[int]:
        with self._lock:
            if now >= self._next_sweep:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
                self._next_sweep = now + 10
            counts = []
            for key, ends in keys:
                count = self._counts.get(key, (0, ends))[0] + 1
                self._counts[key] = (count, ends)
                counts.append(count)
            return counts


# Every window of a request in one command: count, and set the expiry on a window's first hit.
_COUNT_SCRIPT = """
local counts = {}
for i, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('EXPIREAT', key, ARGV[i]) end
  counts[i] = n
end
return counts
"""


class RateLimiter:
    def __init__(self, app):
        from config import ConfigError

        limits = []
        for scope, name in (("user", "RATELIMIT_PER_USER"), ("ip", "RATELIMIT_PER_IP")):
            try:
                limits.append((scope, parse_limits(app.config[name])))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc} (e.g. '120/second;3000/minute')") from exc
        self.limits = tuple(limits)
        self.memory = MemoryCounts()
        self._redis_down_until = 0.0
        self._script = None

    def _redis(self):
        if time.monotonic() < self._redis_down_until:
            return None
        from .extensions import get_redis

        return get_redis()

    def _count(self, keys: list[tuple[str, int]], now: float) -> list[int]:
        client = self._redis()
        if client is not None:
            try:
                script = self._script
                if script is None or script.registered_client is not client:
                    script = self._script = client.register_script(_COUNT_SCRIPT)
                return script(keys=[key for key, _ in keys],
                              args=[int(ends) + 1 for _, ends in keys])
            except Exception as exc:  # redis.RedisError, OSError: count here for a while
                self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
                log.warning("rate limits counted in process memory: Redis unavailable (%s)",
                            type(exc).__name__)
        return self.memory.hit(keys, now)

    def check(self) -> None:
        """Count this request; raise 429 when it is over a window."""
        if request.path in EXEMPT_PATHS or request.method == "OPTIONS":
            return
        now = time.time()
        idents = {"user": _token_key(), "ip": request.remote_addr or "unknown"}
        keys, windows = [], []
        for scope, scope_windows in self.limits:
            ident = idents[scope]
            if ident is None:
                continue
            for window in scope_windows:
                start = int(now // window.seconds) * window.seconds
                ends = start + window.seconds
                keys.append((f"sonicus:rl:{scope}:{ident}:{window.seconds}:{start}", ends))
                windows.append(window)
        counts = self._count(keys, now)
        tightest, over = None, None
        for (_key, ends), window, count in zip(keys, windows, counts, strict=True):
            remaining = window.amount - count
            if tightest is None or remaining < tightest[1]:
                tightest = (window.amount, remaining, ends)
            if remaining < 0 and (over is None or ends > over):
                over = ends
        if tightest is not None:  # shown in X-RateLimit-* by web.py
            g.rate_limit = (tightest[0], max(tightest[1], 0), tightest[2])
        if over is not None:
            retry = max(1, math.ceil(over - now))
            raise ApiError(429, "rate_limited", "Too many requests; slow down and try again.",
                           headers={"Retry-After": str(retry)})


def _token_key() -> str | None:
    header = request.headers.get("Authorization", "")
    token = header.split(None, 1)[1] if " " in header else ""
    if not token:
        token = request.args.get("access_token", "")
    if not token:
        return None
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:32]


def init_rate_limits(app) -> None:
    # Parsed even when off, so a bad setting is refused at start, not found in production.
    limiter = RateLimiter(app)
    app.extensions["sonicus_rate_limiter"] = limiter
    if app.config["RATELIMIT_ENABLED"]:
        app.before_request(limiter.check)
