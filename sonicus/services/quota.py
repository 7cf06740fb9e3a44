"""The daily session quota in the user's own day: counted here, the rule in ``tiers``.

The user's day is the one ``clock.user_day`` gives under the day settings in force at the
moment (``clock.day_settings_at``); a start is counted on that day (``local_day``).

Invariant: the quota-counted sessions that start within one user day, under the settings in
force when that day began, never exceed the daily limit, whatever sequence of changes the user
makes. It holds because (1) a change of timezone or day_start_hour takes effect only at the
boundary of the day in force when it was made (``User.change_day_settings``), so the settings
that began a day stay in force until it ends; (2) a day is known by its date, and a start is
refused once the counted starts with that date reach the limit, so a day that a move west
makes begin again (the same date) shares the quota already used; (3) the count and the insert
run under the user's subscription row lock, in a statement that begins once the lock is held.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import bindparam, func, insert, select

from .. import clock
from ..extensions import db
from ..models import ListeningSession
from ..tiers import TIERS


@dataclass(frozen=True)
class Usage:
    """Today's sessions against the tier's daily limit (``UsageSchema``)."""

    sessions_today: int
    sessions_remaining: int | None
    resets_at: datetime


def counted_on_day(user_id, day) -> tuple:
    """THE rule of a user's sessions of the day: those that count toward the quota of
    ``user_id`` on ``day`` (values or bound parameters), so not a tap given back. The usage
    (``usage_today``), the start's count and the analytics' ``sessions_today`` all read it."""
    return (ListeningSession.user_id == user_id, ListeningSession.local_day == day,
            ListeningSession.counts_toward_quota.is_(True))


def sessions_on_day(user_id: int, day: date) -> int:
    return db.session.execute(
        select(func.count(ListeningSession.id)).where(*counted_on_day(user_id, day))
    ).scalar_one()


def today_of(person, now: datetime) -> tuple[date, datetime]:
    """The user's current day and when it ends (their quota resets)."""
    today = clock.user_day(person, now)
    return today.day, today.ends_at



# The columns a start writes (``insert_within_quota``), in this order.
START_COLUMNS = ("user_id", "package_id", "track_id", "tier", "status", "started_at",
                 "local_day", "max_duration_seconds", "listened_seconds", "completed",
                 "counts_toward_quota", "mood_before", "client_id")


def _insert_statement(limited: bool):
    """``INSERT INTO user_sessions (START_COLUMNS) SELECT :user_id, ... [WHERE (SELECT
    count(*) FROM user_sessions WHERE <counted on :local_day>) < :daily_limit] RETURNING id``,
    built once: every start only binds its values."""
    table = ListeningSession.__table__
    source = select(*[bindparam(name, type_=table.c[name].type) for name in START_COLUMNS])
    if limited:
        used = (select(func.count()).select_from(table)
                .where(*counted_on_day(bindparam("user_id"), bindparam("local_day")))
                .scalar_subquery())
        source = source.where(used < bindparam("daily_limit"))
    return insert(table).from_select(list(START_COLUMNS), source).returning(table.c.id)


_INSERT_COUNTED = _insert_statement(limited=True)
_INSERT_UNLIMITED = _insert_statement(limited=False)


def insert_within_quota(values: dict, tier_name: str) -> int | None:
    """Insert one quota-counted session (``values``: its ``START_COLUMNS``) unless that day's
    counted sessions already reach the tier's daily limit; the new id, or None when the limit
    is reached (the caller answers the 429 with ``check_daily_quota``).

    The count and the insert are one statement (``INSERT ... SELECT ... WHERE (SELECT
    count(*) ...) < limit RETURNING id``). Call it with the user's subscription row locked by
    an EARLIER statement of the transaction: this statement's snapshot begins once the lock is
    held, so its count sees every start committed by the previous holder (READ COMMITTED). A
    count inside the locking statement itself would not: its snapshot predates the wait.
    """
    limit = TIERS[tier_name].daily_sessions
    if limit is None:
        return db.session.execute(_INSERT_UNLIMITED, values).scalar_one()
    return db.session.execute(_INSERT_COUNTED,
                              {**values, "daily_limit": limit}).scalar_one_or_none()


def usage_today(person, tier_name: str, now: datetime | None = None) -> Usage:
    """``person``: a user or a caller (``id`` and the day settings)."""
    now = now or clock.now()
    day, resets_at = today_of(person, now)
    used = sessions_on_day(person.id, day)
    limit = TIERS[tier_name].daily_sessions
    return Usage(used, None if limit is None else max(0, limit - used), resets_at)
