"""GET /api/user/recap: periods of the user's days, the figures, zeros, the cache, the job."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from sonicus import clock

LA, OWL_HOUR = "America/Los_Angeles", 4


def _recap(client, auth, email, **query):
    return client.get("/api/user/recap", query_string=query, headers=auth(email))


def test_an_empty_period_answers_zeros(client, auth, set_clock, make_user):
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    make_user("quiet@example.com")
    res = _recap(client, auth, "quiet@example.com", period="month", _="1764072000")
    assert res.status_code == 200, res.json  # (an unknown query parameter is ignored)
    assert res.json["data"] == {
        "period": "month", "from": "2026-11-01", "to": "2026-11-30", "minutes": 0.0,
        "sessions": 0, "completed_sessions": 0, "active_days": 0, "longest_streak": 0,
        "top_packages": [], "top_categories": [],
        "mood": {"avg_before": None, "avg_after": None, "avg_change": None,
                 "best_package_id": None},
        "listening_hours": [0.0] * 24,
        "previous": {"minutes": 0.0, "sessions": 0, "active_days": 0}}


@pytest.mark.parametrize("query, field", [
    ({"period": "fortnight"}, "period"),
    ({}, "period"),
    ({"period": "week", "date": "2026-02-30"}, "date"),
    ({"period": "week", "date": "yesterday"}, "date"),
    ({"period": "year", "date": "0001-01-01"}, "date"),
])
def test_bad_period_or_date_is_a_422_naming_the_field(client, auth, make_user, query, field):
    make_user("bad@example.com")
    res = _recap(client, auth, "bad@example.com", **query)
    assert res.status_code == 422, res.json
    assert res.json["code"] == "validation_error"
    assert any(e.startswith(f"{field}:") for e in res.json["errors"]), res.json["errors"]


def test_the_figures_of_a_week_and_the_week_before(client, auth, set_clock, make_user,
                                                   make_package, make_session):
    set_clock(datetime(2026, 11, 27, 18, tzinfo=UTC))  # Friday
    me = make_user("me@example.com").id
    other = make_user("other@example.com").id
    calm = make_package("calm-night", category="sleep").id
    deep = make_package("deep-work", category="focus").id
    monday = date(2026, 11, 23)
    make_session(me, calm, monday, minutes=20, mood_before=3, mood_after=7)
    make_session(me, calm, monday + timedelta(days=1), minutes=10, mood_before=5,
                 mood_after=6)
    make_session(me, deep, monday + timedelta(days=1), minutes=30, mood_before=4,
                 mood_after=4)
    make_session(me, deep, monday + timedelta(days=3), minutes=5, completed=False)
    make_session(me, deep, monday + timedelta(days=4), minutes=0.5)  # does not count
    make_session(me, calm, monday - timedelta(days=1), minutes=15)  # the Sunday before
    make_session(me, calm, monday - timedelta(days=3), minutes=15)
    make_session(me, calm, monday + timedelta(days=7), minutes=99)  # next week
    make_session(other, deep, monday, minutes=45, mood_before=1, mood_after=9)

    data = _recap(client, auth, "me@example.com", period="week").json["data"]
    assert (data["from"], data["to"]) == ("2026-11-23", "2026-11-29")
    assert data["minutes"] == 65.5 and data["sessions"] == 5
    assert data["completed_sessions"] == 3
    assert data["active_days"] == 3  # the half-minute session's day is not active
    assert data["longest_streak"] == 2
    assert data["top_packages"] == [
        {"package_id": deep, "title": "Deep Work", "minutes": 35.5},
        {"package_id": calm, "title": "Calm Night", "minutes": 30.0}]
    assert data["top_categories"] == [
        {"category": "focus", "sessions": 3, "minutes": 35.5},
        {"category": "sleep", "sessions": 2, "minutes": 30.0}]
    assert data["mood"] == {"avg_before": 4.0, "avg_after": 5.67, "avg_change": 1.67,
                            "best_package_id": calm}
    assert data["listening_hours"][12] == 65.5 and sum(data["listening_hours"]) == 65.5
    assert data["previous"] == {"minutes": 30.0, "sessions": 2, "active_days": 2}
    # the same week asked by any of its days
    assert _recap(client, auth, "me@example.com", period="week",
                  date="2026-11-29").json["data"] == data


def test_periods_follow_the_users_days(client, auth, set_clock, make_user, make_package,
                                       make_session):
    """Los Angeles, day starting at 04:00: a session at 02:30 on a Monday belongs to Sunday,
    to the week, month and year that Sunday is in; its hour is 02 local."""
    set_clock(datetime(2027, 1, 20, 20, tzinfo=UTC))
    owl = make_user("owl@example.com", timezone=LA, day_start_hour=OWL_HOUR).id
    rain = make_package("rain").id

    def listen(started_at, minutes):
        day = clock.local_day(started_at, LA, OWL_HOUR)
        make_session(owl, rain, day, started_at=started_at, minutes=minutes)
        return day

    # Monday 2026-11-30 02:30 PST: Sunday 29 November, week of the 23rd
    assert listen(datetime(2026, 11, 30, 10, 30, tzinfo=UTC), 10) == date(2026, 11, 29)
    # Monday 2026-11-30 04:30 PST: Monday, a new week, still November
    assert listen(datetime(2026, 11, 30, 12, 30, tzinfo=UTC), 20) == date(2026, 11, 30)
    # Tuesday 2026-12-01 03:00 PST: still Monday 30 November
    assert listen(datetime(2026, 12, 1, 11, 0, tzinfo=UTC), 40) == date(2026, 11, 30)
    # Friday 2027-01-01 03:59 PST: still 31 December 2026
    assert listen(datetime(2027, 1, 1, 11, 59, tzinfo=UTC), 5) == date(2026, 12, 31)
    # Friday 2027-01-01 04:00 PST: the new year
    assert listen(datetime(2027, 1, 1, 12, 0, tzinfo=UTC), 7) == date(2027, 1, 1)

    def recap(period, on):
        return _recap(client, auth, "owl@example.com", period=period, date=on).json["data"]

    week = recap("week", "2026-11-29")
    assert (week["from"], week["to"], week["minutes"]) == ("2026-11-23", "2026-11-29", 10.0)
    assert week["listening_hours"][2] == 10.0
    monday = recap("week", "2026-11-30")
    assert monday["minutes"] == 60.0 and monday["previous"]["minutes"] == 10.0
    assert monday["listening_hours"][4] == 20.0 and monday["listening_hours"][3] == 40.0
    november = recap("month", "2026-11-15")
    assert november["minutes"] == 70.0 and november["active_days"] == 2
    assert november["longest_streak"] == 2
    december = recap("month", "2026-12-01")
    assert (december["from"], december["to"]) == ("2026-12-01", "2026-12-31")
    assert december["minutes"] == 5.0 and december["previous"]["minutes"] == 70.0
    assert december["listening_hours"][3] == 5.0
    year = recap("year", "2026-06-01")
    assert (year["from"], year["to"], year["minutes"]) == ("2026-01-01", "2026-12-31", 75.0)
    assert year["longest_streak"] == 2
    new_year = recap("year", "2027-01-01")
    assert new_year["minutes"] == 7.0 and new_year["previous"]["minutes"] == 75.0
    # today (20 January 2027 in Los Angeles) by default
    assert _recap(client, auth, "owl@example.com", period="year").json["data"] == new_year


def test_hours_follow_the_time_zone_in_force_when_the_session_started(
        app, set_clock, make_user, make_package, make_session):
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services.recaps import compute_recap

    now = set_clock(datetime(2026, 7, 10, 12, tzinfo=UTC))
    user = make_user("mover@example.com", timezone="Asia/Kolkata")
    rain = make_package("rain").id
    # 06:50 UTC is 12:20 in Kolkata (UTC+5:30)
    make_session(user.id, rain, date(2026, 7, 10), started_at=now - timedelta(hours=5,
                                                                             minutes=10))
    with app.app_context():
        person = db.session.get(User, user.id)
        person.change_day_settings("Europe/Berlin", 0, now)  # in force from tomorrow on
        db.session.commit()
        # a session started after the change took effect: 10:00 UTC is 12:00 in Berlin
        make_session(user.id, rain, date(2026, 7, 12),
                     started_at=datetime(2026, 7, 12, 10, tzinfo=UTC), minutes=4)
        hours = compute_recap(user.id, "week", date(2026, 7, 10),
                              use_cache=False)["listening_hours"]
    assert hours[12] == 14.0 and sum(hours) == 14.0


def test_show_streaks_false_hides_the_longest_streak(client, auth, set_clock, make_user,
                                                     make_package, make_session):
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    me = make_user("me@example.com").id
    rain = make_package("rain").id
    for n in range(3):
        make_session(me, rain, date(2026, 11, 23) + timedelta(days=n))
    assert _recap(client, auth, "me@example.com",
                  period="week").json["data"]["longest_streak"] == 3
    res = client.put("/api/user/profile", json={"preferences": {"show_streaks": False}},
                     headers=auth("me@example.com"))
    assert res.status_code == 200, res.json
    assert _recap(client, auth, "me@example.com",
                  period="week").json["data"]["longest_streak"] is None


def test_cached_until_the_users_sessions_change(app, client, auth, set_clock, redis_client,
                                                make_user, make_package, make_session):
    """A past period is kept long, the current one briefly; a finished session forgets the
    periods it can touch, and older recaps stay cached."""
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    user = make_user("me@example.com")
    headers = auth("me@example.com")
    rain = make_package("rain").id
    make_session(user, rain, date(2026, 8, 3))
    make_session(user, rain, date(2026, 11, 23))
    week = _recap(client, auth, "me@example.com", period="week").json["data"]
    old = _recap(client, auth, "me@example.com", period="month", date="2026-08-01").json["data"]
    assert week["sessions"] == 1 and old["sessions"] == 1
    ttls = {key.decode().rsplit(":", 2)[-2]: redis_client.ttl(key)
            for key in redis_client.keys("sonicus:cache:recap:*")}
    assert 0 < ttls["week"] <= 300 and ttls["month"] > 300 * 24 * 3600

    session = client.post("/api/user/sessions", json={"package_id": rain}, headers=headers)
    assert session.status_code == 201, session.json
    done = client.post(f"/api/user/sessions/{session.json['data']['id']}/complete",
                       json={"listened_seconds": 0, "completed": True}, headers=headers)
    assert done.status_code == 200, done.json
    assert _recap(client, auth, "me@example.com", period="week").json["data"]["sessions"] == 2
    assert len(redis_client.keys("sonicus:cache:recap:*month:2026-08-01")) == 1


def test_periods_without_listening_are_answered_zeros_and_not_cached(
        client, auth, set_clock, redis_client, make_user, make_package, make_session):
    """Any date from 1970 to 9998 is a period of zeros when nobody listened then and the
    period before (the contract: zeros, not 404), but none of those is cached: asking for
    every year, month or week of eight thousand years no longer fills the cache with one
    recap each (a year each for the past ones). Periods with listening, or right after it,
    are cached as before."""
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    user = make_user("curious@example.com")
    rain = make_package("rain")
    make_session(user, rain, started_at=datetime(2026, 3, 2, 12, tzinfo=UTC), minutes=30)
    for query in ([{"period": "year", "date": f"{year}-06-01"}
                   for year in (1970, 1999, 2024, 2025, 2028, 5000, 9998)]
                  + [{"period": "month", "date": "3000-02-01"},
                     {"period": "week", "date": "9998-12-31"}]):
        res = _recap(client, auth, "curious@example.com", **query)
        assert res.status_code == 200, res.json
        assert (res.json["data"]["sessions"], res.json["data"]["minutes"],
                res.json["data"]["previous"]["sessions"]) == (0, 0.0, 0), query
    assert redis_client.keys("sonicus:cache:recap:*") == []

    year = _recap(client, auth, "curious@example.com", period="year", date="2026-06-01")
    assert (year.status_code, year.json["data"]["minutes"]) == (200, 30.0)
    after = _recap(client, auth, "curious@example.com", period="year", date="2027-06-01")
    assert after.json["data"]["previous"]["minutes"] == 30.0
    month = _recap(client, auth, "curious@example.com", period="month", date="2026-03-09")
    assert month.json["data"]["sessions"] == 1
    assert sorted(key.decode().split(":", 5)[-1] for key in
                  redis_client.keys("sonicus:cache:recap:*")) == \
        ["month:2026-03-01", "year:2026-01-01", "year:2027-01-01"]


def test_a_renamed_package_shows_its_new_title_in_cached_recaps(
        app, client, auth, admin_auth, set_clock, make_user, make_package, make_session):
    """An admin renames a package; a listener's recaps already cached (a past month kept for
    a year, the current week) show its new title at once, not the old one until they are
    computed again."""
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    user = make_user("renamed@example.com")
    make_user("admin@example.com", admin=True)
    rain = make_package("rain", title="Gentle Rain")
    make_session(user, rain, started_at=datetime(2026, 8, 3, 12, tzinfo=UTC), minutes=20)
    make_session(user, rain, started_at=datetime(2026, 11, 24, 12, tzinfo=UTC), minutes=20)
    queries = [{"period": "month", "date": "2026-08-01"}, {"period": "week"}]
    for query in queries:
        before = _recap(client, auth, "renamed@example.com", **query).json["data"]
        assert [p["title"] for p in before["top_packages"]] == ["Gentle Rain"]

    res = client.patch(f"/api/admin/packages/{rain.id}", json={"title": "Soft Rain at Night"},
                       headers=admin_auth())
    assert res.status_code == 200, res.json
    for query in queries:
        after = _recap(client, auth, "renamed@example.com", **query).json["data"]
        assert [(p["package_id"], p["title"], p["minutes"]) for p in after["top_packages"]] \
            == [(rain.id, "Soft Rain at Night", 20.0)], query


def test_year_recaps_are_computed_in_the_first_week_of_january(app, client, auth, set_clock,
                                                                make_user, make_package,
                                                                make_session):
    """Each listener's last year is computed on their own 1..7 January, once; the answer is
    then served from the cache."""
    from sonicus.services.recaps import precompute_year_recaps

    here = make_user("here@example.com").id
    west = make_user("west@example.com", timezone=LA).id
    idle = make_user("idle@example.com").id
    rain = make_package("rain").id
    make_session(here, rain, date(2026, 3, 1), minutes=30)
    make_session(west, rain, date(2026, 12, 31), minutes=20)
    make_session(idle, rain, date(2025, 6, 1), minutes=10)

    def precompute(moment):
        set_clock(moment)
        with app.app_context():
            return precompute_year_recaps()

    assert precompute(datetime(2026, 12, 20, tzinfo=UTC)) == 0
    # 1 January 05:00 UTC: still New Year's Eve in Los Angeles
    assert precompute(datetime(2027, 1, 1, 5, tzinfo=UTC)) == 1
    assert precompute(datetime(2027, 1, 1, 9, tzinfo=UTC)) == 1  # now Los Angeles too
    assert precompute(datetime(2027, 1, 3, 9, tzinfo=UTC)) == 0  # already there
    assert precompute(datetime(2027, 1, 9, 9, tzinfo=UTC)) == 0

    make_session(here, rain, date(2026, 3, 2), minutes=30)  # behind the services' back
    year = _recap(client, auth, "here@example.com", period="year", date="2026-05-05")
    assert year.json["data"]["minutes"] == 30.0  # the precomputed recap
    assert _recap(client, auth, "idle@example.com", period="year",
                  date="2026-05-05").json["data"]["sessions"] == 0


def test_hours_stay_local_across_a_dst_change(app, set_clock, make_user, make_package,
                                              make_session):
    """Berlin moves to summer time on 29 March 2026 at 01:00 UTC: noon is 11:00 UTC before
    and 10:00 UTC after; both are hour 12."""
    from sonicus.services.recaps import compute_recap

    set_clock(datetime(2026, 4, 2, 12, tzinfo=UTC))
    me = make_user("berlin@example.com", timezone="Europe/Berlin").id
    rain = make_package("rain").id
    for started, minutes in ((datetime(2026, 3, 28, 11, 0, tzinfo=UTC), 10),
                             (datetime(2026, 3, 29, 0, 59, 59, tzinfo=UTC), 3),  # 01:59 CET
                             (datetime(2026, 3, 29, 1, 0, tzinfo=UTC), 4),  # 03:00 CEST
                             (datetime(2026, 3, 30, 10, 0, tzinfo=UTC), 20)):
        make_session(me, rain, started.date(), started_at=started, minutes=minutes)
    with app.app_context():
        hours = compute_recap(me, "month", date(2026, 3, 1), use_cache=False)["listening_hours"]
    assert (hours[12], hours[1], hours[3]) == (30.0, 3.0, 4.0) and sum(hours) == 37.0


def test_a_session_started_and_left_unheard_is_no_session_of_the_recap(
        app, client, auth, set_clock, make_user, make_package):
    """A session the stale sweep closed without a heartbeat (abandoned: nothing was heard) is
    left out of the recap's sessions as of the analytics' total_sessions: a week of one such
    tap is an empty week, not "0 min in 1 sessions", and a week with a real listen says 1."""
    from sonicus.services import listening

    set_clock(datetime(2026, 11, 23, 9, tzinfo=UTC))  # a Monday
    make_user("left@example.com")
    headers = auth("left@example.com")
    rain = make_package("rain").id
    started = client.post("/api/user/sessions", json={"package_id": rain}, headers=headers)
    assert started.status_code == 201, started.json
    with app.app_context():
        assert listening.close_stale_sessions(now=datetime(2026, 11, 23, 12, tzinfo=UTC)) == 1
    set_clock(datetime(2026, 11, 24, 9, tzinfo=UTC))
    week = _recap(client, auth, "left@example.com", period="week").json["data"]
    analytics = client.get("/api/user/analytics", headers=headers).json["data"]
    assert analytics["total_sessions"] == 0
    assert (week["sessions"], week["minutes"], week["top_packages"]) == (0, 0.0, [])
    assert week["top_categories"] == []

    heard = client.post("/api/user/sessions", json={"package_id": rain}, headers=headers)
    set_clock(datetime(2026, 11, 24, 9, 10, tzinfo=UTC))
    done = client.post(f"/api/user/sessions/{heard.json['data']['id']}/complete",
                       json={"listened_seconds": 600, "completed": True}, headers=headers)
    assert done.status_code == 200, done.json
    week = _recap(client, auth, "left@example.com", period="week").json["data"]
    assert week["sessions"] == 1 and week["top_categories"][0]["sessions"] == 1
    following = _recap(client, auth, "left@example.com", period="week",
                       date="2026-12-01").json["data"]
    assert following["previous"]["sessions"] == 1


def test_last_years_hours_stay_in_the_zone_of_the_day_after_two_moves(
        app, set_clock, make_user, make_package, make_session):
    """A listener in Tokyo all spring moves to New York in the summer and to London in
    December; in January their year recap shows the spring's morning sessions at 09:00 (Tokyo),
    not at 19:00 (New York) because the Tokyo zone was forgotten 90 days after the move."""
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services.recaps import compute_recap

    set_clock(datetime(2026, 3, 1, 12, tzinfo=UTC))
    user = make_user("traveller@example.com", timezone="Asia/Tokyo")
    rain = make_package("rain").id
    for day in (2, 3, 4):  # 00:00 UTC: 09:00 in Tokyo
        make_session(user.id, rain, date(2026, 3, day),
                     started_at=datetime(2026, 3, day, 0, tzinfo=UTC), minutes=10)
    with app.app_context():
        for moment, zone in ((datetime(2026, 8, 1, 12, tzinfo=UTC), "America/New_York"),
                             (datetime(2026, 12, 1, 12, tzinfo=UTC), "Europe/London")):
            set_clock(moment)
            person = db.session.get(User, user.id)
            person.change_day_settings(zone, 0, moment)
            db.session.commit()
        set_clock(datetime(2027, 1, 3, 12, tzinfo=UTC))
        hours = compute_recap(user.id, "year", date(2026, 6, 1),
                              use_cache=False)["listening_hours"]
    assert hours[9] == 30.0 and sum(hours) == 30.0


def test_a_package_moved_to_another_category_shows_under_it_in_cached_recaps(
        app, client, auth, admin_auth, set_clock, make_user, make_package, make_session):
    """An admin moves a package from "sleep" to "focus"; a listener's recaps already cached
    (a past month kept for a year, the current week) count its minutes under "focus" at once,
    not under "sleep" until they are computed again."""
    set_clock(datetime(2026, 11, 25, 12, tzinfo=UTC))
    make_user("moved@example.com")
    user = make_user("listener@example.com")
    make_user("admin@example.com", admin=True)
    rain = make_package("rain", category="sleep")
    make_session(user, rain, started_at=datetime(2026, 8, 3, 12, tzinfo=UTC), minutes=20)
    make_session(user, rain, started_at=datetime(2026, 11, 24, 12, tzinfo=UTC), minutes=20)
    queries = [{"period": "month", "date": "2026-08-01"}, {"period": "week"}]
    for query in queries:
        before = _recap(client, auth, "listener@example.com", **query).json["data"]
        assert [c["category"] for c in before["top_categories"]] == ["sleep"]

    res = client.patch(f"/api/admin/packages/{rain.id}", json={"category": "focus"},
                       headers=admin_auth())
    assert res.status_code == 200, res.json
    for query in queries:
        after = _recap(client, auth, "listener@example.com", **query).json["data"]
        assert after["top_categories"] == [
            {"category": "focus", "sessions": 1, "minutes": 20.0}], query
        assert "labels" not in after


def test_a_recap_computed_while_a_session_changes_is_not_cached_without_it(
        app, client, auth, monkeypatch, set_clock, make_user, make_package, make_session):
    """Monday morning a listener reads last week's recap while last Sunday's session is
    uploaded and the worker's refresh forgets the recent recaps; the read computed before the
    upload and wrote after that forget: last week then showed without the session, cached for
    a year. Now the read caches nothing then, and the next read shows the session."""
    import threading

    from sonicus.services import recaps
    from sonicus.services.recaps import forget_recent_recaps

    set_clock(datetime(2026, 11, 30, 9, tzinfo=UTC))  # Monday
    me = make_user("monday@example.com")
    rain = make_package("rain").id
    make_session(me.id, rain, date(2026, 11, 28), minutes=20)
    compute = recaps.recap_figures
    raced = []

    def uploaded_meanwhile():  # the upload's commit and the refresh job's forget
        with app.app_context():
            make_session(me.id, rain, date(2026, 11, 29), minutes=15)
            forget_recent_recaps(me.id)

    def compute_then_race(person, period, on_date):
        figures = compute(person, period, on_date)
        if not raced:
            raced.append(True)
            thread = threading.Thread(target=uploaded_meanwhile)
            thread.start()
            thread.join(10)
        return figures

    monkeypatch.setattr(recaps, "recap_figures", compute_then_race)
    first = _recap(client, auth, "monday@example.com", period="week", date="2026-11-29")
    assert first.json["data"]["minutes"] == 20.0 and raced
    again = _recap(client, auth, "monday@example.com", period="week", date="2026-11-29")
    assert again.json["data"]["minutes"] == 35.0 and again.json["data"]["sessions"] == 2
