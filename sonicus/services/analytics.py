"""Personal analytics: mark stale, request a refresh, compute, cache.

The refresh request is an outbox: ``mark_stale`` writes ``stale_since`` in the caller's
transaction; ``request_refresh`` enqueues after the commit (best effort); a periodic sweep
re-enqueues anything still stale, so no refresh is lost while Redis is down.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite

from ..cache import cache_delete
from ..extensions import db
from ..models import UserAnalytics
from ..models.base import utcnow


def cache_key(user_id: int) -> str:
    return f"analytics:{user_id}"


def mark_stale(user_id: int) -> None:
    """Record, in the current transaction, that this user's analytics need a refresh."""
    now = utcnow()
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UserAnalytics).values(user_id=user_id, data={}, stale_since=now)
    stmt = stmt.on_conflict_do_update(
        index_elements=[UserAnalytics.user_id],
        set_={"stale_since": db.func.coalesce(UserAnalytics.stale_since, now)})
    db.session.execute(stmt)


def request_refresh(user_id: int) -> None:
    """Enqueue the refresh job (after the commit); inline on the embedded default."""
    from ..tasks.jobs import refresh_user_analytics
    from ..tasks.queue import QUEUE_ANALYTICS, enqueue

    enqueue(refresh_user_analytics, user_id, queue=QUEUE_ANALYTICS, best_effort=True)


def invalidate_user_analytics(user_id: int) -> None:
    cache_delete(cache_key(user_id))


def refresh_user_analytics(user_id: int) -> dict | None:
    """Recompute and store one user's analytics (computation lands with the analytics work)."""
    row = db.session.get(UserAnalytics, user_id)
    if row is None:
        return None
    db.session.execute(update(UserAnalytics).where(UserAnalytics.user_id == user_id)
                       .values(stale_since=None, computed_at=utcnow()))
    db.session.commit()
    invalidate_user_analytics(user_id)
    return row.data
