"""The latest settings version this process knows of, per user (``SettingsVersions``): an
``analytics.updated`` computed under earlier settings (a refresh that read the user before a
settings change and published after it) is dropped instead of delivered.

A settings change publishes its version on the user-events channel (``publish_settings_change``)
after its commit, before the request answers; a message computed earlier carries the earlier
version and, published later, comes after the change on the same channel: every process drops
it. A version is kept for ``KEEP_SECONDS`` (a refresh publishes within moments of its reading);
it never holds up a fresh message.

An announcement this process missed (its subscriber lost Redis meanwhile) is caught up on when
it subscribes again (``catch_up``, before it re-sends figures): the versions of the users it
holds sockets for, as the database has them, so that figures computed before a change made
during the gap, published late, are dropped too. The version is the user row's ``updated_at``
(``analytics_cache.settings_version``): a write of the row that changed no setting counts as a
change there, which drops only figures older than the ones re-sent after the gap. A process
that skipped Redis when it made the change owes the announcement (``publish_settings_change``)
and sends it once it reaches Redis again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

KEEP_SECONDS = 600.0
CATCH_UP_BATCH = 1000  # users whose versions one query reads


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

    def catch_up(self, app, user_ids: list[int],
                 read: Callable[[list[int]], dict[int, int]] | None) -> None:
        """Learn the current settings versions of ``user_ids`` (``read``: by id, from the
        database) after a gap in this process's subscription; a failed read is logged."""
        if read is None:
            return
        for start in range(0, len(user_ids), CATCH_UP_BATCH):
            try:
                with app.app_context():
                    versions = read(user_ids[start:start + CATCH_UP_BATCH])
            except Exception as exc:
                log.warning("live updates: settings catch-up failed: %s", type(exc).__name__)
                return
            for user_id, version in versions.items():
                self.changed(user_id, version)

    def stale(self, user_id: int, version: int) -> bool:
        """A message computed under ``version`` of the user's settings is older than a change
        this process saw."""
        known = self._versions.get(user_id)
        return known is not None and version < known[0]
