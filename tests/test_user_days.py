"""The user's own day: time zones, late day starts and DST, with fixed clocks."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sonicus import clock
from sonicus.api_errors import ApiError
from sonicus.services import listening, quota


def _use_up(user, package_id, now, count=3):
    for i in range(count):
        listening.start_session(user.id, package_id, now=now - timedelta(minutes=count - i))


def _refused_until(user, package_id, now) -> datetime:
    with pytest.raises(ApiError) as caught:
        listening.start_session(user.id, package_id, now=now)
    assert caught.value.code == 429
    assert caught.value.data["code"] == "daily_session_limit_reached"
    return datetime.fromisoformat(caught.value.data["extra"]["resets_at"])


def test_auckland_and_los_angeles_reset_at_their_own_midnight(db_session, make_user, make_package):
    package_id = make_package("rain").id
    kiwi = make_user("kiwi@example.com", timezone="Pacific/Auckland")
    angeleno = make_user("angeleno@example.com", timezone="America/Los_Angeles")
    now = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)  # 23:00 in Auckland, 02:00 in LA
    _use_up(kiwi, package_id, now)
    _use_up(angeleno, package_id, now)

    kiwi_reset = _refused_until(kiwi, package_id, now)
    la_reset = _refused_until(angeleno, package_id, now)
    assert kiwi_reset == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)  # 00:00 NZDT (UTC+13)
    assert la_reset == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)  # 00:00 PST (UTC-8)

    # one second before: still refused; at the reset: a fresh quota
    _refused_until(kiwi, package_id, kiwi_reset - timedelta(seconds=1))
    assert listening.start_session(kiwi.id, package_id, now=kiwi_reset).local_day == \
        date(2026, 11, 26)
    # the Angeleno is still on the same day then
    assert _refused_until(angeleno, package_id, kiwi_reset) == la_reset
    assert listening.start_session(angeleno.id, package_id, now=la_reset).local_day == \
        date(2026, 11, 26)
    usage = quota.usage_today(kiwi, "starter", now=kiwi_reset)
    assert usage.sessions_today == 1 and usage.sessions_remaining == 2


def test_night_owl_keeps_half_past_one_on_the_previous_day(db_session, make_user, make_package):
    package_id = make_package("rain").id
    owl = make_user("owl@example.com", timezone="Europe/Berlin", day_start_hour=4)
    evening = datetime(2026, 6, 1, 20, 0, tzinfo=UTC)  # 22:00 CEST on June 1
    _use_up(owl, package_id, evening)
    late = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)  # 01:30 CEST on June 2
    assert clock.local_day(late, "Europe/Berlin", 4) == date(2026, 6, 1)
    reset = _refused_until(owl, package_id, late)
    assert reset == datetime(2026, 6, 2, 2, 0, tzinfo=UTC)  # 04:00 CEST
    session = listening.start_session(owl.id, package_id, now=reset)
    assert session.local_day == date(2026, 6, 2)

    # the same late moment for someone whose day starts at midnight is already June 2
    lark = make_user("lark@example.com", timezone="Europe/Berlin")
    assert listening.start_session(lark.id, package_id, now=late).local_day == date(2026, 6, 2)


@pytest.mark.parametrize("moment, expected_day, expected_reset", [
    # America/Los_Angeles springs forward on 2026-03-08 02:00 (a 23-hour day)
    (datetime(2026, 3, 7, 20, 0, tzinfo=UTC), date(2026, 3, 7),
     datetime(2026, 3, 8, 8, 0, tzinfo=UTC)),
    (datetime(2026, 3, 8, 12, 0, tzinfo=UTC), date(2026, 3, 8),
     datetime(2026, 3, 9, 7, 0, tzinfo=UTC)),
    # ... and falls back on 2026-11-01 02:00 (a 25-hour day)
    (datetime(2026, 10, 31, 20, 0, tzinfo=UTC), date(2026, 10, 31),
     datetime(2026, 11, 1, 7, 0, tzinfo=UTC)),
    (datetime(2026, 11, 1, 9, 30, tzinfo=UTC), date(2026, 11, 1),  # 01:30 PST, second time
     datetime(2026, 11, 2, 8, 0, tzinfo=UTC)),
])
def test_los_angeles_dst_days(moment, expected_day, expected_reset):
    assert clock.local_day(moment, "America/Los_Angeles", 0) == expected_day
    assert clock.next_day_start(moment, "America/Los_Angeles", 0) == expected_reset


def test_day_start_hour_inside_a_dst_gap_and_overlap():
    # 02:00 does not exist in Los Angeles on 2026-03-08: that day starts at 03:00 PDT
    assert clock.day_start(date(2026, 3, 8), "America/Los_Angeles", 2) == \
        datetime(2026, 3, 8, 10, 0, tzinfo=UTC)
    # 01:00 happens twice in Los Angeles on 2026-11-01: the day starts at the first one
    assert clock.day_start(date(2026, 11, 1), "America/Los_Angeles", 1) == \
        datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    # Berlin: 2026-03-29 02:00 -> 03:00 and 2026-10-25 03:00 -> 02:00
    assert clock.day_start(date(2026, 3, 29), "Europe/Berlin", 2) == \
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert clock.next_day_start(datetime(2026, 10, 24, 12, 0, tzinfo=UTC), "Europe/Berlin", 3) \
        == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Europe/Berlin", "Pacific/Auckland",
                                  "UTC"])
@pytest.mark.parametrize("start_hour", range(7))
def test_days_are_contiguous_across_dst(zone, start_hour):
    """Every moment lies in exactly one day: day_start(day) <= moment < next_day_start, and
    days follow each other without gaps, through all of the year's DST changes."""
    windows = [datetime(2026, 3, 6, tzinfo=UTC), datetime(2026, 3, 27, tzinfo=UTC),
               datetime(2026, 4, 3, tzinfo=UTC), datetime(2026, 9, 25, tzinfo=UTC),
               datetime(2026, 10, 23, tzinfo=UTC), datetime(2026, 10, 30, tzinfo=UTC)]
    for window in windows:
        previous = None
        for step in range(4 * 24 * 4):  # four days, every 15 minutes
            moment = window + timedelta(minutes=15 * step)
            day = clock.local_day(moment, zone, start_hour)
            start = clock.day_start(day, zone, start_hour)
            end = clock.next_day_start(moment, zone, start_hour)
            assert start <= moment < end, (zone, start_hour, moment)
            assert timedelta(hours=22) <= end - start <= timedelta(hours=26)
            if previous is not None:
                assert day in (previous, previous + timedelta(days=1))
            previous = day


def test_429_resets_at_in_the_api_follows_the_profile(client, auth, db_session, make_user,
                                                      make_package):
    package_id = make_package("rain").id
    make_user("api@example.com", timezone="Pacific/Auckland", day_start_hour=3)
    headers = auth("api@example.com")
    for _ in range(3):
        assert client.post("/api/user/sessions", json={"package_id": package_id},
                           headers=headers).status_code == 201
    before = clock.now()
    res = client.post("/api/user/sessions", json={"package_id": package_id}, headers=headers)
    assert res.status_code == 429
    resets_at = datetime.fromisoformat(res.json["resets_at"])
    assert resets_at == clock.next_day_start(before, "Pacific/Auckland", 3)
