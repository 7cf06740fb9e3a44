"""The latest settings version this process knows of, per user (``SettingsVersions``): an
``analytics.updated`` computed under earlier settings (a refresh that read the user before a
settings change and published after it) is dropped instead of delivered.

A settings change publishes its version on the user-events channel (``publish_settings_change``)
after its commit, before the request answers; a message computed earlier carries the earlier
version and, published later, comes after the change on the same channel: every process drops
it. A version is kept for ``KEEP_SECONDS`` (a refresh publishes within moments of its reading);
a change this process missed (a gap in its subscription) drops nothing, it never holds up a
fresh message.
"""

from __future__ import annotations

import threading
import time

KEEP_SECONDS = 600.0


class SettingsVersions:
    def __init__(self):
        self._lock = threading.Lock()  # without Redis, publishing threads deliver
        self._versions: dict[int, tuple[int, float]] = {}  # user -> (version, when seen)

    def changed(self, user_id: int, version: int) -> None:
        """The user's settings are ``version`` from now on."""
        now = time.monotonic()
        with self._lock:
            known = self._versions.pop(user_id, None)
            if known is not None and known[0] > version:
                version = known[0]
            self._versions[user_id] = (version, now)
            while now - next(iter(self._versions.values()))[1] >= KEEP_SECONDS:
                del self._versions[next(iter(self._versions))]

    def stale(self, user_id: int, version: int) -> bool:
        """A message computed under ``version`` of the user's settings is older than a change
        this process saw."""
        known = self._versions.get(user_id)
        return known is not None and version < known[0]
