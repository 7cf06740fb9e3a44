"""The local clock of every time zone as the reminder scan reads it
(``services.reminder_claims``): its date and wall-clock minute, and a spring-forward within
the last ``CATCH_UP_MINUTES`` (how many minutes it skipped, and from which local minute),
computed once per zone and scan.

A reminder time a spring-forward skips is due from the first minute after the jump, for the
user day it belongs to (``skipped_reminder_day``), even when that day ended inside the jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from .. import clock

CATCH_UP_MINUTES = 60  # a reminder missed (worker down, quiet hours) is sent this long after


@dataclass(frozen=True)
class ZoneClock:
    """A time zone's clock at a moment: its local date and wall-clock minute; ``skipped``:
    how many wall-clock minutes it jumped forward (a spring-forward) within the last
    ``CATCH_UP_MINUTES``, 0 without a jump; ``jump_date``/``jump_minute``: the first local
    minute that jump skipped (New York on 2026-03-08: 02:00, 60 minutes)."""

    local_date: date
    wall_minute: int
    skipped: int = 0
    jump_date: date | None = None
    jump_minute: int = 0


def zone_clock(zone: ZoneInfo, now: datetime) -> ZoneClock:
    local = now.astimezone(zone)
    skipped = skipped_minutes(zone, now)
    if not skipped:
        return ZoneClock(local.date(), local.hour * 60 + local.minute)
    offset, minute = local.utcoffset(), timedelta(minutes=1)
    jumped_at = now.replace(second=0, microsecond=0)  # transitions fall on whole minutes
    for _ in range(CATCH_UP_MINUTES):
        if (jumped_at - minute).astimezone(zone).utcoffset() != offset:
            break
        jumped_at -= minute
    first_skipped = (jumped_at - minute).astimezone(zone) + minute  # wall clock: 01:59 -> 02:00
    return ZoneClock(local.date(), local.hour * 60 + local.minute, skipped,
                     first_skipped.date(), first_skipped.hour * 60 + first_skipped.minute)


def skipped_minutes(zone: ZoneInfo, now: datetime) -> int:
    """How many wall-clock minutes the zone's clock jumped forward (a spring-forward) within
    the last ``CATCH_UP_MINUTES``: the catch-up lasts that much longer in wall-clock minutes,
    so a reminder time the jump skipped is still sent at the first minute after it."""
    before = (now - timedelta(minutes=CATCH_UP_MINUTES)).astimezone(zone).utcoffset()
    jump = now.astimezone(zone).utcoffset() - before
    return max(0, int(jump.total_seconds()) // 60)


def skipped_reminder_day(zone_clock: ZoneClock, day_start_hour: int,
                         at_minute: int) -> date | None:
    """When the reminder time is one the zone's jump within the last ``CATCH_UP_MINUTES``
    skipped: the user day it belongs to (it is due from the first minute after the jump, for
    that day). That day may be over by then: a day that starts at 03:00 ends inside New
    York's 02:00 -> 03:00 jump, and its 02:30 reminder still goes out, at 03:00."""
    into_jump = (at_minute - zone_clock.jump_minute) % 1440
    if into_jump >= zone_clock.skipped:
        return None
    wall = zone_clock.jump_minute + into_jump  # past 1440: the next date
    day = zone_clock.jump_date + timedelta(days=wall // 1440)
    return day - timedelta(days=1) if wall % 1440 < day_start_hour * 60 else day


@lru_cache(maxsize=1)
def _zone_names() -> tuple[str, ...]:
    """The names a user's ``timezone`` may take, in order."""
    return tuple(sorted(clock.valid_timezones()))


def zone_clocks(now: datetime) -> dict:
    """Every IANA time zone's ``zone_clock`` at ``now`` (the parameters of ``CLAIM_DUE_SQL``):
    about 1,800 conversions, a few milliseconds."""
    names, dates, minutes, skips, jump_dates, jump_minutes = [], [], [], [], [], []
    for name in _zone_names():
        local = zone_clock(ZoneInfo(name), now)
        names.append(name)
        dates.append(local.local_date)
        minutes.append(local.wall_minute)
        skips.append(local.skipped)
        jump_dates.append(local.jump_date or local.local_date)
        jump_minutes.append(local.jump_minute)
    return {"zone_names": names, "zone_dates": dates, "zone_minutes": minutes,
            "zone_skips": skips, "zone_jump_dates": jump_dates,
            "zone_jump_minutes": jump_minutes}
