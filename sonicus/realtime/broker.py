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
  user's sockets across every process (``WS_MAX_SOCKETS_PER_USER``). With Redis, each
  socket holds a lease in its user's sorted set (member: the socket's id, score: when the
  lease runs out); a script drops run-out leases, counts and adds in one step; the
  subscriber thread renews this process's leases every ``LEASE_RENEW_SECONDS``, so the
  sockets of a process that died stop counting after ``LEASE_SECONDS``. Without Redis (or
  while it is unreachable) a user's sockets are counted in this process only.
- Keep-alive: one sweep per process (``keep_alive``) pings the sockets that were silent for
  ``ping_interval`` and closes (1008) those that left a ping unanswered as long. A socket's
  reader then waits without a timeout: under gevent a timed wait built a timeout, its timer
  and its exception for every wait of every socket (two per ping), which lived until the next
  ping and filled the collector's older generations (at 10,000 sockets most of what the
  collector scanned during a fan-out).
- Under gevent, delivery (and the sweep, and the lease renewal) gives the event loop a turn
  every ``DELIVERY_SLICE_SECONDS``; the sockets' readers are woken after everything else that
  is ready (``read_after_the_rest``), so neither requests nor a fan-out wait behind them.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable

import redis
from flask import current_app
from wsproto.events import Ping

from ..caller_cache import callers_channel, get_caller_cache
from ..extensions import channel_prefix, get_redis, redis_gate
from .connection import Connection, text_frame
from .loop import under_gevent, yield_to_loop
from .publish import LOCAL_DELIVERY_KEY, user_events_channel

log = logging.getLogger(__name__)

EXTENSION_KEY = "sonicus_broker"
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 10.0
SUBSCRIBE_CONFIRM_SECONDS = 5.0
FIRST_START_WAIT_SECONDS = 0.5  # the request that starts the subscriber waits this long
LEASE_SECONDS = 90  # a socket's lease on its user's cap, renewed every LEASE_RENEW_SECONDS
LEASE_RENEW_SECONDS = 30
LEASE_RENEW_BATCH = 1000  # leases given back per pipeline
LEASE_RENEW_USERS = 10  # users whose leases are renewed per pipeline (a ZADD and an EXPIRE each)
# Under gevent, delivery gives the event loop a turn (it polls sockets: a health probe, a
# handshake) after this long writing to sockets; a fan-out to thousands of sockets never
# holds the process for longer. A turn costs ~2.5 us (gevent.idle, 5,000 sockets waiting):
# 1% of a slice this short (it was 1 ms: a request waited up to that long).
DELIVERY_SLICE_SECONDS = 0.00025
# This process's id, renewed in a forked child (asked of the kernel before every request
# otherwise).
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))

CLOSE_POLICY_VIOLATION = 1008  # no pong within a ping interval
KEEPALIVE_SWEEPS_PER_INTERVAL = 4  # a silent socket is pinged within 1.25 ping intervals

# KEYS[1]: a user's leases; ARGV: now, the new lease's end, its member, the cap
ADMIT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""

ADMITTED, TOO_MANY_IN_PROCESS, TOO_MANY_FOR_USER = "admitted", "process", "user"


# Subscribers running in this process, stopped at interpreter exit so that none retries (and
# logs) while logging is being shut down.
_RUNNING: weakref.WeakSet = weakref.WeakSet()
_exit_hook = threading.Lock()
_exit_hook_registered = False


def stop_running_brokers(wait: float = 0.0) -> None:
    """Stop every subscriber of this process (at interpreter exit, or a test run's end), each
    given up to ``wait`` seconds to finish."""
    brokers = list(_RUNNING)
    for broker in brokers:
        broker.stop()
    for broker in brokers:
        listener = broker._listener
        if wait > 0 and listener is not None and listener.is_alive():
            listener.join(wait)


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(stop_running_brokers)
            _exit_hook_registered = True


