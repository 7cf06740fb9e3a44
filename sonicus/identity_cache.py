"""A short-lived, per-process cache of who a token belongs to.

A single-page app fires bursts of requests with one token (the dashboard, its packages, the
analytics). The first resolves the token to the user and their subscription with one query;
for the next ``AUTH_USER_CACHE_SECONDS`` (default 2) the same token reuses that snapshot,
attached to the request's session without a query.

Freshness:
- A change committed in this process to a user or their subscription (ORM flush or bulk
  UPDATE/DELETE) drops the affected entries at commit time, so this process never serves a
  stale snapshot of its own writes.
- A change made by another process is seen at the latest when the entry expires.
- Every rule that enforces a limit or money (session quota, trials, payments, admin grants)
  re-reads and locks its rows; the snapshot only serves reads.

A request that only reads who the caller is (their profile, the admin check) reads the
snapshot itself, a read-only view, and opens no database session at all; ``current_user``
attaches the snapshot to the request's session on first use.
"""

from __future__ import annotations

import copy
import threading
import time
import weakref

from sqlalchemy import event, inspect
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from .models import User, UserSubscription

_DIRTY = "sonicus_identity_dirty"
_CLEAR_ALL = "sonicus_identity_clear_all"
_caches: weakref.WeakSet[IdentityCache] = weakref.WeakSet()


def _columns(obj) -> dict:
    """A deep copy of a loaded row's column values, by attribute name."""
    mapper = inspect(obj).mapper
    return {attr.key: copy.deepcopy(getattr(obj, attr.key)) for attr in mapper.column_attrs}


def _detached_copy(obj):
    """A detached twin of a loaded row: never attached to a session, never mutated."""
    clone = type(obj)(**_columns(obj))
    make_transient_to_detached(clone)
    return clone


class Snapshot:
    """A read-only view of a row as it was loaded: its columns as attributes."""

    __slots__ = ("_values",)

    def __init__(self, values: dict):
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("a sign-in snapshot is read-only: change the user via current_user")


class IdentitySnapshot(Snapshot):
    """The user and their subscription as read at sign-in, for routes that only read them."""

    __slots__ = ("orm_user", "orm_subscription", "_memo")

    def __init__(self, user: User, sub: UserSubscription):
        values = _columns(user)
        values["is_admin"] = user.is_admin
        values["subscription"] = Snapshot(_columns(sub))
        super().__init__(values)
        # Detached twins to attach to a request's session; never attached themselves.
        object.__setattr__(self, "orm_user", _detached_copy(user))
        object.__setattr__(self, "orm_subscription", _detached_copy(sub))
        object.__setattr__(self, "_memo", {})

    def remember(self, key: str, build):
        """``build()``, once for this snapshot: for documents that depend on nothing else."""
        value = self._memo.get(key)
        if value is None:
            value = self._memo[key] = build()
        return value


class IdentityCache:
    def __init__(self, ttl_seconds: float, max_entries: int = 20000):
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, int, IdentitySnapshot]] = {}
        self._by_user: dict[int, set[str]] = {}
        self._lock = threading.Lock()
        _caches.add(self)

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, digest: str) -> IdentitySnapshot | None:
        """The snapshot for this token, if it is fresh."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            expires, user_id, snapshot = entry
            if expires < time.monotonic():
                self._drop(digest, user_id)
                return None
        return snapshot

    @staticmethod
    def attach(session, snapshot: IdentitySnapshot) -> User:
        """The snapshot as a persistent ``User`` of ``session``, without a query."""
        user, sub = snapshot.orm_user, snapshot.orm_subscription
        attached = session.merge(user, load=False)
        set_committed_value(attached, "preferences", copy.deepcopy(user.preferences))
        set_committed_value(attached, "subscription", session.merge(sub, load=False))
        return attached

    def put(self, digest: str, user: User) -> None:
        sub = user.subscription
        if sub is None or not user.is_active:
            return
        snapshot = (time.monotonic() + self.ttl, user.id, IdentitySnapshot(user, sub))
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
                self._by_user.clear()
            self._entries[digest] = snapshot
            self._by_user.setdefault(user.id, set()).add(digest)

    def _drop(self, digest: str, user_id: int) -> None:
        self._entries.pop(digest, None)
        digests = self._by_user.get(user_id)
        if digests is not None:
            digests.discard(digest)
            if not digests:
                del self._by_user[user_id]

    def invalidate(self, user_ids) -> None:
        with self._lock:
            for user_id in user_ids:
                for digest in self._by_user.pop(user_id, ()):
                    self._entries.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_user.clear()


def forget_user(user_id: int) -> None:
    """Drop a user's snapshots in this process (told by another process, e.g. a suspension)."""
    for cache in list(_caches):
        cache.invalidate([user_id])


def clear_all() -> None:
    """Forget every snapshot in this process (after changes made outside the ORM)."""
    for cache in list(_caches):
        cache.clear()


# ---- invalidation on commit, for every session in this process ----------------------------

@event.listens_for(Session, "after_flush")
def _collect_changed_users(session, flush_context):
    changed = session.info.setdefault(_DIRTY, set())
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, User) and obj.id is not None:
            changed.add(obj.id)
        elif isinstance(obj, UserSubscription) and obj.user_id is not None:
            changed.add(obj.user_id)


@event.listens_for(Session, "do_orm_execute")
def _notice_bulk_changes(state):
    if (state.is_update or state.is_delete) and state.bind_mapper is not None \
            and state.bind_mapper.class_ in (User, UserSubscription):
        state.session.info[_CLEAR_ALL] = True


@event.listens_for(Session, "after_commit")
def _invalidate_after_commit(session):
    changed = session.info.pop(_DIRTY, None)
    clear_all = session.info.pop(_CLEAR_ALL, False)
    if not changed and not clear_all:
        return
    for cache in list(_caches):
        if clear_all:
            cache.clear()
        else:
            cache.invalidate(changed)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session):
    session.info.pop(_DIRTY, None)
    session.info.pop(_CLEAR_ALL, None)
