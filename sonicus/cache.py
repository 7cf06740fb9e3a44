"""A small JSON cache: Redis when REDIS_URL is set, process memory otherwise.

Cache failures never fail a request: a Redis error reads as a miss and a write is dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from flask import current_app

from .extensions import get_redis

log = logging.getLogger(__name__)
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


def _memory() -> MemoryCache:
    return current_app.extensions.setdefault("sonicus_memory_cache", MemoryCache())


def cache_get(key: str):
    client = get_redis()
    try:
        raw = client.get(PREFIX + key) if client is not None else _memory().get(key)
    except Exception as exc:
        log.warning("cache read failed: %s", type(exc).__name__)
        return None
    return None if raw is None else json.loads(raw)


def cache_set(key: str, value, ttl: int) -> None:
    raw = json.dumps(value, separators=(",", ":"), default=str)
    client = get_redis()
    try:
        if client is not None:
            client.set(PREFIX + key, raw, ex=ttl)
        else:
            _memory().set(key, raw, ttl)
    except Exception as exc:
        log.warning("cache write failed: %s", type(exc).__name__)


def cache_delete(key: str) -> None:
    client = get_redis()
    try:
        if client is not None:
            client.delete(PREFIX + key)
        else:
            _memory().delete(key)
    except Exception as exc:
        log.warning("cache delete failed: %s", type(exc).__name__)
