"""The one clock and the user's-day arithmetic (timezone + day_start_hour, and which of a
user's day settings are in force at a given instant)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

_VALID_ZONES: frozenset[str] | None = None
# Names in the tz database folder that are not zones but the host's own setting: the day they
# give would depend on the machine that computes it.
HOST_ZONE_NAMES = frozenset({"localtime"})


def now() -> datetime:
    return datetime.now(UTC)


def valid_timezones() -> frozenset[str]:
    """THE names a user's ``timezone`` may take: the IANA zones this machine knows."""
    global _VALID_ZONES
    if _VALID_ZONES is None:
        _VALID_ZONES = frozenset(available_timezones()) - HOST_ZONE_NAMES
    return _VALID_ZONES


def is_valid_timezone(name: str) -> bool:
    return name in valid_timezones()


def local_day(moment: datetime, tz_name: str, day_start_hour: int) -> date:
    """The user's day that ``moment`` falls on: a day rolls over at ``day_start_hour`` local."""
    local = moment.astimezone(ZoneInfo(tz_name))
    return (local - timedelta(hours=day_start_hour)).date()


def day_start(day: date, tz_name: str, day_start_hour: int) -> datetime:
    """The UTC instant at which the user's ``day`` begins."""
    zone = ZoneInfo(tz_name)
    naive = datetime.combine(day, time(hour=day_start_hour))
    aware = naive.replace(tzinfo=zone)
    # A start hour skipped by a DST jump resolves forward via fold semantics of zoneinfo;
    # round-tripping through UTC gives the real instant.
    return aware.astimezone(UTC)


def day_start_after(day: date, tz_name: str, day_start_hour: int) -> datetime:
    """When the user's ``day`` ends: the start of the next one."""
    return day_start(day + timedelta(days=1), tz_name, day_start_hour)


def next_day_start(moment: datetime, tz_name: str, day_start_hour: int) -> datetime:
    """When the user's current day ends (their quota resets)."""
    return day_start_after(local_day(moment, tz_name, day_start_hour), tz_name, day_start_hour)


# ---- a user's day settings over time -----------------------------------------------------------
# A user (``models.User``) or a caller (``caller.Caller``) carries the day settings it shows
# (``timezone``, ``day_start_hour``: the newest the user chose), the settings in force before
# them (``prior_timezone``, ``prior_day_start_hour``) and the instant the shown ones take over
# (``day_settings_effective_at``; None: the shown ones are in force). A change takes effect at
# the next boundary of the user's day as it was before the change (``User.change_day_settings``).

@dataclass(frozen=True)
class DaySettings:
    timezone: str
    day_start_hour: int


@dataclass(frozen=True)
class UserDay:
    """The user's day that a moment falls on, and when the next one begins (their quota
    resets then)."""

    day: date
    ends_at: datetime


# Day settings that were replaced are remembered (``earlier_day_settings``) for good, not for a
# while: a past session's local hour is read in the zone in force when it started (the recaps'
# ``listening_hours``, a year recap read in January included; the smart reminder time) and a
# date a move east skipped stays no missed day in every past streak. Forgetting the zone after 90
# days put a traveller's spring mornings in the year recap at the hours of the zone they moved to
# later. At most one change a user day is kept (a second one before it takes effect replaces
# it), and the newest ``DAY_SETTINGS_KEPT`` at most: over two years of daily moves.
DAY_SETTINGS_KEPT = 800


def day_settings_at(person, moment: datetime) -> DaySettings:
    """THE day settings of ``person`` in force at ``moment``: every computation of a user's
    day (quota, the day stored on a session, analytics, the usage shown) goes through here.
    Before the prior settings, the earlier ones remembered (``earlier_day_settings``)."""
    earlier_ones = person.earlier_day_settings or ()
    # (most moments are after the last of them: one look, not one per change remembered)
    if earlier_ones and moment < datetime.fromisoformat(earlier_ones[-1]["until"]):
        for earlier in earlier_ones:
            if moment < datetime.fromisoformat(earlier["until"]):
                return DaySettings(earlier["timezone"], earlier["day_start_hour"])
    effective_at = person.day_settings_effective_at
    if (effective_at is not None and moment < effective_at
            and person.prior_timezone is not None and person.prior_day_start_hour is not None):
        return DaySettings(person.prior_timezone, person.prior_day_start_hour)
    return DaySettings(person.timezone, person.day_start_hour)


