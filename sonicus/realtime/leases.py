"""The per-user socket cap across every web process (``WS_MAX_SOCKETS_PER_USER``): each socket
of this process holds a lease in its user's sorted set in Redis (member: the socket's id,
score: when the lease runs out).

- Taking one: a script drops the user's run-out leases, counts and adds in one step, so two
  processes never both admit the socket past the cap.
- Renewal: the broker's subscriber thread pushes this process's leases forward every
  ``LEASE_RENEW_SECONDS``; the sockets of a process that died stop counting after
  ``LEASE_SECONDS``. A lease the renewal no longer finds (Redis lost it with no reconnection
  to tell: a flush, a restart behind a proxy) is taken again as after a gap (``restore``).
- Release: a closed socket's lease is given back, in batches (``release``); what Redis does
  not take now is retried by the subscriber within a second, until its term is over.
- Without Redis (or while it is unreachable, behind the process's back-off) nothing is leased:
  the broker's local count of a user's sockets decides alone; once Redis answers again the
  subscriber leases the sockets admitted meanwhile (``restore_when_owed``), and after a gap in
  its subscription every socket of the process (``restore``). Restoring keeps to the cap: a
  script per user keeps the leases Redis still holds and adds the others, oldest socket
  first, while the user is under the cap; the sockets left over (admitted elsewhere too while
  Redis was away) are handed to ``over_cap``, which closes them with 4429.

The registry of sockets is the broker's: ``Leases`` reads it (which leases to renew) under the
broker's lock, which also guards the queue of leases to give back.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from collections.abc import Callable

from ..extensions import channel_prefix, guarded_redis_call
from .connection import Connection
from .loop import yield_to_loop

LEASE_SECONDS = 90  # a socket's lease on its user's cap, renewed every LEASE_RENEW_SECONDS
LEASE_RENEW_SECONDS = 30
LEASE_RENEW_BATCH = 1000  # leases given back per pipeline
LEASE_RENEW_USERS = 10  # users whose leases are renewed per pipeline (a ZADD and an EXPIRE each)
CLOSE_TOO_MANY_SOCKETS = 4429  # the user has WS_MAX_SOCKETS_PER_USER open already
DEFAULT_PER_USER = 10  # WS_MAX_SOCKETS_PER_USER's default

# KEYS[1]: a user's leases; ARGV: now, the new lease's end, its member, the cap
ADMIT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""

# KEYS[1]: a user's leases; ARGV: now, the leases' end, the cap, then this process's members of
# the user, oldest socket first. A member Redis holds is renewed; another is added while the
# user is under the cap. Returns the members that did not fit.
RESTORE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cap = tonumber(ARGV[3])
local refused = {}
for i = 4, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) or redis.call('ZCARD', KEYS[1]) < cap then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  else
    refused[#refused + 1] = ARGV[i]
  end
end
if redis.call('ZCARD', KEYS[1]) > 0 then
  redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
end
return refused
"""


