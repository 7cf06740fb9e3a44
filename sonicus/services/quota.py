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
run under the user's subscription row lock, with the user row read fresh inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import func, select

from .. import clock
from ..extensions import db
from ..models import ListeningSession
from ..tiers import TIERS, check_daily_quota


@dataclass(frozen=True)
class Usage:
    """Today's sessions against the tier's daily limit (``UsageSchema``)."""

    sessions_today: int
    sessions_remaining: int | None
    resets_at: datetime


def sessions_on_day(user_id: int, day: date) -> int:
    return db.session.execute(
        select(func.count(ListeningSession.id)).where(
            ListeningSession.user_id == user_id,
            ListeningSession.local_day == day,
            ListeningSession.counts_toward_quota.is_(True),
        )).scalar_one()


def _today(person, now: datetime) -> tuple[date, datetime]:
    """The user's current day and when it ends (their quota resets)."""
    today = clock.user_day(person, now)
    return today.day, today.ends_at


def enforce_daily_quota(person, tier_name: str, now: datetime) -> date:
    """Raise the 429 when today's quota is used up; else the user's day a start counts on.

    Call it with the user's subscription row locked, so that starts of one user serialise,
    and ``person`` the user row read after taking that lock.
    """
    day, resets_at = _today(person, now)
    if TIERS[tier_name].daily_sessions is not None:
        check_daily_quota(tier_name, sessions_on_day(person.id, day), resets_at, now)
    return day


def usage_today(person, tier_name: str, now: datetime | None = None) -> Usage:
    """``person``: a user or a caller (``id`` and the day settings)."""
    now = now or clock.now()
    day, resets_at = _today(person, now)
    used = sessions_on_day(person.id, day)
    limit = TIERS[tier_name].daily_sessions
    return Usage(used, None if limit is None else max(0, limit - used), resets_at)
