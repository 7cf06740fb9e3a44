"""Streaks and streak freezes, from the user's streak days.

A streak day is a user day with at least one completed session that counts
(``ListeningSession.counts_in_outcomes``; completion is the server's word). The database
groups the user's streak days into islands of consecutive days (gaps and islands: numbering
the distinct days in order, ``day - row_number`` is constant within an island) and returns
one row per island ``(first_day, last_day, days)``; a small deterministic pass in Python
over those rows (``streaks_from_islands``) then accounts for freezes. The sessions never
leave the database, and the pass sees a few rows per island, however many sessions there are.

The freeze rule, exactly:

- A run of streak days earns one freeze each time its length (streak days in the run, frozen
  days not counted) reaches a multiple of 7; at most ``MAX_FREEZES`` are banked, an earning
  beyond that is lost.
- Between two streak days, exactly one missed day is covered by a banked freeze, which is
  spent: the run goes on, and the frozen day does not add to its length. Two or more missed
  days in a row end the run, whatever is banked (a freeze covers one day).
- When a run ends, its banked freezes go with it: a new run starts with none.
- A date that never was the user's day (skipped by a move east, ``clock.dates_never_begun``)
  is not a missed day: the days either side of it are consecutive.
- Today without a streak day does not break anything until it is over. If yesterday was
  missed (the last streak day was the day before yesterday), a banked freeze covers
  yesterday now and the run stays current; should today be missed too, the run ends and that
  freeze is no longer shown (it covered nothing that lasted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import Integer, case, cast, func, select

from ..extensions import db
from ..models import ListeningSession

DAYS_PER_FREEZE = 7
MAX_FREEZES = 2
FREEZE_DAYS_SHOWN = 90  # freeze_days lists the covered dates of the last 90 days


@dataclass(frozen=True)
class Island:
    """Consecutive active days of one kind, ``first`` to ``last`` inclusive: streak days
    (``streak``) or days with sessions that count but none completed."""

    first: date
    last: date
    streak: bool = True

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    def days_within(self, start: date, end: date) -> int:
        lo, hi = max(self.first, start), min(self.last, end)
        return max(0, (hi - lo).days + 1)


@dataclass(frozen=True)
class Streaks:
    """Streak figures at ``today``. ``runs``: every run (islands joined by freezes), oldest
    first; ``freeze_days``: every date a freeze covered, oldest first."""

    current: int
    longest: int
    freezes_available: int
    freeze_days: tuple[date, ...]
    runs: tuple[tuple[Island, ...], ...]

    def longest_within(self, start: date, end: date) -> int:
        """The most streak days one run has between ``start`` and ``end`` (inclusive)."""
        return max((sum(i.days_within(start, end) for i in run) for run in self.runs),
                   default=0)


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def day_islands(user_id: int, until: date) -> list[Island]:
    """The user's active days up to ``until`` (days with a session that counts), as islands
    of consecutive days of one kind, oldest first: ``streak`` islands are streak days, the
    others active days without a completed session. One SQL statement, one row per island."""
    s = ListeningSession
    days = (select(s.local_day.label("day"),
                   func.max(case((s.completed.is_(True), 1), else_=0)).label("streak"))
            .where(s.user_id == user_id, s.counts_in_outcomes, s.local_day <= until)
            .group_by(s.local_day).subquery())
    position = func.row_number().over(partition_by=days.c.streak, order_by=days.c.day)
    if db.session.get_bind().dialect.name == "postgresql":
        island = days.c.day - cast(position, Integer)
    else:
        island = func.julianday(days.c.day) - position
    numbered = select(days.c.day, days.c.streak, island.label("island")).subquery()
    rows = db.session.execute(
        select(func.min(numbered.c.day), func.max(numbered.c.day), numbered.c.streak)
        .group_by(numbered.c.streak, numbered.c.island)
        .order_by(func.min(numbered.c.day))).all()
    return [Island(_as_date(first), _as_date(last), bool(streak)) for first, last, streak in rows]


def active_days(islands: list[Island], start: date, end: date) -> int:
    """Active days between ``start`` and ``end`` inclusive (islands of both kinds)."""
    return sum(i.days_within(start, end) for i in islands)


def _missed_days(after: date, before: date, never_begun: frozenset[date]) -> int:
    """The user's days strictly between ``after`` and ``before`` (dates never begun left out)."""
    between = (before - after).days - 1
    return between - sum(1 for day in never_begun if after < day < before)


def _first_missed(after: date, never_begun: frozenset[date]) -> date:
    day = after + timedelta(days=1)
    while day in never_begun:
        day += timedelta(days=1)
    return day


def streaks_from_islands(islands: list[Island], today: date,
                         never_begun: frozenset[date] = frozenset()) -> Streaks:
    """The freeze accounting over the streak islands (see the module's rule), at ``today``;
    islands of active days without a streak day are passed over; ``never_begun``: the dates
    that were never the user's day (``clock.dates_never_begun``)."""
    islands = [i for i in islands if i.streak]
    runs: list[list[Island]] = []
    freeze_days: list[date] = []
    length = banked = 0
    previous: Island | None = None
    for island in islands:
        missed = (None if previous is None
                  else _missed_days(previous.last, island.first, never_begun))
        if missed == 0:
            runs[-1].append(island)
        elif missed == 1 and banked > 0:
            banked -= 1
            freeze_days.append(_first_missed(previous.last, never_begun))
            runs[-1].append(island)
        else:
            length = banked = 0
            runs.append([island])
        before, length = length, length + island.days
        banked = min(MAX_FREEZES, banked + length // DAYS_PER_FREEZE - before // DAYS_PER_FREEZE)
        previous = island
    current = available = 0
    if previous is not None:
        missed = _missed_days(previous.last, today, never_begun)  # missed before today
        if missed <= 0:
            current, available = length, banked
        elif missed == 1 and banked > 0:
            current, available = length, banked - 1
            freeze_days.append(_first_missed(previous.last, never_begun))
    longest = max((sum(i.days for i in run) for run in runs), default=0)
    return Streaks(current, longest, available, tuple(freeze_days),
                   tuple(tuple(run) for run in runs))


def recent_freeze_days(streaks: Streaks, today: date) -> list[str]:
    """The dates a freeze covered within the last ``FREEZE_DAYS_SHOWN`` days, ISO strings."""
    since = today - timedelta(days=FREEZE_DAYS_SHOWN - 1)
    return [d.isoformat() for d in streaks.freeze_days if since <= d <= today]
