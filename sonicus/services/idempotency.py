"""Retry-safe writes (API.md "Retry-safe writes"): who runs a write sent with an
``Idempotency-Key``, and the answer kept for its retries.

The unique (user, key) pair decides: ``claim_key`` inserts a ``running`` row with ``INSERT ...
ON CONFLICT DO NOTHING`` on a connection of its own engine, in autocommit (one round trip,
committed on its own, visible to every process at once). It is sent before the write runs
and read before the write commits (before its view runs, or, for a view with nothing outside
its transaction, before that transaction's first commit: ``retry_safe.py``). The request
whose row went in runs (commits); it then keeps its answer (``store_answer``, one UPDATE)
or, when it failed with a 5xx or an exception, gives the key back (``release_key``) so that a
retry runs again. Any other request with the key finds the row: the same request (method,
path, body: the fingerprint) done gets the kept answer, one still running gets 409
``idempotency_key_in_use``, another request gets 422 ``idempotency_key_reused``.

On PostgreSQL the kept answer's UPDATE is sent before the answer leaves and not waited for
(``keys_connections.KeysConnections``): the write has committed and its answer does not depend on
it. A retry that reaches the database before that UPDATE has run finds its key ``running``
and reads it again for up to ``ANSWER_WAIT`` before answering 409, so a retry sent as soon
as the answer arrives is replayed.

A key is kept ``KEEP_FOR`` (24 h); after that it is treated as absent and taken over by the
next request that sends it, and ``sweep_expired_idempotency_keys`` (a periodic job) deletes
it. A ``running`` row older than ``STALE_RUNNING`` was abandoned by a process that died
mid-request (or lost the database before it could keep or release its answer): the next
request with the key deletes it and claims the key anew, in the database, so of several such
requests exactly one runs."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import psycopg2.extensions
from flask import current_app
from sqlalchemy import create_engine, delete, event, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from .. import clock
from ..extensions import db
from ..models.idempotency import DONE, RUNNING, IdempotencyKey
from .idempotency_answers import KeptAnswer, kept_answer, key_in_use, key_reused
from .keys_connections import KeysConnections
from .transaction import account_gone, names_a_missing_user

log = logging.getLogger(__name__)

KEEP_FOR = timedelta(hours=24)
# A write runs for milliseconds; a process that stops is given gunicorn's graceful_timeout
# (30 s) to finish its requests and is killed after its worker timeout (60 s) of silence. A
# row still ``running`` after this long belongs to a request that will never answer.
STALE_RUNNING = timedelta(seconds=60)
SWEEP_BATCH = 1000
ENGINE_KEY = "sonicus_idempotency_engine"
CLAIM_ATTEMPTS = 3
# How long a retry that finds its key running waits for the answer before its 409, and how
# often it looks: the first request's answer is sent without waiting (``store_answer``) and
# lands within a millisecond or so of the answer leaving.
ANSWER_WAIT = timedelta(milliseconds=50)
ANSWER_POLL = 0.002
CONNECTIONS_KEY = "sonicus_idempotency_connections"

_engine_lock = threading.Lock()
_table = IdempotencyKey.__table__
_c = _table.c


def _engine():
    engine = current_app.extensions.get(ENGINE_KEY)
    if engine is None:
        with _engine_lock:
            engine = current_app.extensions.get(ENGINE_KEY)
            if engine is None:
                engine = current_app.extensions[ENGINE_KEY] = _keys_engine(db.engine)
    return engine


def _autocommit():
    """A connection of the keys' own engine: autocommit, so that a claim or a kept answer
    is one statement and one round trip; on PostgreSQL with ``synchronous_commit`` off, so
    that neither waits for the WAL to reach the disk (see ``_keys_engine``)."""
    return _engine().connect()


def _keys_engine(main):
    """Made in the process that uses it (after a fork), from the app's engine.

    Commits that do not wait for the disk: a claim is durable whenever the write it guards
    is (the write's own commit flushes the WAL past the claim's commit record; a claim lost
    in a crash guarded a write that did not happen). A kept answer lost in a crash of the
    database within a fraction of a second after it leaves the key ``running``: its retries
    get 409 until ``STALE_RUNNING``, then run again. That window against a disk flush (~5
    ms here) on every keyed write."""
    if main.dialect.name != "postgresql":
        return main.execution_options(isolation_level="AUTOCOMMIT")
    # Autocommit: nothing to roll back when a connection goes back to the pool. Pinged before
    # use: this pool serves the rare statements (a replay, a 409, a release, the sweep), and a
    # key given back on a connection the server had dropped stayed ``running``, its retries
    # refused with 409 until ``STALE_RUNNING``, after the 503 that should have been the last.
    # Its size counts in the process's share of PostgreSQL's connections (README, "Database
    # connections"); its timeout is the app pool's: a claim that waits it out answers 503.
    config = current_app.config
    engine = create_engine(main.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                           pool_pre_ping=True,
                           pool_size=int(config["IDEMPOTENCY_POOL_SIZE"]),
                           max_overflow=int(config["IDEMPOTENCY_MAX_OVERFLOW"]),
                           pool_timeout=int(config["DATABASE_POOL_TIMEOUT_SECONDS"]),
                           pool_recycle=1800,
                           connect_args={"connect_timeout": 5,
                                         "options": "-c synchronous_commit=off"})
    event.listen(engine, "connect", _prepare_statements)
    return engine


# The two statements every keyed write sends, on PostgreSQL: prepared once per connection of
# the keys' engine (parsed and planned once, not per request) and executed on the pooled
# psycopg2 connection, with no SQLAlchemy statement built, compiled or looked up per call (that
# cost several times the round trip). A replay, a 409, a release, the sweep, and SQLite go
# through SQLAlchemy.
_CLAIM = "sonicus_idempotency_claim"
_STORE = "sonicus_idempotency_store"
_PREPARE_CLAIM = (
    f"PREPARE {_CLAIM} (integer, varchar, varchar, timestamptz, timestamptz) AS "
    f"INSERT INTO {_table.fullname} (user_id, key, fingerprint, state, created_at, expires_at) "
    f"VALUES ($1, $2, $3, '{RUNNING}', $4, $5) ON CONFLICT (user_id, key) DO NOTHING "
    "RETURNING id")
_PREPARE_STORE = (
    f"PREPARE {_STORE} (smallint, text, json, integer) AS "
    f"UPDATE {_table.fullname} SET state = '{DONE}', response_status = $1, response_body = $2, "
    f"response_headers = $3 WHERE id = $4 AND state = '{RUNNING}'")
_PREPARE = f"{_PREPARE_CLAIM}; {_PREPARE_STORE}"
_CLAIM_SQL = f"EXECUTE {_CLAIM} (%s, %s, %s, %s, %s)"
_STORE_SQL = f"EXECUTE {_STORE} (%s, %s, %s, %s)"


def _prepare_statements(dbapi_connection, connection_record) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_PREPARE)
    finally:
        cursor.close()


def _execute_raw(engine, sql: str, params: tuple, fetch: bool):
    """``sql`` on a pooled connection of ``engine`` (autocommit): the first column of the
    first row when ``fetch``. Errors are raised as SQLAlchemy raises them (``IntegrityError``;
    ``OperationalError``, answered 503, once a lost connection has left the pool), so that
    they are handled as any other statement's."""
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except dbapi_error as exc:  # could not connect
        raise _wrapped(engine, sql, params, exc, lost=True) from exc
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone() if fetch else None
        finally:
            cursor.close()
    except dbapi_error as exc:
        lost = engine.dialect.is_disconnect(exc, connection.dbapi_connection, None)
        if lost:
            connection.invalidate(exc)
        raise _wrapped(engine, sql, params, exc, lost) from exc
    finally:
        connection.close()
    return row[0] if row else None


