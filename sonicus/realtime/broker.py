"""Fan-out of per-user messages to open sockets, and of caller invalidations, across every
web process.

- Messages are published by ``publish.py`` (web processes and workers alike); caller
  invalidations by ``caller_cache.forget_users`` after every commit that names a user.
- Each web process runs ONE Redis subscriber thread on both channels, started at process
  start (gunicorn's ``post_worker_init``, else the process's first request; always after the
  fork: a thread does not survive one), reconnecting with capped exponential backoff. It
  delivers each message to the sockets of that user registered in this process, and to no
  one else, and makes this process forget the callers another process changed. While it is
  not subscribed, this process caches no callers (``CallerCache.feed_lost``).
- The registry of local sockets is a dict of sets behind one lock; each connection has its
  own send lock (a socket is not safe to write from two threads at once).
- Caps: this process's sockets (``WS_MAX_SOCKETS_PER_PROCESS``, counted here) and one
  user's sockets across every process (``WS_MAX_SOCKETS_PER_USER``): with Redis, each socket
  holds a lease (``leases.py``), which the subscriber thread renews and retries releasing.
  Without Redis (or while it is unreachable) a user's sockets are counted in this process only.
- Keep-alive: one sweep per process over the registry (``keepalive.py``).
- Accounts: the subscriber thread checks every ``WS_ACCOUNT_CHECK_SECONDS`` (and after every
  gap) that the accounts it holds sockets for still stand (``accounts.py``).
- Under gevent, delivery (and the sweep, and the lease renewal) gives the event loop a turn
  every ``DELIVERY_SLICE_SECONDS``; the sockets' readers are woken after everything else that
  is ready (``read_after_the_rest``), so neither requests nor a fan-out wait behind them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

import redis
from flask import current_app

from ..caller_cache import callers_channel, get_caller_cache, heard_invalidation
from ..extensions import pay_owed_redis_calls
from .accounts import AccountCheck
from .connection import Connection, finish_writes, text_frame
from .keepalive import KeepAlive
from .leases import CLOSE_TOO_MANY_SOCKETS, Leases
from .loop import under_gevent, yield_to_loop
from .publish import LOCAL_DELIVERY_KEY, user_events_channel
from .running import _RUNNING as _RUNNING  # the tests stop them
from .running import running
from .running import stop_running_brokers as stop_running_brokers
from .versions import SettingsVersions

log = logging.getLogger(__name__)

EXTENSION_KEY = "sonicus_broker"
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 10.0
SUBSCRIBE_CONFIRM_SECONDS = 5.0
FIRST_START_WAIT_SECONDS = 0.5  # the request that starts the subscriber waits this long
# Under gevent, delivery gives the event loop a turn (it polls sockets: a health probe, a
# handshake) after this long writing to sockets; a fan-out to thousands of sockets never
# holds the process for longer. A turn costs ~2.5 us (gevent.idle, 5,000 sockets waiting):
# 1% of a slice this short (it was 1 ms: a request waited up to that long).
DELIVERY_SLICE_SECONDS = 0.00025
SHUTDOWN_CLOSE_SECONDS = 1.0  # every socket's 1001 is written within this, all at once
# This process's id, renewed in a forked child (else asked of the kernel before every request)
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))

ADMITTED, TOO_MANY_IN_PROCESS, TOO_MANY_FOR_USER = "admitted", "process", "user"


class Broker:
    """This process's sockets (the registry), admitted within their caps, and everything
    delivered to them; it holds their ``leases`` and their ``keepalive`` sweep."""

    def __init__(self, app, snapshot: Callable[[int], dict | None],
                 close_codes: Callable[[list[int]], dict[int, int]] | None = None,
                 settings_versions: Callable[[list[int]], dict[int, int]] | None = None):
        self.app = app
        self.snapshot = snapshot  # a user's current analytics, by id (None: no such user)
        self.accounts = AccountCheck(self, close_codes)  # suspended or erased meanwhile
        self.redis_url = app.config.get("REDIS_URL")
        self.channel = user_events_channel(app.config)
        self.callers_channel = callers_channel(app.config)
        self._lock = threading.Lock()
        self._sockets: dict[int, set[Connection]] = {}
        self._listener: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.reconnects = 0
        self.listener_starts = 0
        self._count = 0  # local sockets
        self._slice_ends = 0.0  # under gevent: when delivery gives the event loop a turn
        # The process whose subscriber thread runs, or that needs none (no Redis); None when
        # it stopped. A forked child's pid differs, so the child starts its own.
        self._started_in: int | None = None
        self.settings = SettingsVersions()  # updates computed under older settings are dropped
        self.settings_versions = settings_versions  # by id, from the database: after a gap
        self.leases = Leases(app, self._lock, self._sockets, self.close_over_cap)
        self.keepalive = KeepAlive(self._lock, self._sockets, self._pace)

    def _pace(self) -> None:
        """Between two writes of a fan-out: under gevent, give the event loop a turn once
        delivery has run for ``DELIVERY_SLICE_SECONDS`` (requests and handshakes wait at most
        that long behind a fan-out); under threads, nothing."""
        if time.perf_counter() < self._slice_ends or not under_gevent():
            return
        yield_to_loop()
        self._slice_ends = time.perf_counter() + DELIVERY_SLICE_SECONDS

    # ---- the local registry ----------------------------------------------------------------
    def admit(self, conn: Connection, per_process: int, per_user: int) -> str:
        """Register ``conn`` within both caps: ``ADMITTED``, else which cap refused it (and
        nothing is kept)."""
        with self._lock:
            if self._count >= per_process:
                return TOO_MANY_IN_PROCESS
            local = self._sockets.get(conn.user_id, ())
            if len(local) >= per_user:
                return TOO_MANY_FOR_USER
            self._sockets.setdefault(conn.user_id, set()).add(conn)
            self._count += 1
        self._ensure_listener()
        if self.leases.take(conn, per_user) is False:
            self.unregister(conn)
            return TOO_MANY_FOR_USER
        return ADMITTED

    def unregister(self, conn: Connection, release: bool = True) -> None:
        """Drop a local socket, and its lease unless ``release`` is False (the caller
        releases leases in bulk)."""
        with self._lock:
            conns = self._sockets.get(conn.user_id)
            if conns is not None and conn in conns:
                conns.discard(conn)
                self._count -= 1
                if not conns:
                    del self._sockets[conn.user_id]
        if conn.lease is not None and release:
            lease, conn.lease = conn.lease, None
            self.leases.release([(conn.user_id, lease)])

    def local_socket_count(self) -> int:
        return self._count

    def local_user_count(self) -> int:
        with self._lock:
            return len(self._sockets)

    def deliver_local(self, user_id: int, text: str) -> int:
        with self._lock:
            conns = list(self._sockets.get(user_id, ()))
        if not conns:
            return 0
        frame = text_frame(text)
        sent = 0
        for conn in conns:
            if conn.send_frame(frame):
                sent += 1
            else:
                self.unregister(conn)
            self._pace()
        return sent

    def close_local(self, user_id: int, code: int, reason: str) -> int:
        """Close every socket of ``user_id`` held by this process."""
        with self._lock:
            conns = list(self._sockets.get(user_id, ()))
        for conn in conns:
            conn.close(code, reason)
            self.unregister(conn)
            self.keepalive.closing(conn)  # hung up unless its peer answers the close
        return len(conns)

    def close_over_cap(self, conns: list[Connection]) -> None:
        """Close sockets found past their user's cap when leases were restored after a gap in
        Redis (admitted meanwhile on each process's own count): 4429, as a new socket past the
        cap gets; they hold no lease."""
        for conn in conns:
            conn.close(CLOSE_TOO_MANY_SOCKETS, "too many sockets for this user")
            self.unregister(conn, release=False)
            self.keepalive.closing(conn)  # hung up unless its peer answers the close
        log.info("live updates: closed %d sockets past their users' cap after a gap in Redis",
                 len(conns))

    def close_all(self, code: int, reason: str,
                  seconds: float = SHUTDOWN_CLOSE_SECONDS) -> int:
        """Close every socket this process holds (a shutdown: 1001, clients reconnect
        elsewhere), all within ``seconds`` (one after the other, each peer that read nothing
        cost a second): the rest of every close frame its socket did not take at once is
        written at the same time; sockets still full then are hung up. How many closed."""
        until = time.monotonic() + seconds
        with self._lock:
            conns = [conn for user_conns in self._sockets.values() for conn in user_conns]
        leases = [(conn.user_id, conn.lease) for conn in conns if conn.lease is not None]
        pending = {}
        for conn in conns:
            rest = conn.close_without_waiting(code, reason, until)
            if rest:
                pending[conn.ws.sock] = (conn, rest)
            self.unregister(conn, release=False)
            conn.lease = None
            self._pace()
        for sock in finish_writes([(sock, rest) for sock, (_conn, rest) in pending.items()],
                                  max(0.0, until - time.monotonic())):
            pending[sock][0].hang_up()
        if leases:
            self.leases.release(leases)
        return len(conns)

    # ---- the one subscriber per process ----------------------------------------------------
    def start(self, wait: float = 0.0) -> None:
        """Make sure this process's subscriber runs (cheap when it does); a first start in
        this process waits up to ``wait`` seconds for the subscription."""
        if self._started_in == _pid[0]:  # cheap: before every request
            return
        if self._ensure_listener() and wait > 0:
            self.wait_ready(wait)

    def _ensure_listener(self) -> bool:
        """Start the subscriber unless it runs in this process; True when started here."""
        if not self.redis_url:
            self._ready.set()
            self._started_in = _pid[0]
            return False
        with self._lock:
            pid = _pid[0]
            if self._started_in == pid:
                return False
            # A thread does not survive a fork: the child starts its own.
            self._ready = threading.Event()
            self._stop = threading.Event()
            self._listener = threading.Thread(target=self._run_listener,
                                              name="sonicus-live-updates", daemon=True)
            self._started_in = pid
            self._listener.start()
            self.listener_starts += 1
            running(self)
            return True

    def wait_ready(self, timeout: float) -> bool:
        """Wait until this process is subscribed (so nothing published after is missed)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self.keepalive.stop()

    def _subscribe(self, pubsub) -> None:
        """Subscribe to both channels and wait for Redis to confirm both: a message published
        after this returns reaches this process."""
        channels = {self.channel, self.callers_channel}
        pubsub.subscribe(*channels)
        confirmed: set[str] = set()
        deadline = time.monotonic() + SUBSCRIBE_CONFIRM_SECONDS
        while confirmed != channels:
            if time.monotonic() > deadline:
                raise TimeoutError("no subscription confirmation")
            message = pubsub.get_message(timeout=0.5)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                confirmed.add(_text(message["channel"]))
            else:
                self._handle(message)

    def _run_listener(self) -> None:
        try:
            self._listen()
        finally:
            with self._lock:
                if self._started_in == _pid[0]:
                    self._started_in = None

    def _listen(self) -> None:
        callers = get_caller_cache(self.app)
        failures = 0
        while not self._stop.is_set():
            client = pubsub = None
            try:
                client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                              socket_timeout=None, health_check_interval=15)
                pubsub = client.pubsub()
                self._subscribe(pubsub)
                callers.feed_restored()
                self._ready.set()
                if failures:
                    log.info("live updates: subscribed again after %d failed attempts",
                             failures)
                    self.leases.restore()  # Redis may be back without them
                    self._resync()
                failures = 0
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._handle(message)
                        # under gevent, delivery gives the loop its turns (_pace); under
                        # threads, let the others run between messages of a fan-out
                        if not under_gevent():
                            time.sleep(0)
                    self.leases.renew_when_due()
                    self.leases.restore_when_owed()
                    self.leases.retry_releases()
                    self.accounts.when_due()
                    pay_owed_redis_calls(self.app)  # what this process skipped meanwhile
            except Exception as exc:
                self._ready.clear()
                callers.feed_lost()
                if self._stop.is_set():
                    break
                failures += 1
                self.reconnects += 1
                delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * (2 ** (failures - 1)))
                log.warning("live updates: subscriber lost Redis (%s); retrying in %.2fs",
                            type(exc).__name__, delay)
                self._stop.wait(delay)
                self.accounts.when_due()  # no close arrives while Redis is away
            finally:
                for closable in (pubsub, client):
                    try:
                        if closable is not None:
                            closable.close()
                    except Exception:
                        pass
        self._ready.clear()
        callers.feed_lost()

    def _handle(self, message: dict) -> None:
        if message.get("type") != "message":
            return
        if _text(message.get("channel")) == self.callers_channel:
            heard_invalidation(self.app, message["data"])
        else:
            self._dispatch(message["data"])

    def _resync(self) -> None:
        """After a gap in the subscription, learn the settings changed meanwhile (figures
        computed before them and published late are dropped), close the sockets of accounts
        suspended or erased meanwhile (their close was published during the gap), and send
        every other local socket its current figures (anything published then was missed)."""
        with self._lock:
            user_ids = list(self._sockets)
        self.settings.catch_up(self.app, user_ids, self.settings_versions)
        self.accounts.run()
        with self._lock:
            user_ids = list(self._sockets)
        for user_id in user_ids:
            try:
                with self.app.app_context():
                    data = self.snapshot(user_id)
                if data is not None:
                    self.deliver_local(user_id, json.dumps(
                        {"type": "analytics.updated", "data": data},
                        separators=(",", ":"), default=str))
            except Exception as exc:
                log.warning("live updates: resync of a socket failed: %s", type(exc).__name__)

    def _dispatch(self, raw) -> None:
        try:
            self.deliver(json.loads(raw))
        except Exception:
            log.warning("live updates: ignored a malformed message")

    def deliver(self, payload: dict) -> None:
        """One published message, in this process: text to a user's sockets, or a close."""
        user_id = int(payload["user_id"])
        if "close" in payload:
            # the account changed: no stale sign-in in this process either
            get_caller_cache(self.app).forget([user_id])
            code, reason = int(payload["close"]), str(payload.get("reason", ""))
            self.accounts.closed(user_id, code, reason)  # for handshakes under way
            self.close_local(user_id, code, reason)
            return
        if "settings" in payload:
            version = int(payload["settings"])
            if "text" not in payload:  # a settings change: what was computed before is stale
                self.settings.changed(user_id, version)
                return
            if self.settings.stale(user_id, version):
                return
        self.deliver_local(user_id, payload["text"])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def init_broker(app, snapshot: Callable[[int], dict | None],
                close_codes: Callable[[list[int]], dict[int, int]] | None = None,
                settings_versions: Callable[[list[int]], dict[int, int]] | None = None
                ) -> Broker:
    """The process's broker; without Redis, ``publish.py`` delivers straight to it."""
    broker = Broker(app, snapshot, close_codes, settings_versions)
    app.extensions[EXTENSION_KEY] = broker
    app.extensions[LOCAL_DELIVERY_KEY] = broker.deliver
    return broker


def get_broker(app=None) -> Broker:
    return (app or current_app).extensions[EXTENSION_KEY]