class Leases:
    """This process's leases on its users' caps, for the sockets of the broker's registry
    (``sockets``: a user's id -> that user's connections, guarded by ``lock``)."""

    def __init__(self, app, lock: threading.Lock, sockets: dict[int, set[Connection]],
                 over_cap: Callable[[list[Connection]], None] | None = None):
        self.app = app
        self.over_cap = over_cap  # closes the sockets a restore found past their user's cap
        self.redis_url = app.config.get("REDIS_URL")
        self.prefix = channel_prefix(app.config) + "ws-sockets:"
        self._lock = lock
        self._sockets = sockets
        self._ids = itertools.count(1)
        self._owner = ""
        self._admit_script = None
        self._restore_script = None
        self._next_renewal = 0.0
        self._releases: list[tuple[int, str, float]] = []  # leases to give back
        self._releasing = False
        self._restore_owed = False  # sockets were admitted without Redis: ``restore`` them

    def key(self, user_id: int) -> str:
        return f"{self.prefix}{user_id}"

    def _redis_call(self, what: str, call, default=None):
        """``call(client)`` through the process's Redis back-off (None without Redis)."""
        if not self.redis_url:
            return default
        with self.app.app_context():
            return guarded_redis_call(what, call, default)

    # ---- taking one ---------------------------------------------------------------------------
    def take(self, conn: Connection, per_user: int) -> bool | None:
        """Count ``conn`` against its user's cap in every process: True (leased), False
        (the user is at the cap), None (no Redis: the local count decided)."""
        member = self._member()

        def admit(client):
            if self._admit_script is None:
                self._admit_script = client.register_script(ADMIT_SCRIPT)
            now = time.time()
            return bool(self._admit_script(keys=[self.key(conn.user_id)],
                                           args=[now, now + LEASE_SECONDS, member, per_user],
                                           client=client))

        admitted = self._redis_call("socket lease", admit)
        if admitted:
            with self._lock:  # ``restore`` may have leased it meanwhile: one lease per socket
                restored, conn.lease = conn.lease, member
            if restored is not None:
                self.release([(conn.user_id, restored)])
        elif admitted is None and self.redis_url:
            # Redis skipped (the back-off) or failed: admitted on the local count, and leased
            # by the subscriber once Redis answers (``restore_when_owed``) under this member
            # (a script that timed out may have run: still one lease for the socket)
            with self._lock:
                if conn.lease is None:
                    conn.lease = member
                self._restore_owed = True
        return admitted

    def _member(self) -> str:
        pid = os.getpid()
        if not self._owner.startswith(f"{pid}-"):
            self._owner = f"{pid}-{secrets.token_hex(4)}"
        return f"{self._owner}-{next(self._ids)}"

    def restore(self) -> int | None:
        """After a gap in Redis (the subscriber reconnected): lease every open socket of this
        process again, those admitted meanwhile on the local count included, since Redis may
        have come back without them (restarted empty). Within the cap: a user's sockets
        admitted meanwhile here and elsewhere past it are not leased and go to ``over_cap``
        (closed with 4429), the newest first. How many were leased (None: Redis skipped)."""
        per_user = int(self.app.config.get("WS_MAX_SOCKETS_PER_USER", DEFAULT_PER_USER))
        with self._lock:
            for conns in self._sockets.values():
                for conn in conns:
                    if conn.lease is None:
                        conn.lease = self._member()
            owned = [(user_id, sorted(conns, key=lambda conn: conn.opened))
                     for user_id, conns in self._sockets.items() if conns]
        if not owned:
            return 0

        def lease(client):
            if self._restore_script is None:
                self._restore_script = client.register_script(RESTORE_SCRIPT)
            now = time.time()
            pipe = client.pipeline(transaction=False)
            for user_id, conns in owned:
                self._restore_script(keys=[self.key(user_id)],
                                     args=[now, now + LEASE_SECONDS, per_user,
                                           *[conn.lease for conn in conns]],
                                     client=pipe)
            return pipe.execute()

        refused_by_user = self._redis_call("socket lease restore", lease)
        if refused_by_user is None:
            return None  # Redis skipped
        over, leased = [], 0
        for (_user_id, conns), refused in zip(owned, refused_by_user, strict=True):
            refused = {_text(member) for member in refused or ()}
            for conn in conns:
                if conn.lease in refused:
                    over.append(conn)
                else:
                    leased += 1
        if over:
            with self._lock:
                for conn in over:
                    conn.lease = None  # not held in Redis: nothing to give back
            if self.over_cap is not None:
                self.over_cap(over)
        return leased

    def restore_when_owed(self) -> None:
        """Lease the sockets admitted while Redis was skipped (the subscriber calls it): a
        pause of Redis, or one call that timed out, trips the process's back-off without the
        subscription dropping, so no reconnection would ``restore`` them."""
        if not self._restore_owed:
            return
        self._restore_owed = False
        if self.restore() is None:
            self._restore_owed = True

    # ---- renewal ------------------------------------------------------------------------------
    def renew(self) -> int:
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
            renewed, lost = 0, False
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
                    key = self.key(user_id)
                    pipe.zadd(key, dict.fromkeys(members, until), xx=True, ch=True)
                    pipe.expire(key, LEASE_SECONDS + 1)
                    renewed += len(members)
                found = pipe.execute()[::2]
                # fewer pushed forward than held: Redis lost leases (flushed, restarted empty
                # behind the same connection, or they ran out while the process was paused)
                lost = lost or any(int(count) < len(members)
                                   for count, (_user_id, members) in zip(found, batch,
                                                                         strict=True))
            if lost:
                self._restore_owed = True  # ``restore_when_owed``: taken again, within the cap
            return renewed

        return self._redis_call("socket lease renewal", renew, 0)

    def renew_when_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_renewal:
            self._next_renewal = now + LEASE_RENEW_SECONDS
            self.renew()

    # ---- release ------------------------------------------------------------------------------
    def release(self, leases: list[tuple[int, str]]) -> None:
        """Give leases back, in batches, one caller at a time: when thousands of sockets close
        at once (a client network drop), the closing sockets queue their leases and whichever
        is releasing takes the others along, instead of one Redis call (and connection) each
        (that exhausted the client's pool and tripped the process's Redis back-off, and the
        leases it skipped refused their users' new sockets until they ran out). What cannot
        be released now is retried by the subscriber within a second (``retry_releases``)."""
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

    def retry_releases(self) -> None:
        """Give back what an earlier release could not, unless a release is under way."""
        if self._releases and not self._releasing:
            self.release([])

    def _zrem(self, batch):
        def release(client):
            pipe = client.pipeline(transaction=False)
            for user_id, member, _queued in batch:
                pipe.zrem(self.key(user_id), member)
            pipe.execute()
            return True
        return release

    def pending(self) -> int:
        return len(self._releases)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