def _wrapped(engine, sql: str, params: tuple, exc: Exception, lost: bool) -> DBAPIError:
    return DBAPIError.instance(sql, params, exc, engine.dialect.loaded_dbapi.Error,
                               connection_invalidated=lost, dialect=engine.dialect)


def _insert_running(engine, user_id: int, key: str, fingerprint: str, now: datetime):
    """The ``running`` row's id, or None when the key is there already."""
    if engine.dialect.name == "postgresql":
        params = (user_id, key, fingerprint, now, now + KEEP_FOR)
        connections = _connections(engine)
        try:
            if connections is None:
                return _execute_raw(engine, _CLAIM_SQL, params, fetch=True)
            return connections.fetch(_CLAIM_SQL, params)
        except (psycopg2.Error, IntegrityError) as exc:  # the driver's, or _execute_raw's
            raise _claim_error(engine, params, exc) from exc
    statement = (sqlite.insert(_table)
                 .values(user_id=user_id, key=key, fingerprint=fingerprint, state=RUNNING,
                         created_at=now, expires_at=now + KEEP_FOR)
                 .on_conflict_do_nothing(index_elements=["user_id", "key"])
                 .returning(_c.id))
    try:
        with engine.connect() as conn:
            return conn.execute(statement).scalar()
    except IntegrityError as exc:
        raise _claim_error(engine, (), exc) from exc


