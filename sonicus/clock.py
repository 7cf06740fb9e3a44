"""The one clock and the user's-day arithmetic (timezone + day_start_hour)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, available_timezones

_VALID_ZONES: frozenset[str] | None = None


def now() -> datetime:
    return datetime.now(UTC)


def is_valid_timezone(name: str) -> bool:
    global _VALID_ZONES
    if _VALID_ZONES is None:
        _VALID_ZONES = frozenset(available_timezones())
    return name in _VALID_ZONES


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
