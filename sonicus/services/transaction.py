"""The unit of work: one transaction, committed or rolled back as a whole.

    with unit_of_work() as work:
        sub = lock_or_create_subscription(user_id)
        ...
        work.changed_user(user_id)   # the cached caller of this user is stale after the commit

Every failure (a 4xx raised by a rule, a database error) rolls back and releases the row
locks taken inside. Users named with ``changed_user`` are forgotten by the caller cache only
once the commit has succeeded: the one place where a caller is invalidated.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..caller_cache import forget_users
from ..extensions import db


class Work:
    __slots__ = ("changed_users",)

    def __init__(self):
        self.changed_users: set[int] = set()

    def changed_user(self, user_id: int | None) -> None:
        """This user's identity, role or subscription changes with this transaction."""
        if user_id is not None:
            self.changed_users.add(user_id)


@contextmanager
def unit_of_work() -> Iterator[Work]:
    work = Work()
    try:
        yield work
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    forget_users(work.changed_users)