def _claim_error(engine, params: tuple, exc: Exception) -> Exception:
    """What a failed claim raises: 404 when the user is gone, else the database's error as
    SQLAlchemy raises it (a lost connection: 503)."""
    if isinstance(exc, psycopg2.Error):
        lost = isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError)
        exc = _wrapped(engine, _CLAIM_SQL, params, exc, lost)
    if isinstance(exc, IntegrityError) and names_a_missing_user(exc):
        return account_gone()
    return exc


class PendingClaim:
    """A claim sent to the database and not read yet (``send_claim``): the request goes on
    (its body is parsed, or its view does its database work, meanwhile) and reads it with
    ``outcome`` before its view runs or before the view's transaction first commits."""

    __slots__ = ("_fetch", "_engine", "_user_id", "_key", "_fingerprint", "_now", "_params")

    def __init__(self, fetch, engine, user_id, key, fingerprint, now, params):
        self._fetch, self._engine, self._params = fetch, engine, params
        self._user_id, self._key, self._fingerprint, self._now = user_id, key, fingerprint, now

    def outcome(self) -> int | KeptAnswer:
        """As ``claim_key``."""
        try:
            claim = self._fetch.result()
        except psycopg2.Error as exc:
            raise _claim_error(self._engine, self._params, exc) from exc
        return _decide(self._engine, self._user_id, self._key, self._fingerprint, self._now,
                       claim)

    def abandon(self) -> None:
        """The request ended before reading it: read it now, and give the key back if it
        was this request's."""
        try:
            claim = self._fetch.result()
        except psycopg2.Error:
            return  # not claimed, or the connection is gone with it
        if claim is not None:
            release_key(claim)


def send_claim(user_id: int, key: str, fingerprint: str) -> int | KeptAnswer | PendingClaim:
    """``claim_key``, without waiting for the database where it can: on PostgreSQL (blocking
    psycopg2) the claim is sent and a ``PendingClaim`` returned."""
    now = clock.now().astimezone(UTC)
    engine = _engine()
    connections = _connections(engine) if engine.dialect.name == "postgresql" else None
    if connections is None:
        return _decide(engine, user_id, key, fingerprint, now,
                       _insert_running(engine, user_id, key, fingerprint, now))
    params = (user_id, key, fingerprint, now, now + KEEP_FOR)
    try:
        fetch = connections.start(_CLAIM_SQL, params)
    except psycopg2.Error as exc:
        raise _claim_error(engine, params, exc) from exc
    return PendingClaim(fetch, engine, user_id, key, fingerprint, now, params)


def claim_key(user_id: int, key: str, fingerprint: str) -> int | KeptAnswer:
    """Claim ``key`` of this user for the request with ``fingerprint``: the claim's id when
    this request is to run (then ``store_answer`` or ``release_key`` it), or the kept answer
    of the same request done before. Raises 409 ``idempotency_key_in_use`` while another
    request with the key runs and 422 ``idempotency_key_reused`` for another request.

    A key found ``running`` is read again for up to ``ANSWER_WAIT`` before the 409: its
    request may have answered already, with the answer on its way (``store_answer``)."""
    outcome = send_claim(user_id, key, fingerprint)
    return outcome.outcome() if isinstance(outcome, PendingClaim) else outcome


def _decide(engine, user_id: int, key: str, fingerprint: str, now: datetime,
            claim: int | None) -> int | KeptAnswer:
    """From the first attempt's ``claim`` (None: the key was there): see ``claim_key``."""
    for attempt in range(CLAIM_ATTEMPTS):
        if attempt:
            claim = _insert_running(engine, user_id, key, fingerprint, now)
        if claim is not None:
            return claim
        row = _read_key(engine, user_id, key)
        if (row is not None and row.state == RUNNING and row.fingerprint == fingerprint
                and not _is_takeable(row, now)):
            row = _await_answer(engine, user_id, key)
        if row is None:  # released or swept meanwhile: try again
            continue
        if _is_takeable(row, now):
            # Expired, or abandoned mid-request: whoever deletes it claims the key next. It
            # is deleted only as it was read: a running row that has kept its answer since
            # stays.
            with engine.connect() as conn:
                conn.execute(delete(_table).where(_c.id == row.id, _c.state == row.state))
            continue
        if row.fingerprint != fingerprint:
            raise key_reused()
        if row.state == DONE:
            return kept_answer(row)
        break
    raise key_in_use()



