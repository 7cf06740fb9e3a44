"""A small, pure model of Sonicus's rules, written from the contract (API.md) and not from the
code: the state machine in test_rules_state_machine.py holds the API against it.

Nothing here imports the app. Times are aware UTC datetimes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# The tier table of the contract.
DAILY_SESSIONS = {"starter": 3, "premium": 10, "pro": None}
MAX_SESSION_SECONDS = {"starter": 15 * 60, "premium": 60 * 60, "pro": None}
LEVELS = {"starter": {"public"}, "premium": {"public", "premium"},
          "pro": {"public", "premium", "pro_exclusive"}}
COMPLETION_SHARE = 0.8
COUNTS_FROM_SECONDS = 60   # sessions with less listened count nowhere (streaks, moods, ...)


def local_day(moment: datetime, tz: str, hour: int) -> date:
    return (moment.astimezone(ZoneInfo(tz)) - timedelta(hours=hour)).date()


def day_start(day: date, tz: str, hour: int) -> datetime:
    return datetime.combine(day, time(hour=hour)).replace(tzinfo=ZoneInfo(tz)).astimezone(UTC)


def next_boundary(moment: datetime, tz: str, hour: int) -> datetime:
    return day_start(local_day(moment, tz, hour) + timedelta(days=1), tz, hour)


@dataclass
class DaySettings:
    """Timezone and day start hour as the quota, streaks and analytics see them: a change takes
    effect at the next boundary of the day in force when it was asked for; until then the old
    day stands. ``shown`` is what the profile shows at once."""

    in_force: list[tuple[datetime, str, int]] = field(
        default_factory=lambda: [(datetime.min.replace(tzinfo=UTC), "UTC", 0)])
    pending: tuple[datetime, str, int] | None = None

    def _settle(self, now: datetime) -> None:
        if self.pending is not None and self.pending[0] <= now:
            self.in_force.append(self.pending)
            self.pending = None

    def at(self, moment: datetime) -> tuple[str, int]:
        """The settings in force at ``moment`` (pending ones count from their boundary)."""
        segments = list(self.in_force)
        if self.pending is not None:
            segments.append(self.pending)
        tz, hour = "UTC", 0
        for since, seg_tz, seg_hour in segments:
            if since <= moment:
                tz, hour = seg_tz, seg_hour
        return tz, hour

    def shown(self) -> tuple[str, int]:
        return self.pending[1:] if self.pending is not None else self.in_force[-1][1:]

    def change(self, now: datetime, tz: str, hour: int) -> None:
        self._settle(now)
        current = self.at(now)
        boundary = self.pending[0] if self.pending is not None else next_boundary(now, *current)
        self.pending = None if (tz, hour) == current else (boundary, tz, hour)

    def day_of(self, moment: datetime) -> date:
        return local_day(moment, *self.at(moment))


@dataclass(frozen=True)
class SessionRow:
    """What the invariants read of a stored listening session."""

    id: int
    started_at: datetime
    ended_at: datetime | None
    tier: str
    counts_toward_quota: bool
    completed: bool
    listened_seconds: int
    content_seconds: int | None
    local_day: date | None = None  # the user day the server stored it on
    synced: bool = False   # uploaded after being played offline
    package_id: int | None = None
    mood_before: int | None = None
    mood_after: int | None = None


def quota_violations(rows: list[SessionRow], days: DaySettings) -> list[str]:
    """Within each user day (the settings in force when it began), the k-th quota-counted
    start never exceeds the daily limit of the tier it started on."""
    by_day: dict[date, list[SessionRow]] = {}
    for row in sorted(rows, key=lambda r: (r.started_at, r.id)):
        if row.counts_toward_quota:
            by_day.setdefault(days.day_of(row.started_at), []).append(row)
    problems = []
    for day, started in by_day.items():
        for k, row in enumerate(started, start=1):
            limit = DAILY_SESSIONS[row.tier]
            if limit is not None and k > limit:
                problems.append(f"{day}: start #{k} (session {row.id}) on {row.tier} "
                                f"past the limit of {limit}")
    return problems


def sessions_of_day(rows: list[SessionRow], days: DaySettings, day: date) -> int:
    """A user's sessions of ``day``, as the usage and the analytics both show them: the
    quota-counted starts of that user day (a tap given back is none)."""
    return sum(1 for row in rows
               if row.counts_toward_quota and days.day_of(row.started_at) == day)


def playable_seconds(row: SessionRow) -> int | None:
    caps = [c for c in (row.content_seconds, MAX_SESSION_SECONDS[row.tier]) if c is not None]
    return min(caps) if caps else None


def completion_violations(rows: list[SessionRow]) -> list[str]:
    """Completed only when the server's listened time reached 80% of the playable length;
    listened time never exceeds the wall time of the session."""
    problems = []
    for row in rows:
        playable = playable_seconds(row)
        if row.completed and playable and row.listened_seconds < COMPLETION_SHARE * playable:
            problems.append(f"session {row.id} completed with {row.listened_seconds} s of "
                            f"{playable} s")
        if row.ended_at is not None:
            wall = (row.ended_at - row.started_at).total_seconds()
            if row.listened_seconds > wall + 1:
                problems.append(f"session {row.id}: {row.listened_seconds} s listened in "
                                f"{wall:.0f} s")
    return problems


OFFLINE_WINDOW = timedelta(days=14)
OVERLAP_TOLERANCE_SECONDS = 60


def offline_violations(rows: list[SessionRow], uploaded_at: dict[int, datetime]) -> list[str]:
    """Sessions uploaded after being played offline: each started within the 14 days before
    its upload, ended after it started, and no two of a user's uploads overlap by more than a
    minute. (They count against the quota of the day they started in: ``quota_violations``.)"""
    problems = []
    synced = sorted((r for r in rows if r.synced), key=lambda r: (r.started_at, r.id))
    for row in synced:
        if row.ended_at is None or row.ended_at <= row.started_at:
            problems.append(f"uploaded session {row.id} has no interval")
        uploaded = uploaded_at.get(row.id)
        if uploaded is not None and not (
                uploaded - OFFLINE_WINDOW <= row.started_at <= uploaded):
            problems.append(f"uploaded session {row.id} started outside the 14 days")
    for index, a in enumerate(synced):
        for other in synced[index + 1:]:
            if other.started_at >= a.ended_at:
                break
            shared = (min(a.ended_at, other.ended_at) - other.started_at).total_seconds()
            if shared > OVERLAP_TOLERANCE_SECONDS:
                problems.append(f"uploaded sessions {a.id} and {other.id} overlap by "
                                f"{shared:.0f} s")
    return problems


# ---- retry-safe writes ----------------------------------------------------------------------

KEY_KEPT_FOR = timedelta(hours=24)


@dataclass(frozen=True)
class KeyedWrite:
    """A write sent with an ``Idempotency-Key``: when, by which account, and its answer."""

    sent_at: datetime
    user_id: int
    status: int
    body: bytes


def retry_violations(first: KeyedWrite, now: datetime, user_id: int | None, status: int,
                     body: bytes, replayed: bool, sessions_before: int,
                     sessions_after: int, retry_after: str | None = None) -> list[str]:
    """A retry with the same key, method, path and body by the same account within 24 h
    answers the first answer again, marked as a replay, and starts nothing; a replayed quota
    refusal's Retry-After is the time left from the replay to ``resets_at`` (0 once passed),
    never the first answer's figure again. (Outside that window, or for another account, it
    is a new write and nothing is asserted here.)"""
    if user_id != first.user_id or now - first.sent_at >= KEY_KEPT_FOR or first.status >= 500:
        return []
    problems = []
    if (status, body) != (first.status, first.body):
        problems.append(f"retry answered {status}, not the first answer {first.status}")
    if not replayed:
        problems.append("retry not marked Idempotent-Replayed")
    if sessions_after != sessions_before:
        problems.append(f"retry changed the session count {sessions_before} -> {sessions_after}")
    resets_at = json.loads(first.body).get("resets_at") if first.status == 429 else None
    if resets_at is not None:
        left = max(0, math.ceil((datetime.fromisoformat(resets_at) - now).total_seconds()))
        # the first answer's figure is whole seconds (at least 1): a second either way
        if retry_after is None or not retry_after.isdigit() \
                or abs(int(retry_after) - left) > 1:
            problems.append(f"replayed Retry-After {retry_after!r}, {left} s left to {resets_at}")
    return problems


# ---- a tier chosen whose payment has not arrived --------------------------------------------
def refusal_status(awaiting: str | None, allowed_by) -> int:
    """What a use the tier in force refuses answers (a session on a package above it, a
    download licence it does not allow): 402 ``payment_required`` when the tier chosen and
    not paid yet (``awaiting``: the checkout's tier of an ``incomplete`` subscription, waiting
    for payment) would allow it (``allowed_by(tier)``), else 403."""
    return 402 if awaiting is not None and allowed_by(awaiting) else 403


# ---- streaks and freezes -----------------------------------------------------------------------
FREEZE_EVERY_DAYS = 7
MAX_FREEZES = 2


@dataclass(frozen=True)
class StreakFigures:
    current: int
    longest: int
    freezes_available: int
    freeze_days: list[date]


def streak_figures(rows: list[SessionRow], today: date) -> StreakFigures:
    """Streaks with freezes, walking the calendar one day at a time (API.md "Streak freezes").

    A streak day has a completed session that counts. Each 7th streak day of a streak earns a
    freeze (at most 2 banked); one missed day between two streak days spends one and keeps the
    streak, without adding to it; two missed days end it, and its freezes with it. Today
    without a session breaks nothing yet: yesterday missed spends a freeze now."""
    streak_days = {r.local_day for r in rows if r.completed and r.counts_toward_quota
                   and r.listened_seconds >= COUNTS_FROM_SECONDS and r.local_day <= today}
    length = banked = longest = missed = 0
    freeze_days: list[date] = []
    day = min(streak_days, default=today)
    while day < today or (day == today and day in streak_days):
        if day in streak_days:
            if missed == 1 and banked and length:
                banked -= 1
                freeze_days.append(day - timedelta(days=1))
            elif missed:
                length = banked = 0
            missed = 0
            length += 1
            if length % FREEZE_EVERY_DAYS == 0:
                banked = min(MAX_FREEZES, banked + 1)
            longest = max(longest, length)
        else:
            missed += 1
        day += timedelta(days=1)
    if missed == 0:
        return StreakFigures(length, longest, banked, freeze_days)
    if missed == 1 and banked:
        return StreakFigures(length, longest, banked - 1,
                             [*freeze_days, today - timedelta(days=1)])
    return StreakFigures(0, longest, 0, freeze_days)


# ---- reminders ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReminderRow:
    """A claimed reminder: the user day it is for, when it was claimed, and the reminder time
    the user had asked for then (minutes after midnight; None: not known)."""

    local_day: date
    claimed_at: datetime
    remind_minute: int | None = None


def first_reading(wall: datetime, tz: str) -> datetime:
    """The first instant at which the clock of ``tz`` reads ``wall`` (naive) or later: the
    first of two readings when a fall-back repeats it, the end of the jump when a
    spring-forward skips it."""
    zone = ZoneInfo(tz)
    moment = min(wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1))
    while moment.astimezone(zone).replace(tzinfo=None) < wall:  # inside a jump: to its end
        moment += timedelta(minutes=1)
    return moment


def reminder_violations(reminders: list[ReminderRow], rows: list[SessionRow],
                        days: DaySettings, catch_up_minutes: int = 60,
                        uploaded_at: dict[int, datetime] | None = None) -> list[str]:
    """At most one reminder per user day, for the user day in force when it was claimed, at
    the reminder time by the user's wall clock (or within the catch-up hour after it; a time
    a spring-forward skips: within the hour after the jump, for the day it belongs to even
    when that day ended inside the jump), and never once a session that counts had started
    that day and was known to the server: one played offline is known from its upload
    (``uploaded_at``; one uploaded at the claim's instant is taken as after it)."""
    uploaded_at = uploaded_at or {}
    problems = []
    claimed = [r.local_day for r in reminders]
    if len(claimed) != len(set(claimed)):
        problems.append(f"two reminders on one day: {sorted(claimed)}")
    for reminder in reminders:
        tz, hour = days.at(reminder.claimed_at)
        wall = reminder.claimed_at.astimezone(ZoneInfo(tz))
        remind_minute = reminder.remind_minute  # a later change of time does not move it
        skipped = False
        if remind_minute is not None:
            at = datetime.combine(reminder.local_day, time()) + timedelta(
                days=remind_minute < hour * 60, minutes=remind_minute)
            first = first_reading(at, tz)
            skipped = first.astimezone(ZoneInfo(tz)).replace(tzinfo=None) != at
            since_day_start = (wall.hour * 60 + wall.minute - hour * 60) % 1440
            late = since_day_start - (remind_minute - hour * 60) % 1440
            if not (0 <= late < catch_up_minutes or first <= reminder.claimed_at
                    < first + timedelta(minutes=catch_up_minutes)):
                problems.append(f"reminder at {wall:%H:%M} for {remind_minute // 60:02d}:00")
        if reminder.local_day != days.day_of(reminder.claimed_at) and not skipped:
            problems.append(f"reminder for {reminder.local_day} claimed on another day")
        for row in rows:
            known_from = uploaded_at.get(row.id, row.started_at) if row.synced \
                else row.started_at
            if (row.counts_toward_quota and row.local_day == reminder.local_day
                    and row.started_at < reminder.claimed_at
                    and known_from < reminder.claimed_at):
                problems.append(f"reminder on {reminder.local_day} after listening")
    return problems
OUTCOME_MIN_LISTENED_SECONDS = 60


def mood_outcomes(rows: list[SessionRow]) -> dict[int, tuple[int, int]]:
    """{package_id: (sessions, sum of mood_after - mood_before)} over the sessions that count
    in mood outcomes and recommendations: not a refunded tap, at least a minute listened, both
    moods given."""
    sums: dict[int, tuple[int, int]] = {}
    for row in rows:
        if (row.counts_toward_quota and row.listened_seconds >= OUTCOME_MIN_LISTENED_SECONDS
                and row.mood_before is not None and row.mood_after is not None):
            n, total = sums.get(row.package_id, (0, 0))
            sums[row.package_id] = (n + 1, total + row.mood_after - row.mood_before)
    return sums
