"""Accounts that no longer stand: a suspension or an erasure closes the user's sockets
everywhere by a message, which a process misses while its subscriber is down, or when the
process that made the change skipped Redis (its back-off, ``extensions.RedisGate``) though the
others had it. So the subscriber thread also checks, every ``WS_ACCOUNT_CHECK_SECONDS`` (and
after every gap), that the accounts this process holds sockets for still stand: one query per
``ACCOUNT_CHECK_BATCH`` users, the event loop given a turn between two, and closes the
sockets of a suspended (4403) or erased (4401) account.

A published close also reaches no socket whose handshake signed in before the change and
registered after the close came: the process remembers recent closes (``closed``) and such a
handshake is refused with the close's code (``closed_since``).

The registry of sockets is the broker's: the check reads it under the broker's lock and
closes through ``Broker.close_local``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..caller_cache import get_caller_cache
from .loop import yield_to_loop
from .publish import CLOSE_FORBIDDEN

log = logging.getLogger(__name__)

ACCOUNT_CHECK_SECONDS = 30.0  # default of WS_ACCOUNT_CHECK_SECONDS
RECENT_CLOSE_SECONDS = 60.0  # how long a published close is remembered for handshakes under way
ACCOUNT_CHECK_BATCH = 1000  # users whose accounts one query checks


class AccountCheck:
    """The periodic check of ``broker``'s users; ``close_codes(user_ids)`` gives, of these
    users, those whose sockets must close now (suspended, erased): ``{id: code}``."""

    def __init__(self, broker, close_codes: Callable[[list[int]], dict[int, int]] | None):
        self.broker = broker
        self.close_codes = close_codes
        self.seconds = float(broker.app.config.get("WS_ACCOUNT_CHECK_SECONDS",
                                                   ACCOUNT_CHECK_SECONDS))
        self._next = time.monotonic() + self.seconds
        self.passes = 0
        self._closes: dict[int, tuple[float, int, str]] = {}  # user -> (when, code, reason)
        self._closes_lock = threading.Lock()  # without Redis, publishing threads deliver

    def closed(self, user_id: int, code: int, reason: str) -> None:
        """A close of ``user_id``'s sockets was published (suspension, erasure): remembered a
        while, for the handshakes that signed in before it and register after it."""
        now = time.monotonic()
        with self._closes_lock:
            self._closes.pop(user_id, None)
            self._closes[user_id] = (now, code, reason)
            while now - next(iter(self._closes.values()))[0] >= RECENT_CLOSE_SECONDS:
                del self._closes[next(iter(self._closes))]

    def closed_since(self, user_id: int, since: float) -> tuple[int, str] | None:
        """(code, reason) of a close of ``user_id``'s sockets that came at or after ``since``
        (``time.monotonic()``), else None: a handshake that signed in meanwhile missed it."""
        close = self._closes.get(user_id)
        if close is None or close[0] < since:
            return None
        return close[1], close[2]

    def when_due(self) -> None:
        """``run`` every ``seconds`` (the subscriber thread)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.seconds
        self.run()

    def run(self) -> int:
        """Close the broker's sockets of accounts suspended (4403) or erased (4401), whose
        close this process may have missed (module doc); how many sockets were closed. A
        failed query is logged and waits for the next pass."""
        if self.close_codes is None:
            return 0
        broker = self.broker
        with broker._lock:
            user_ids = list(broker._sockets)
        self.passes += 1
        closed = 0
        for start in range(0, len(user_ids), ACCOUNT_CHECK_BATCH):
            if start:
                yield_to_loop()
            try:
                with broker.app.app_context():
                    codes = self.close_codes(user_ids[start:start + ACCOUNT_CHECK_BATCH])
            except Exception as exc:
                log.warning("live updates: account check failed: %s", type(exc).__name__)
                return closed
            if codes:
                get_caller_cache(broker.app).forget(list(codes))  # no stale sign-in here either
            for user_id, code in codes.items():
                reason = "account suspended" if code == CLOSE_FORBIDDEN else "account erased"
                closed += broker.close_local(user_id, code, reason)
        if closed:
            log.info("live updates: closed %d sockets of accounts suspended or erased", closed)
        return closed
