"""Changing the day never returns quota: a change of timezone or day_start_hour takes effect at
the next boundary of the user's day as it was before the change; until then the old day stands."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from sonicus import clock
from sonicus.api_errors import ApiError
from sonicus.caller_cache import get_caller_cache
from sonicus.models import ListeningSession
from sonicus.services import listening, users


def _start(client, headers, package_id):
    return client.post("/api/user/sessions", json={"package_id": package_id}, headers=headers)


def _put(client, headers, **changes):
    res = client.put("/api/user/profile", json=changes, headers=headers)
    assert res.status_code == 200, res.json
    return res.json["data"]


def _counted_days(db_session, user_id) -> Counter:
    db_session.expire_all()
    return Counter(db_session.execute(
        select(ListeningSession.local_day).where(ListeningSession.user_id == user_id,
                                                 ListeningSession.counts_toward_quota)
    ).scalars())


def test_changing_the_timezone_never_returns_quota(client, auth, db_session, make_user,
                                                   make_package, set_clock):
    """The black-box attack: a starter switching between UTC and Etc/GMT+12 (twelve hours
    apart, so one of them is always on another date) to start a session after every switch."""
    package_id = make_package("rain").id
    user = make_user("zones@example.com")  # starter: 3 a day; UTC, day starts 00:00
    headers = auth("zones@example.com")
    morning = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    boundary = datetime(2026, 6, 11, 0, 0, tzinfo=UTC)  # the end of June 10 in UTC

    statuses = []
    for step in range(12):  # an hour of switching, a start after every switch
        now = set_clock(morning + timedelta(minutes=5 * step))
        zone = "Etc/GMT+12" if step % 2 == 0 else "UTC"
        profile = _put(client, headers, timezone=zone)
        assert profile["timezone"] == zone  # shown at once ...
        if zone == "UTC":  # ... and back to the settings in force cancels the change
            assert profile["day_settings_effective_at"] is None
        else:
            assert datetime.fromisoformat(profile["day_settings_effective_at"]) == boundary
        res = _start(client, headers, package_id)
        statuses.append(res.status_code)
        if res.status_code == 429:
            assert datetime.fromisoformat(res.json["resets_at"]) > now
    assert statuses == [201] * 3 + [429] * 9
    assert _counted_days(db_session, user.id) == {date(2026, 6, 10): 3}

    # One more switch, left pending. At the boundary Etc/GMT+12 is in force, and there it is
    # still June 10 (noon): the same day goes on, with its quota used, until its midnight.
    _put(client, headers, timezone="Etc/GMT+12")
    set_clock(boundary - timedelta(seconds=1))
    refused = _start(client, headers, package_id)
    assert refused.status_code == 429
    west_midnight = datetime(2026, 6, 11, 12, 0, tzinfo=UTC)  # June 11 00:00 at UTC-12
    assert datetime.fromisoformat(refused.json["resets_at"]) == west_midnight
    set_clock(boundary)
    assert _start(client, headers, package_id).status_code == 429
    profile = client.get("/api/user/profile", headers=headers).json["data"]
    assert profile["timezone"] == "Etc/GMT+12" and profile["day_settings_effective_at"] is None
    set_clock(west_midnight)
    res = _start(client, headers, package_id)
    assert res.status_code == 201 and res.json["data"]["local_day"] == "2026-06-11"


def test_changing_the_day_start_hour_never_returns_quota(client, auth, db_session, make_user,
                                                         make_package, set_clock):
    """At 02:00 a day that starts at 06:00 is still yesterday, whose quota is unused."""
    package_id = make_package("rain").id
    user = make_user("owl@example.com")  # UTC, day starts 00:00
    headers = auth("owl@example.com")
    night = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)

    statuses = []
    for step in range(8):
        set_clock(night + timedelta(minutes=5 * step))
        _put(client, headers, day_start_hour=6 if step % 2 == 0 else 0)
        statuses.append(_start(client, headers, package_id).status_code)
    assert statuses == [201] * 3 + [429] * 5
    assert _counted_days(db_session, user.id) == {date(2026, 6, 10): 3}

    # With 06:00 pending, midnight hands over to a day that is still June 10 until 06:00.
    _put(client, headers, day_start_hour=6)
    set_clock(datetime(2026, 6, 11, 0, 0, tzinfo=UTC))
    refused = _start(client, headers, package_id)
    assert refused.status_code == 429
    assert datetime.fromisoformat(refused.json["resets_at"]) == \
        datetime(2026, 6, 11, 6, 0, tzinfo=UTC)
    set_clock(datetime(2026, 6, 11, 6, 0, tzinfo=UTC))
    assert _start(client, headers, package_id).json["data"]["local_day"] == "2026-06-11"


def test_new_day_settings_take_effect_at_the_old_days_boundary(app, client, auth, redis_client,
                                                               make_user, make_package,
                                                               make_session, set_clock):
    package_id = make_package("rain").id
    user = make_user("flyer@example.com", timezone="America/New_York")
    headers = auth("flyer@example.com")
    set_clock(datetime(2026, 6, 10, 20, 0, tzinfo=UTC))  # 16:00 in New York
    ny_midnight = datetime(2026, 6, 11, 4, 0, tzinfo=UTC)
    berlin_midnight = datetime(2026, 6, 11, 22, 0, tzinfo=UTC)
    for _ in range(3):
        assert _start(client, headers, package_id).status_code == 201
    make_session(user, package_id, date(2026, 6, 9))  # yesterday in New York: a streak

    profile = _put(client, headers, timezone="Europe/Berlin", day_start_hour=1)
    assert (profile["timezone"], profile["day_start_hour"]) == ("Europe/Berlin", 1)
    assert datetime.fromisoformat(profile["day_settings_effective_at"]) == ny_midnight
    shown = client.get("/api/user/profile", headers=headers).json["data"]
    assert shown["day_settings_effective_at"] == profile["day_settings_effective_at"]

    # Until New York's midnight the New York day stands: quota, usage and analytics.
    set_clock(ny_midnight - timedelta(seconds=1))  # 05:59:59 in Berlin, June 11
    refused = _start(client, headers, package_id)
    assert refused.status_code == 429
    assert datetime.fromisoformat(refused.json["resets_at"]) == ny_midnight
    usage = client.get("/api/user/subscription", headers=headers).json["data"]["usage"]
    assert usage == {"sessions_today": 3, "sessions_remaining": 0,
                     "resets_at": ny_midnight.isoformat()}
    stats = client.get("/api/user/analytics", headers=headers).json["data"]
    assert stats["day"] == "2026-06-10" and stats["sessions_today"] == 3
    assert stats["daily_minutes"][-1]["date"] == "2026-06-10"
    assert stats["current_streak_days"] == 1  # June 9, and June 10 is not over
    # cached only until the boundary (Redis counts real seconds: here, one to go)
    assert 0 < redis_client.ttl(f"sonicus:cache:analytics:{user.id}") <= 2
    redis_client.delete(f"sonicus:cache:analytics:{user.id}")

    # At the boundary Berlin's day (starting 01:00) is in force: June 11, a fresh quota.
    set_clock(ny_midnight)
    res = _start(client, headers, package_id)
    assert res.status_code == 201 and res.json["data"]["local_day"] == "2026-06-11"
    usage = client.get("/api/user/subscription", headers=headers).json["data"]["usage"]
    assert usage["sessions_today"] == 1
    assert datetime.fromisoformat(usage["resets_at"]) == berlin_midnight + timedelta(hours=1)
    get_caller_cache(app).clear()  # the caller is kept 2 real seconds; the clock jumped hours
    profile = client.get("/api/user/profile", headers=headers).json["data"]
    assert profile["day_settings_effective_at"] is None
    stats = client.get("/api/user/analytics", headers=headers).json["data"]
    assert stats["day"] == "2026-06-11" and stats["sessions_today"] == 1
    assert stats["current_streak_days"] == 0  # June 10 passed without a completed session


def test_a_second_change_keeps_the_boundary_and_changing_back_cancels(client, auth, make_user,
                                                                      make_package, set_clock):
    package_id = make_package("rain").id
    make_user("fickle@example.com")  # UTC
    headers = auth("fickle@example.com")
    set_clock(datetime(2026, 6, 10, 10, 0, tzinfo=UTC))
    utc_midnight = datetime(2026, 6, 11, 0, 0, tzinfo=UTC).isoformat()

    assert _put(client, headers, timezone="Asia/Tokyo")["day_settings_effective_at"] == \
        utc_midnight
    set_clock(datetime(2026, 6, 10, 20, 0, tzinfo=UTC))  # already June 11 in Tokyo
    profile = _put(client, headers, timezone="America/Chicago", day_start_hour=3)
    assert profile["timezone"] == "America/Chicago"
    assert profile["day_settings_effective_at"] == utc_midnight  # the same boundary
    # ... and the same day in force: UTC's June 10
    res = _start(client, headers, package_id)
    assert res.json["data"]["local_day"] == "2026-06-10"

    profile = _put(client, headers, timezone="UTC", day_start_hour=0)
    assert profile["day_settings_effective_at"] is None
    set_clock(datetime(2026, 6, 11, 0, 30, tzinfo=UTC))
    assert _start(client, headers, package_id).json["data"]["local_day"] == "2026-06-11"

    # A change made after a boundary is measured from the day then in force.
    assert _put(client, headers, timezone="Asia/Tokyo")["day_settings_effective_at"] == \
        datetime(2026, 6, 12, 0, 0, tzinfo=UTC).isoformat()
    set_clock(datetime(2026, 6, 12, 0, 0, tzinfo=UTC))  # 09:00 on June 12 in Tokyo
    assert _put(client, headers, timezone="UTC")["day_settings_effective_at"] == \
        datetime(2026, 6, 12, 15, 0, tzinfo=UTC).isoformat()  # Tokyo's midnight


ZONES = ("UTC", "Etc/GMT+12", "Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kolkata",
         "Europe/Berlin")


class DayModel:
    """The rule as written, independent of the code: what is in force, what is pending."""

    def __init__(self):
        self.in_force = self.shown = ("UTC", 0)
        self.boundary = None

    def settle(self, now):
        if self.boundary is not None and now >= self.boundary:
            self.in_force, self.boundary = self.shown, None

    def change(self, wanted, now):
        self.settle(now)
        if wanted == self.shown:
            return
        if wanted == self.in_force:
            self.shown, self.boundary = wanted, None
            return
        if self.boundary is None:
            self.boundary = clock.next_day_start(now, *self.in_force)
        self.shown = wanted

    def day(self, now):
        self.settle(now)
        return clock.local_day(now, *self.in_force)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_sequence_of_changes_gives_a_day_more_than_its_quota(db_session, make_user,
                                                                make_package, seed):
    """The invariant: the counted starts of one user day, under the settings in force when
    that day began, never exceed the daily limit, whatever the user changes and when."""
    rng = random.Random(seed)
    package_id = make_package("rain").id
    user = make_user(f"random-{seed}@example.com")
    model = DayModel()
    now = datetime(2026, 3, 6, 0, 0, tzinfo=UTC)  # across the US spring DST change
    expected_days, granted = {}, 0
    for _ in range(220):
        now += timedelta(minutes=rng.choice((1, 7, 30, 95, 240)))
        action = rng.random()
        if action < 0.35:
            wanted = (rng.choice(ZONES), model.shown[1] if rng.random() < 0.5
                      else rng.randrange(7))
            users.update_profile(user.id, {"timezone": wanted[0],
                                           "day_start_hour": wanted[1]}, now=now)
            model.change(wanted, now)
        else:
            try:
                session = listening.start_session(user.id, package_id, now=now)
            except ApiError as refused:
                assert refused.code == 429
                continue
            granted += 1
            expected_days[session.id] = model.day(now)
            if rng.random() < 0.2:  # an accidental tap gives its quota back
                listening.complete_session(user.id, session.id, 5, False,
                                           now=now + timedelta(seconds=10))
    db_session.expire_all()
    sessions = db_session.execute(select(ListeningSession).where(
        ListeningSession.user_id == user.id)).scalars().all()
    assert {s.id: s.local_day for s in sessions} == expected_days
    counted = Counter(s.local_day for s in sessions if s.counts_toward_quota)
    assert max(counted.values()) <= 3
    assert granted >= 3 * 5  # the quota came back on later days: the check is not vacuous


def test_the_hosts_localtime_is_not_a_time_zone_a_user_can_choose(client, auth):
    """"localtime" is the server's own setting, not an IANA zone: each machine (web, worker,
    database) could give the user another day. A 422 naming the field, nothing changed."""
    headers = auth("host@example.com")
    res = client.put("/api/user/profile", json={"timezone": "localtime"}, headers=headers)
    assert res.status_code == 422, res.get_json()
    assert res.get_json()["errors"] == ["timezone: Not a valid IANA time zone."]
    assert client.get("/api/user/profile", headers=headers).get_json()["data"]["timezone"] \
        == "UTC"
