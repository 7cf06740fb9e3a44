"""A small, pure model of Sonicus's rules, written from the contract (API.md) and not from the
code: the state machine in test_rules_state_machine.py holds the API against it.

Nothing here imports the app. Times are aware UTC datetimes.
"""

from __future__ import annotations

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


# ---- the subscription, as its history tells it --------------------------------------------

ACTIVE, TRIALING, INCOMPLETE, PAST_DUE = "active", "trialing", "incomplete", "past_due"
# Events after which the tier in force is the event's to_tier.
TIER_SETTING = {"signed_up", "tier_chosen", "trial_started", "trial_changed", "trial_converted",
                "trial_ended", "activated", "renewed", "upgraded", "downgraded", "canceled",
                "grace_ended", "lapsed", "complimentary_grant", "plan_changed"}
STATUS_AFTER = {"trial_started": TRIALING, "trial_changed": TRIALING,
                "trial_converted": ACTIVE, "trial_ended": ACTIVE, "activated": ACTIVE,
                "renewed": ACTIVE, "upgraded": ACTIVE, "downgraded": ACTIVE, "canceled": ACTIVE,
                "grace_ended": ACTIVE, "lapsed": ACTIVE, "complimentary_grant": ACTIVE,
                "checkout_abandoned": None}
PENDING_CLEARED = {"resumed", "trial_started", "trial_converted", "trial_ended", "activated",
                   "upgraded", "downgraded", "canceled", "grace_ended", "lapsed",
                   "complimentary_grant", "plan_changed"}


@dataclass
class Derived:
    tier: str = "starter"
    status: str = ACTIVE
    pending_tier: str | None = None


def derive_from_events(events: list[dict]) -> Derived:
    """Fold the subscription's history (oldest first) into the tier in force, its status and
    the change pending at the end of the period."""
    state = Derived()
    for event in events:
        kind, to_tier = event["type"], event["to_tier"]
        if kind in TIER_SETTING and to_tier is not None:
            state.tier = to_tier
        if kind in STATUS_AFTER and STATUS_AFTER[kind] is not None:
            state.status = STATUS_AFTER[kind]
        elif kind == "checkout_started" and state.tier == "starter" and state.status == ACTIVE:
            state.status = INCOMPLETE
        elif kind == "checkout_abandoned" and state.status == INCOMPLETE:
            state.status = ACTIVE
        elif kind == "payment_failed" and (event.get("details") or {}).get("grace_ends_at"):
            state.status = PAST_DUE
        if kind in PENDING_CLEARED:
            state.pending_tier = None
        elif kind == "cancel_scheduled":
            state.pending_tier = "starter"
        elif kind == "downgrade_scheduled":
            state.pending_tier = to_tier
    return state


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
