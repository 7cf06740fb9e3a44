"""The unit of work: one transaction, committed or rolled back as a whole.

    with unit_of_work() as work:
        sub = lock_or_create_subscription(user_id)
        ...
        work.changed_user(user_id)   # the cached caller of this user is stale after the commit

Every failure (a 4xx raised by a rule, a database error) rolls back and releases the row
locks taken inside. Users named with ``changed_user`` are forgotten by the caller cache only
once the commit has succeeded: the one place where a caller is invalidated (in every process:
``caller_cache.forget_users``).

A write that names a user who no longer exists (an account erased after the caller signed
in) is answered 404 ``not_found``, whichever statement finds it out: the database refuses the
row that references the missing user and this translates that refusal.

The answer of a write is built from what the transaction loaded: the app's sessions keep
objects loaded after the commit (``expire_on_commit`` off), so load what the answer shows
inside the unit of work and nothing touches the database once it has committed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from ..api_errors import ApiError
from ..caller_cache import forget_users
from ..extensions import db

FOREIGN_KEY_VIOLATION = "23503"


class Work:
    __slots__ = ("changed_users",)

    def __init__(self):
        self.changed_users: set[int] = set()

    def changed_user(self, user_id: int | None) -> None:
        """This user's identity, role or subscription changes with this transaction."""
        if user_id is not None:
            self.changed_users.add(user_id)


def dialect_insert():
    """The ``insert`` of the session's database (PostgreSQL's or SQLite's), for the
    ``ON CONFLICT`` clauses both have."""
    dialect = db.session.get_bind().dialect.name
    return postgresql.insert if dialect == "postgresql" else sqlite.insert


def read_one_moment() -> None:
    """Let this request's next reads see the database as it stood at one moment (PostgreSQL's
    ``REPEATABLE READ``, read only): a document read in many statements (an export) is not
    half from before a change committed meanwhile (an erasure) and half from after. Ends the
    session's transaction so far (a read request's: it wrote nothing)."""
    db.session.commit()
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        db.session.execute(text("SET TRANSACTION READ ONLY"))


def account_gone() -> ApiError:
    return ApiError(404, "not_found", "Account not found.",
                    errors=["This account no longer exists."])


def names_a_missing(exc: IntegrityError, table: str) -> bool:
    """The database refused a row that references a row of ``table`` that is not there (any
    more): a foreign key named ``fk_<table>_<column>_<table referenced>``."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "pgcode", None) != FOREIGN_KEY_VIOLATION:
        return False
    constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
    return constraint.endswith(f"_{table}")


def names_a_missing_user(exc: IntegrityError) -> bool:
    """The database refused a row that references a user who is not there (any more)."""
    return names_a_missing(exc, "users")


@contextmanager
def unit_of_work() -> Iterator[Work]:
    work = Work()
    try:
        yield work
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        if names_a_missing_user(exc):
            raise account_gone() from exc
        raise
    except BaseException:
        db.session.rollback()
        raise
    forget_users(work.changed_users)
