"""Keep-alive of the process's sockets: ONE sweep thread per process, started with the first
socket that asks for it (``KeepAlive.watch``), pings the sockets that were silent for
``ping_interval`` and closes (1008) those that left a ping unanswered as long, and (4401) those
whose token ran out (``Connection.token_until``: its ``exp`` and the verifier's leeway); it hangs
up those that did not answer a close of the server's (``closing``).

- A socket's reader then waits without a timeout: under gevent a timed wait built a timeout,
  its timer and its exception for every wait of every socket (two per ping), which lived until
  the next ping and filled the collector's older generations (at 10,000 sockets most of what
  the collector scanned during a fan-out).
- The sweep never waits for a socket's send lock: a socket whose write is stuck (its peer
  reads nothing) would hold up every other's pings.
- Under gevent the sweep gives the event loop its turns like a fan-out (the broker's
  ``pace``), and reads the registry one user's sockets at a time.

The registry of sockets is the broker's: the sweep reads it under the broker's lock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from wsproto.events import Ping

from .connection import Connection
from .publish import CLOSE_INVALID_TOKEN

log = logging.getLogger(__name__)

CLOSE_POLICY_VIOLATION = 1008  # no pong within a ping interval
KEEPALIVE_SWEEPS_PER_INTERVAL = 4  # a silent socket is pinged within 1.25 ping intervals
CLOSE_ANSWER_SECONDS = 5.0  # a peer that has not answered the server's close by then is hung up


class KeepAlive:
    """The sweep over the broker's registry (``sockets``: a user's id -> that user's
    connections, guarded by ``lock``); ``pace`` is called between two sockets."""

    def __init__(self, lock: threading.Lock, sockets: dict[int, set[Connection]],
                 pace: Callable[[], None]):
        self._lock = lock
        self._sockets = sockets
        self._pace = pace
        self._thread: threading.Thread | None = None
        self._pid: int | None = None  # the process the sweep thread runs in
        self._stop = threading.Event()
        self.interval = 0.0  # the shortest ping interval of the sockets it watches
        self._closing: dict[Connection, float] = {}  # sent their close, not answered yet

    def watch(self, conn: Connection, interval: float) -> None:
        """Let this process's sweep ping ``conn`` when it was silent for ``interval`` seconds
        and close it (1008) when a ping stays unanswered as long; the sweep starts with the
        first such socket of the process."""
        conn.heard_from()
        conn.kept_alive = True
        pid = os.getpid()
        with self._lock:
            sweep = self._thread
            if (sweep is not None and self._pid == pid
                    and not self._stop.is_set() and sweep.is_alive()):
                self.interval = min(self.interval, interval)
                return
            self.interval = interval
            self._pid = pid
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._loop,
                                            name="sonicus-socket-keepalive", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def closing(self, conn: Connection) -> None:
        """``conn`` was sent its close and left the registry (its account suspended, say): the
        sweep hangs it up unless its peer answered within ``CLOSE_ANSWER_SECONDS`` (its reader
        waits for that answer without a timeout: a peer that never answers held the
        connection, its greenlet and its place in the server's pool for good)."""
        if conn.kept_alive:  # the sweep runs
            with self._lock:
                self._closing[conn] = time.monotonic()

    def _loop(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval / KEEPALIVE_SWEEPS_PER_INTERVAL):
            try:
                self.sweep()
            except Exception as exc:  # never let one bad socket end the sweep
                log.warning("live updates: keep-alive sweep failed: %s", type(exc).__name__)

    def sweep(self, now: float | None = None) -> tuple[int, int]:
        """One pass: ping the silent sockets, close those that did not answer; (pinged,
        closed). Under gevent it gives the event loop its turns like a fan-out."""
        interval = self.interval
        with self._lock:
            groups = list(self._sockets.values())
            closing = list(self._closing.items())
        wall = time.time() if now is None else now - time.monotonic() + time.time()
        now = time.monotonic() if now is None else now
        for conn, since in closing:
            if conn.ended or now - since >= CLOSE_ANSWER_SECONDS:
                if not conn.ended:
                    conn.hang_up()
                with self._lock:
                    self._closing.pop(conn, None)
        pinged = closed = 0
        for conn in self._each_socket(groups):
            if not conn.kept_alive or conn.closed:
                continue
            if conn.token_until is not None and wall >= conn.token_until:
                # its token ran out: sign in again (4401), as a new socket's handshake would
                if not conn.send_lock.locked():
                    conn.close(CLOSE_INVALID_TOKEN, "token expired")
                conn.closed = True
                conn.hang_up()
                closed += 1
                continue
            # A send lock held means a write to the socket is under way, or stuck because the
            # peer does not read: the sweep never waits for it (one such socket would hold up
            # every other's pings); that peer counts as pinged, and is hung up an interval on.
            if conn.pinged:
                if now - conn.pinged >= interval:
                    if not conn.send_lock.locked():
                        conn.close(CLOSE_POLICY_VIOLATION, "Ping/Pong timeout")
                    conn.closed = True
                    conn.hang_up()
                    closed += 1
            elif now - conn.heard >= interval:
                conn.pinged = now
                if conn.send_lock.locked():
                    pass
                elif conn.send_event(Ping()):
                    pinged += 1
                else:
                    conn.hang_up()
            self._pace()
        return pinged, closed

    def _each_socket(self, groups: list[set[Connection]]) -> Iterator[Connection]:
        """The sockets of ``groups`` (users' sets of the registry), one user's read at a time,
        so that the event loop gets its turns from the first (reading all 10,000 at once was
        one run without any, like the lease renewal's)."""
        for group in groups:
            with self._lock:
                conns = list(group)
            yield from conns
