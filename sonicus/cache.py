"""A small JSON cache: Redis when REDIS_URL is set, process memory otherwise.

Cache failures never fail a request: a Redis error reads as a miss and a write is dropped;
a Redis that is down or hung is skipped for a while (the process's one back-off,
``extensions.RedisGate``), so it costs one timeout every few seconds, not one per call. A
``critical`` delete (an entry a committed change made wrong) skipped that way is owed and sent
once this process reaches Redis again (``extensions``: owed commands), and so is every
``cache_delete_generation``.
"""

from __future__ import annotations

import json
import threading
import time

from flask import current_app

from .extensions import get_redis, guarded_redis_call

PREFIX = "sonicus:cache:"


class MemoryCache:
    def __init__(self):
        self._data: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.monotonic():
                del self._data[key]
                return None
            return value

    def set(self, key, value, ttl):
        with self._lock:
            self._data[key] = (time.monotonic() + ttl, value)

    def delete(self, key):
        with self._lock:
            self._data.pop(key, None)

    def set_if(self, key, value, ttl, watched, seen) -> bool:
        with self._lock:
            item = self._data.get(watched)
            current = None if item is None or item[0] < time.monotonic() else item[1]
            if current != seen:
                return False
            self._data[key] = (time.monotonic() + ttl, value)
            return True


def _memory() -> MemoryCache:
    return current_app.extensions.setdefault("sonicus_memory_cache", MemoryCache())


def cache_get(key: str):
    raw = cache_get_raw(key)
    return None if raw is None else json.loads(raw)


def cache_get_raw(key: str) -> str | None:
    """The entry as stored (JSON text), for ``cache_replace``."""
    if get_redis() is None:
        return _memory().get(key)
    raw = guarded_redis_call("cache read", lambda client: client.get(PREFIX + key))
    return raw.decode() if isinstance(raw, bytes) else raw


def cache_set(key: str, value, ttl: int) -> None:
    raw = json.dumps(value, separators=(",", ":"), default=str)
    if get_redis() is None:
        _memory().set(key, raw, ttl)
    else:
        guarded_redis_call("cache write", lambda client: client.set(PREFIX + key, raw, ex=ttl))


# Sets KEYS[1] to ARGV[2] for ARGV[3] seconds only if KEYS[2] holds ARGV[1] ('' : nothing) now.
_SET_IF_SCRIPT = """
local current = redis.call('GET', KEYS[2])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def cache_replace(key: str, value, ttl: int, seen: str | None, *,
                  watched: str | None = None) -> bool:
    """Cache ``value`` only if the entry ``watched`` (default: ``key`` itself) still holds what
    was read before the value was computed (``seen``, from ``cache_get_raw``; None: nothing): a
    reader that computed from older data never writes over what a writer cached meanwhile, nor
    after a change forgot it. Whether it was written."""
    raw = json.dumps(value, separators=(",", ":"), default=str)
    watched = key if watched is None else watched
    if get_redis() is None:
        return _memory().set_if(key, raw, ttl, watched, seen)
    return bool(guarded_redis_call("cache write", lambda client: client.eval(
        _SET_IF_SCRIPT, 2, PREFIX + key, PREFIX + watched, seen or "", raw, max(1, int(ttl)))))


def cache_delete(key: str, *, critical: bool = False) -> None:
    """Drop ``key``. ``critical``: other processes must not keep serving it (a committed change
    made it wrong), so while Redis is skipped the delete is owed, not lost."""
    if get_redis() is None:
        _memory().delete(key)
    else:
        guarded_redis_call("cache delete", lambda client: client.delete(PREFIX + key),
                           owed=[("DEL", PREFIX + key)] if critical else None)


# Deletes the entries ``ARGV[1] .. generation .. ARGV[i]`` (i >= 2), where the generation is
# the JSON string stored under ``KEYS[1]``; nothing without one. With ``KEYS[2]``, counts one
# more change there first (a day long). One command, so that it can be owed while the
# generation cannot be read.
_DELETE_GENERATION_SCRIPT = """
if #KEYS > 1 then
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 86400)
end
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local generation = cjson.decode(raw)
if type(generation) ~= 'string' then return 0 end
local keys = {}
for i = 2, #ARGV do keys[#keys + 1] = ARGV[1] .. generation .. ARGV[i] end
if #keys == 0 then return 0 end
return redis.call('DEL', unpack(keys))
"""


def cache_delete_generation(generation_key: str, prefix: str, suffixes, *,
                            changes_key: str | None = None) -> None:
    """Drop the entries ``prefix + generation + suffix`` of the generation stored under
    ``generation_key`` (none stored: nothing to drop). A committed change made them wrong: on
    Redis it is one command, owed while this process skips Redis (the generation cannot be
    read then either), so it runs once Redis answers again. ``changes_key``: a counter of
    such changes, moved on in the same command (``cache_replace(..., watched=changes_key)``
    then refuses what was computed before it)."""
    suffixes = tuple(suffixes)
    if get_redis() is None:
        if changes_key is not None:
            cache_set(changes_key, str(int(cache_get(changes_key) or 0) + 1), 86400)
        generation = cache_get(generation_key)
        if generation is not None:
            for suffix in suffixes:
                _memory().delete(prefix + generation + suffix)
        return
    keys = (PREFIX + generation_key,) + (() if changes_key is None else (PREFIX + changes_key,))
    command = ("EVAL", _DELETE_GENERATION_SCRIPT, len(keys), *keys, PREFIX + prefix, *suffixes)
    guarded_redis_call("cache delete", lambda client: client.execute_command(*command),
                       owed=[command])