def _read_key(engine, user_id: int, key: str):
    with engine.connect() as conn:
        return conn.execute(
            select(_c.id, _c.fingerprint, _c.state, _c.response_status, _c.response_body,
                   _c.response_headers, _c.created_at, _c.expires_at)
            .where(_c.user_id == user_id, _c.key == key)).one_or_none()


def _await_answer(engine, user_id: int, key: str):
    """The key's row once it is no longer ``running`` (or gone: None), or as it is after
    ``ANSWER_WAIT`` (another request with the key is refused with 422 at once instead)."""
    deadline = time.monotonic() + ANSWER_WAIT.total_seconds()
    row = None
    while time.monotonic() < deadline:
        time.sleep(ANSWER_POLL)
        row = _read_key(engine, user_id, key)
        if row is None or row.state != RUNNING:
            return row
    return row


def _is_takeable(row, now: datetime) -> bool:
    return row.expires_at <= now or (row.state == RUNNING
                                     and row.created_at <= now - STALE_RUNNING)


def store_answer(claim: int, status: int, body: str, headers: dict) -> None:
    """Keep the answer of the request that holds ``claim`` for its retries. On PostgreSQL
    the UPDATE is sent and not waited for (``KeysConnections``), its failure logged there."""
    engine = _engine()
    if engine.dialect.name == "postgresql":
        params = (status, body, json.dumps(headers) if headers else None, claim)
        connections = _connections(engine)
        if connections is None:
            _execute_raw(engine, _STORE_SQL, params, fetch=False)
            return
        try:
            connections.send(_STORE_SQL, params, f"the answer of idempotency key {claim}")
        except psycopg2.Error as exc:  # not even sent (no connection): raised as any other
            raise _wrapped(engine, _STORE_SQL, params, exc, lost=True) from exc
        return
    with engine.connect() as conn:
        conn.execute(update(_table).where(_c.id == claim, _c.state == RUNNING)
                     .values(state=DONE, response_status=status, response_body=body,
                             response_headers=headers or None))


def _connections(engine) -> KeysConnections | None:
    """This app's keys connections (PostgreSQL with blocking psycopg2; None under gevent's
    cooperative psycopg2, whose connections are not to be driven by hand)."""
    connections = current_app.extensions.get(CONNECTIONS_KEY)
    if connections is None:
        if psycopg2.extensions.get_wait_callback() is not None:
            return None
        with _engine_lock:
            connections = current_app.extensions.get(CONNECTIONS_KEY)
            if connections is None:
                url = engine.url.set(drivername="postgresql")
                config = current_app.config
                connections = current_app.extensions[CONNECTIONS_KEY] = KeysConnections(
                    url.render_as_string(hide_password=False), _PREPARE,
                    max_open=int(config["IDEMPOTENCY_CONNECTIONS_MAX_OPEN"]),
                    keep_idle=int(config["IDEMPOTENCY_CONNECTIONS_KEEP_IDLE"]),
                    wait_seconds=int(config["DATABASE_POOL_TIMEOUT_SECONDS"]))
    return connections


def settle_answers() -> None:
    """Wait until every answer this process has sent is written (tests)."""
    connections = current_app.extensions.get(CONNECTIONS_KEY)
    if connections is not None:
        connections.settle()


def release_key(claim: int) -> None:
    """Give the key back (the request failed with a 5xx or an exception): a retry runs."""
    with _autocommit() as conn:
        conn.execute(delete(_table).where(_c.id == claim, _c.state == RUNNING))


def sweep_expired_idempotency_keys(now: datetime | None = None) -> int:
    """Delete keys past their 24 hours (periodic job); returns how many went."""
    now = now or clock.now()
    swept = 0
    while True:
        with _autocommit() as conn:
            batch = select(_c.id).where(_c.expires_at <= now).limit(SWEEP_BATCH)
            count = conn.execute(delete(_table).where(_c.id.in_(batch))).rowcount
        swept += count
        if count < SWEEP_BATCH:
            break
    if swept:
        log.info("swept %d expired idempotency keys", swept)
    return swept
