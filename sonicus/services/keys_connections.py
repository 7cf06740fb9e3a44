"""The idempotency keys' own PostgreSQL connections (services/idempotency.py): the claim
waited for, the kept answer sent without waiting.

A keyed write's answer is kept by one UPDATE after the write has committed. The request
has nothing to learn from that UPDATE: whether it lands or not, the client gets the answer
the view gave (API.md: a committed write never answers 5xx). So the UPDATE is *sent* before
the answer leaves and its result is read later, when the connection is next taken, instead
of holding the answer for a round trip to the database. Sending is what matters for retries:
PostgreSQL runs a statement it has received even if this process dies right after, and the
statement is on its way before the answer is. A retry that reaches the database before the
UPDATE has run finds the key ``running``; ``claim_key`` waits up to ``ANSWER_WAIT`` for such
a key before it answers 409, so a retry sent at once is replayed.

The connections are psycopg2's asynchronous ones (``async_=True``: ``execute`` sends and
returns), autocommit by nature, with ``synchronous_commit`` off (see
``idempotency._keys_engine``). Each is used by one thread at a time: taken from the idle
list, its previous statement's result read, checked for a close by the server while it was
idle, used, and given back. A statement found lost with its connection is sent again once on
a new one, so what is sent without waiting must be safe to run twice. Not used under gevent's
cooperative psycopg2 (the socket process), where the keys' engine runs both and waits.

No library does this: SQLAlchemy's pools and psycopg2's pool hand out connections whose
statements are waited for; psycopg 3's pipeline mode batches statements of one connection
but still waits for the batch before the connection is given back.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import deque
from typing import NamedTuple

import psycopg2
import psycopg2.extensions

log = logging.getLogger(__name__)

# The defaults; the app passes its settings (IDEMPOTENCY_CONNECTIONS_KEEP_IDLE / _MAX_OPEN).
KEEP_IDLE = 4  # connections kept open between requests
# Never more open than this: past it, the oldest connection still running its statement is
# waited for, and when every one is taken by a request (a claim sent and not read yet), one
# given back is waited for up to ``wait_seconds``, then ``OperationalError`` (answered 503).
MAX_OPEN = 6
APPLICATION_NAME = "sonicus-keys"  # how its connections show in pg_stat_activity


def _wait(connection, timeout: float | None = None) -> bool:
    """Drive ``connection`` until its current operation is done (False: timed out). A
    result that has arrived already costs one ``poll`` and no system call to wait."""
    while True:
        state = connection.poll()
        if state == psycopg2.extensions.POLL_OK:
            return True
        poller = select.poll()
        poller.register(connection.fileno(), select.POLLIN if state == psycopg2.extensions.POLL_READ
                        else select.POLLOUT)
        if not poller.poll(None if timeout is None else timeout * 1000):
            return False


class _Statement(NamedTuple):
    sql: str
    params: tuple
    what: object  # names it in the log
    attempt: int = 1


class _Connection:
    __slots__ = ("raw", "cursor", "pending")

    def __init__(self, raw, cursor):
        self.raw = raw
        # psycopg2 reads an asynchronous result through the cursor that sent it: kept.
        self.cursor = cursor
        self.pending: _Statement | None = None  # sent, result not read yet


class KeysConnections:
    """A few PostgreSQL connections of its own: ``fetch`` waits for its statement, ``send``
    does not (what it sends must be safe to run twice: see the module's doc)."""

    def __init__(self, dsn: str, prepare: str, *, connect_timeout: int = 5,
                 options: str = "-c synchronous_commit=off", max_open: int = MAX_OPEN,
                 keep_idle: int = KEEP_IDLE, wait_seconds: float = 3.0):
        self._dsn = dsn
        self._max_open, self._keep_idle, self._wait_seconds = max_open, keep_idle, wait_seconds
        self._prepare = prepare
        self._timeout = connect_timeout
        self._connect_args = {"connect_timeout": connect_timeout, "options": options,
                              "application_name": APPLICATION_NAME}
        # First in, first out: the connection taken is the one given back longest ago, so
        # an answer just sent is not waited for by the next claim (it had a whole request's
        # time to run).
        self._idle: deque[_Connection] = deque()
        self._open = 0  # connections made and not discarded
        # notified when a connection is given back or discarded (``_take`` may wait for one)
        self._lock = threading.Condition(threading.Lock())

    def fetch(self, sql: str, params: tuple):
        """Run ``sql`` and return the first column of its first row (None: no row). Raises
        psycopg2's error; the connection is dropped when it was lost."""
        return self.start(sql, params).result()

    def start(self, sql: str, params: tuple) -> Fetch:
        """Send ``sql``; its ``Fetch`` reads the first column of its first row when asked
        (the connection is held until then)."""
        connection = self._take()
        try:
            connection.cursor.execute(sql, params)
        except psycopg2.Error as exc:
            self._after_error(connection, exc)
            raise
        return Fetch(self, connection)

    def _after_error(self, connection: _Connection, exc: Exception) -> None:
        if _lost(connection, exc):
            self._discard(connection)
        else:
            self._give_back(connection)

    def send(self, sql: str, params: tuple, what: object) -> None:
        """Send ``sql`` and return at once. Raises psycopg2's error when it could not even
        be sent (no connection could be made)."""
        self._send(_Statement(sql, params, what))

    def settle(self) -> None:
        """Wait until every statement sent so far has run (tests)."""
        for _ in range(2):  # a statement lost with its connection is sent again, once
            with self._lock:
                connections, self._idle = self._idle, deque()
            pending = any(connection.pending is not None for connection in connections)
            for connection in connections:
                if self._finish(connection):
                    self._give_back(connection)
            if not pending:
                return

    def close_idle(self) -> None:
        """Close the connections kept idle, once what they sent has run (a process that
        stops, a test module that ends)."""
        self.settle()
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for connection in idle:
            self._discard(connection)

    def _send(self, statement: _Statement) -> None:
        connection = self._take()
        try:
            connection.cursor.execute(statement.sql, statement.params)
        except psycopg2.Error:
            self._discard(connection)
            raise
        connection.pending = statement
        self._give_back(connection)

    def _take(self) -> _Connection:
        """A live connection with nothing pending: one whose last statement has run, or a
        new one while fewer than ``max_open`` are open (an answer just sent is not waited
        for by the next claim), else the oldest, once its statement has run; when requests
        hold every one, the first given back within ``wait_seconds``."""
        deadline = None
        while True:
            with self._lock:
                while True:
                    connection = next((c for c in self._idle if _done(c)), None)
                    if connection is not None:
                        self._idle.remove(connection)
                        break
                    if self._open < self._max_open:
                        self._open += 1
                        break
                    if self._idle:
                        connection = self._idle.popleft()
                        break
                    if deadline is None:
                        deadline = time.monotonic() + self._wait_seconds
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise psycopg2.OperationalError(
                            f"no idempotency keys connection free in {self._wait_seconds} s "
                            f"({self._max_open} open)")
                    self._lock.wait(left)
            if connection is None:
                try:
                    return self._connect()
                except BaseException:
                    with self._lock:
                        self._open -= 1
                        self._lock.notify()
                    raise
            if self._finish(connection):
                return connection

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self._keep_idle:
                self._idle.append(connection)
                self._lock.notify()
                return
        if self._finish(connection):
            self._discard(connection)

    def _finish(self, connection: _Connection) -> bool:
        """Read the result of what ``connection`` sent last, and tell whether it is still
        usable (False: it was closed; a statement it lost was sent again)."""
        statement, connection.pending = connection.pending, None
        try:
            if statement is not None and not _wait(connection.raw, self._timeout):
                raise psycopg2.OperationalError(f"no result in {self._timeout} s")
            if _readable(connection.raw):  # idle, yet the server spoke: it closed it
                raise psycopg2.OperationalError("closed by the server")
        except psycopg2.Error as exc:
            if not _lost(connection, exc):  # the statement failed; the connection is fine
                log.error("%s not kept: %s", statement.what, type(exc).__name__)
                return True
            self._discard(connection)
            if statement is not None:
                self._send_again(statement, exc)
            return False
        return True

    def _send_again(self, statement: _Statement, exc: Exception) -> None:
        if statement.attempt > 1:
            log.error("%s not kept: %s", statement.what, type(exc).__name__)
            return
        try:
            self._send(statement._replace(attempt=statement.attempt + 1))
        except psycopg2.Error as again:
            log.error("%s not kept: %s", statement.what, type(again).__name__)

    def _connect(self) -> _Connection:
        raw = psycopg2.connect(self._dsn, async_=True, **self._connect_args)
        try:
            if not _wait(raw, self._timeout):
                raise psycopg2.OperationalError("timed out connecting to the database")
            cursor = raw.cursor()
            cursor.execute(self._prepare)
            if not _wait(raw, self._timeout):
                raise psycopg2.OperationalError("timed out preparing statements")
        except Exception:
            raw.close()
            raise
        return _Connection(raw, cursor)

    def _discard(self, connection: _Connection) -> None:
        with self._lock:
            self._open -= 1
            self._lock.notify()
        try:
            connection.raw.close()
        except Exception:  # already gone
            pass


class Fetch:
    """A statement sent by ``KeysConnections.start``, its result not read yet."""

    __slots__ = ("_owner", "_connection")

    def __init__(self, owner: KeysConnections, connection: _Connection):
        self._owner, self._connection = owner, connection

    def result(self):
        """The first column of the first row (None: no row); once."""
        owner, connection = self._owner, self._connection
        self._connection = None
        try:
            if not _wait(connection.raw, owner._timeout):
                raise psycopg2.OperationalError(f"no result in {owner._timeout} s")
            row = connection.cursor.fetchone()
        except psycopg2.Error as exc:
            owner._after_error(connection, exc)
            raise
        owner._give_back(connection)
        return row[0] if row else None


def _done(connection: _Connection) -> bool:
    """Nothing pending on ``connection``, or its result is in (read without waiting)."""
    if connection.pending is None:
        return True
    try:
        return connection.raw.poll() == psycopg2.extensions.POLL_OK
    except psycopg2.Error:  # its result is an error: ``_finish`` deals with it
        return True


def _lost(connection: _Connection, exc: Exception) -> bool:
    return bool(connection.raw.closed) or isinstance(
        exc, psycopg2.OperationalError | psycopg2.InterfaceError)


def _readable(connection) -> bool:
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))