def remembered_day_settings(person) -> list[dict]:
    """``earlier_day_settings`` as a new change (none pending) replaces the prior settings:
    the prior ones, which ended at ``day_settings_effective_at``, join the earlier ones; only
    the newest ``DAY_SETTINGS_KEPT`` are kept."""
    return [{"until": ended.astimezone(UTC).isoformat(), "timezone": settings.timezone,
             "day_start_hour": settings.day_start_hour}
            for ended, settings in _settings_changes(person)][-DAY_SETTINGS_KEPT:]


def pending_day_settings_at(person, moment: datetime) -> datetime | None:
    """When the shown day settings take effect, if that is still to come at ``moment``."""
    effective_at = person.day_settings_effective_at
    return effective_at if effective_at is not None and moment < effective_at else None


def _settings_changes(person) -> list[tuple[datetime, DaySettings]]:
    """Each remembered change of day settings: (its instant, the settings it ended), oldest
    first (the earlier ones, then the prior ones)."""
    changes = [(datetime.fromisoformat(earlier["until"]),
                DaySettings(earlier["timezone"], earlier["day_start_hour"]))
               for earlier in person.earlier_day_settings or ()]
    if (person.day_settings_effective_at is not None and person.prior_timezone is not None
            and person.prior_day_start_hour is not None):
        changes.append((person.day_settings_effective_at,
                        DaySettings(person.prior_timezone, person.prior_day_start_hour)))
    return changes


def dates_never_begun(person) -> frozenset[date]:
    """The dates a change of day settings skipped: a move east can end the user's day where
    the new settings are already a date or more later (Pacific/Honolulu to Pacific/Kiritimati:
    1 June ends when it is 3 June there), so the dates between were never the user's day
    (streaks do not count them as missed). Of every change remembered."""
    skipped: set[date] = set()
    for at, before in _settings_changes(person):
        after = day_settings_at(person, at)
        last_before = local_day(at - timedelta(microseconds=1), before.timezone,
                                before.day_start_hour)
        first_after = local_day(at, after.timezone, after.day_start_hour)
        skipped.update(last_before + timedelta(days=n)
                       for n in range(1, (first_after - last_before).days))
    return frozenset(skipped)


def user_day(person, moment: datetime) -> UserDay:
    """The user's day at ``moment`` under the settings then in force, and when it ends.

    A day ends when a later day begins. Where a pending change takes over at the end of this
    day and its settings put that instant on this same date (a move west), the day goes on
    under the new settings until they reach a later date: a date never begins twice, so its
    quota is never given again. (Only a move of more than a day, e.g. Pacific/Kiritimati to
    Etc/GMT+12, lands on an earlier date; that date keeps what was left of its quota, and
    ``ends_at`` is when a date after this one begins.)
    """
    settings = day_settings_at(person, moment)
    day = local_day(moment, settings.timezone, settings.day_start_hour)
    ends_at = day_start_after(day, settings.timezone, settings.day_start_hour)
    pending = pending_day_settings_at(person, moment)
    if pending is not None:
        ends_at = min(ends_at, pending)
    for _ in range(4):  # a move west by up to 26 hours and 6 start hours repeats <= 2 days
        following = day_settings_at(person, ends_at)
        next_day = local_day(ends_at, following.timezone, following.day_start_hour)
        if next_day > day:
            break
        ends_at = day_start_after(next_day, following.timezone, following.day_start_hour)
    return UserDay(day, ends_at)