class Broker:
    def __init__(self, app, snapshot: Callable[[int], dict | None]):
        self.app = app
        self.snapshot = snapshot  # a user's current analytics, by id (None: no such user)
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
        self.leases_prefix = channel_prefix(app.config) + "ws-sockets:"
        self._lease_ids = itertools.count(1)
        self._lease_owner = ""
        self._admit_script = None
        self._next_renewal = 0.0
        self._releases: list[tuple[int, str, float]] = []  # leases to give back
        self._releasing = False
        self._slice_ends = 0.0  # under gevent: when delivery gives the event loop a turn
        # The process whose subscriber thread runs, or that needs none (no Redis); None when
        # it stopped. A forked child's pid differs, so the child starts its own.
        self._started_in: int | None = None
        self._keepalive: threading.Thread | None = None
        self._keepalive_interval = 0.0
        self._keepalive_pid: int | None = None
        self._keepalive_stop = threading.Event()

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
        if self._take_lease(conn, per_user) is False:
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
            self._release_leases([(conn.user_id, lease)])

    def _release_leases(self, leases: list[tuple[int, str]]) -> None:
        """Give leases back, in batches, one caller at a time: when thousands of sockets close
        at once (a client network drop), the closing sockets queue their leases and whichever
        is releasing takes the others along, instead of one Redis call (and connection) each
        (that exhausted the client's pool and tripped the process's Redis back-off, and the
        leases it skipped refused their users' new sockets until they ran out). What cannot
        be released now is retried by the subscriber within a second."""
        with self._lock:
            now = time.monotonic()
            self._releases.extend((user_id, lease, now) for user_id, lease in leases)
            if self._releasing:
                return
            self._releasing = True
        try:
            while True:
                with self._lock:
                    # a lease older than its term has run out in Redis already
                    fresh = time.monotonic() - LEASE_SECONDS
                    batch = [item for item in self._releases[:LEASE_RENEW_BATCH]
                             if item[2] > fresh]
                    del self._releases[:LEASE_RENEW_BATCH]
                    if not batch and not self._releases:
                        self._releasing = False
                        return
                if batch and not self._redis_call("socket lease release", self._zrem(batch),
                                                  False):
                    with self._lock:
                        self._releases[:0] = batch
                        self._releasing = False
                    return
        except BaseException:
            with self._lock:
                self._releasing = False
            raise

    def _zrem(self, batch):
        def release(client):
            pipe = client.pipeline(transaction=False)
            for user_id, member, _queued in batch:
                pipe.zrem(self._leases_key(user_id), member)
            pipe.execute()
            return True
        return release

    def pending_releases(self) -> int:
        return len(self._releases)

    # ---- the per-user cap across processes (Redis leases) -------------------------------------
    def _leases_key(self, user_id: int) -> str:
        return f"{self.leases_prefix}{user_id}"

    def _redis_call(self, what: str, call, default=None):
        """``call(client)`` through the process's Redis back-off (None without Redis)."""
        if not self.redis_url:
            return default
        with self.app.app_context():
            client = get_redis()
            gate = redis_gate(self.app)
            if client is None or not gate.allows():
                return default
            try:
                result = call(client)
            except Exception as exc:
                gate.failed(exc, what)
                return default
            gate.succeeded()
            return result

    def _take_lease(self, conn: Connection, per_user: int) -> bool | None:
        """Count ``conn`` against its user's cap in every process: True (leased), False
        (the user is at the cap), None (no Redis: the local count decided)."""
        pid = os.getpid()
        if not self._lease_owner.startswith(f"{pid}-"):
            self._lease_owner = f"{pid}-{secrets.token_hex(4)}"
        member = f"{self._lease_owner}-{next(self._lease_ids)}"

        def admit(client):
            if self._admit_script is None:
                self._admit_script = client.register_script(ADMIT_SCRIPT)
            now = time.time()
            return bool(self._admit_script(keys=[self._leases_key(conn.user_id)],
                                           args=[now, now + LEASE_SECONDS, member, per_user],
                                           client=client))

        admitted = self._redis_call("socket lease", admit)
        if admitted:
            conn.lease = member
        return admitted

    def renew_leases(self) -> int:
        """Push this process's leases forward (the subscriber thread calls it every
        ``LEASE_RENEW_SECONDS``); how many were renewed. One ZADD (and EXPIRE) per user for all
        its sockets, in pipelines of ``LEASE_RENEW_USERS`` users, each user's leases read when
        its pipeline is built; under gevent the event loop gets its turn between two (one
        pipeline for 10,000 sockets held the process for 15-30 ms at a time; reading all
        10,000 leases and sending a first pipeline of 50 users was still one run of 9 ms of
        CPU, a pipeline of 50 users 2 ms: health probes waited behind them)."""
        with self._lock:
            user_ids = list(self._sockets)
        if not user_ids:
            return 0

        def renew(client):
            renewed = 0
            for start in range(0, len(user_ids), LEASE_RENEW_USERS):
                if start:
                    yield_to_loop()
                with self._lock:
                    batch = [(user_id, [conn.lease for conn in self._sockets.get(user_id, ())
                                        if conn.lease is not None])
                             for user_id in user_ids[start:start + LEASE_RENEW_USERS]]
                batch = [(user_id, members) for user_id, members in batch if members]
                if not batch:
                    continue
                until = time.time() + LEASE_SECONDS
                pipe = client.pipeline(transaction=False)
                for user_id, members in batch:
                    key = self._leases_key(user_id)
                    pipe.zadd(key, dict.fromkeys(members, until), xx=True)
                    pipe.expire(key, LEASE_SECONDS + 1)
                    renewed += len(members)
                pipe.execute()
            return renewed

        return self._redis_call("socket lease renewal", renew, 0)

    def _renew_when_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_renewal:
            self._next_renewal = now + LEASE_RENEW_SECONDS
            self.renew_leases()

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
        return len(conns)

    def close_all(self, code: int, reason: str) -> int:
        """Close every socket this process holds (a shutdown: 1001, clients reconnect
        elsewhere). Returns how many were closed."""
        with self._lock:
            conns = [conn for user_conns in self._sockets.values() for conn in user_conns]
        leases = [(conn.user_id, conn.lease) for conn in conns if conn.lease is not None]
        for conn in conns:
            conn.close(code, reason)
            self.unregister(conn, release=False)
            conn.lease = None
            self._pace()
        if leases:
            self._release_leases(leases)
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
            _RUNNING.add(self)
            _register_exit_hook()
            return True

    def wait_ready(self, timeout: float) -> bool:
        """Wait until this process is subscribed (so nothing published after is missed)."""
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._keepalive_stop.set()

    # ---- keep-alive: one sweep for every socket of the process -------------------------------
    def keep_alive(self, conn: Connection, interval: float) -> None:
        """Let this process's sweep ping ``conn`` when it was silent for ``interval`` seconds
        and close it (1008) when a ping stays unanswered as long; the sweep starts with the
        first such socket of the process."""
        conn.heard_from()
        conn.kept_alive = True
        with self._lock:
            sweep = self._keepalive
            if (sweep is not None and self._keepalive_pid == _pid[0]
                    and not self._keepalive_stop.is_set() and sweep.is_alive()):
                self._keepalive_interval = min(self._keepalive_interval, interval)
                return
            self._keepalive_interval = interval
            self._keepalive_pid = _pid[0]
            self._keepalive_stop = threading.Event()
            self._keepalive = threading.Thread(target=self._keep_alive_loop,
                                               name="sonicus-socket-keepalive", daemon=True)
            self._keepalive.start()

    def _keep_alive_loop(self) -> None:
        stop = self._keepalive_stop
        while not stop.wait(self._keepalive_interval / KEEPALIVE_SWEEPS_PER_INTERVAL):
            try:
                self.sweep_keepalive()
            except Exception as exc:  # never let one bad socket end the sweep
                log.warning("live updates: keep-alive sweep failed: %s", type(exc).__name__)

    def sweep_keepalive(self, now: float | None = None) -> tuple[int, int]:
        """One pass: ping the silent sockets, close those that did not answer; (pinged,
        closed). Under gevent it gives the event loop its turns like a fan-out."""
        interval = self._keepalive_interval
        with self._lock:
            groups = list(self._sockets.values())
        now = time.monotonic() if now is None else now
        pinged = closed = 0
        for conn in self._each_socket(groups):
            if not conn.kept_alive or conn.closed:
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

    def _each_socket(self, groups: list[set[Connection]]):
        """The sockets of ``groups`` (users' sets of the registry), one user's read at a time,
        so that the event loop gets its turns from the first (reading all 10,000 at once was
        one run without any, like the lease renewal's)."""
        for group in groups:
            with self._lock:
                conns = list(group)
            yield from conns

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
                    self._renew_when_due()
                    if self._releases and not self._releasing:
                        self._release_leases([])
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
            self._forget(message["data"])
        else:
            self._dispatch(message["data"])

    def _forget(self, raw) -> None:
        """Another process changed these users: their cached callers here are stale."""
        try:
            user_ids = [int(user_id) for user_id in json.loads(raw)["forget"]]
        except Exception:
            log.warning("caller invalidation: ignored a malformed message")
            return
        get_caller_cache(self.app).forget(user_ids)

    def _resync(self) -> None:
        """After a gap in the subscription, send every local socket its current figures
        (anything published during the gap was missed)."""
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
            self.close_local(user_id, int(payload["close"]), str(payload.get("reason", "")))
            return
        self.deliver_local(user_id, payload["text"])


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def init_broker(app, snapshot: Callable[[int], dict | None]) -> Broker:
    """The process's broker; without Redis, ``publish.py`` delivers straight to it."""
    broker = Broker(app, snapshot)
    app.extensions[EXTENSION_KEY] = broker
    app.extensions[LOCAL_DELIVERY_KEY] = broker.deliver
    return broker


def get_broker(app=None) -> Broker:
    return (app or current_app).extensions[EXTENSION_KEY]
