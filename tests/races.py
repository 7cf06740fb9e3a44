"""What the race tests share: an action run on a thread of its own, and how many sessions of
the test database wait on a lock (the point at which the other side of a race has reached its
row lock)."""

from __future__ import annotations

import threading

from sqlalchemy import func, select, text


def in_thread(action) -> tuple[threading.Thread, list]:
    """Start ``action`` on a thread; its result lands in the list once it returns."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    return thread, result


def lock_waiters(db_session) -> int:
    """How many sessions of this database wait on a lock now."""
    waiting = db_session.execute(
        select(func.count()).select_from(text("pg_stat_activity"))
        .where(text("wait_event_type = 'Lock' AND datname = current_database()"))).scalar()
    db_session.commit()
    return waiting
