"""Streaks with freezes, daily goals and active days, in the analytics and the dashboard; the
same figures on SQLite as on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest


def _days(first: date, last: date, *, skip=()):
    day = first
    while day <= last:
        if day not in skip:
            yield day
        day += timedelta(days=1)


def _noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


@pytest.fixture
def listener(set_clock, make_user, make_package, make_session, client, auth):
    """``listener(today, days, **user)`` → the analytics of a new user who completed a
    session on each of ``days``, at noon UTC of ``today``."""
    counter = iter(range(1000))

    def run(today: date, days, **user):
        email = f"streak{next(counter)}@example.com"
        user_id = make_user(email, **user).id
        package = make_package(f"p{user_id}").id
        for day in days:
            make_session(user_id, package, day, minutes=12)
        set_clock(_noon(today))
        res = client.get("/api/user/analytics", headers=auth(email))
        assert res.status_code == 200, res.json
        return res.json["data"]

    return run


def _streak(data):
    return (data["current_streak_days"], data["longest_streak_days"],
            data["freezes_available"], data["freeze_days"])


def test_a_freeze_is_earned_at_seven_days_and_covers_one_missed_day(listener):
    """February to March: seven days earn a freeze, 27 February is covered by it and does not
    count; six days earn nothing, and the same missed day ends that streak."""
    today = date(2026, 3, 2)
    seven = listener(today, _days(date(2026, 2, 20), today, skip={date(2026, 2, 27)}))
    assert _streak(seven) == (10, 10, 0, ["2026-02-27"])
    six = listener(today, _days(date(2026, 2, 21), today, skip={date(2026, 2, 27)}))
    assert _streak(six) == (3, 6, 0, [])


def test_at_most_two_freezes_are_banked(listener):
    """21 days earn three freezes but bank two: across the new year two single missed days are
    covered, the third ends the streak."""
    start = date(2026, 12, 12)
    day = lambda n: start + timedelta(days=n - 1)  # noqa: E731
    after_21 = listener(day(21), _days(day(1), day(21)))
    assert _streak(after_21) == (21, 21, 2, [])
    missed = {day(22), day(24), day(26)}
    data = listener(day(27), _days(day(1), day(27), skip=missed))
    assert (day(22), day(26)) == (date(2027, 1, 2), date(2027, 1, 6))
    assert _streak(data) == (1, 23, 0, ["2027-01-02", "2027-01-04"])


def test_two_missed_days_end_the_streak_whatever_is_banked(listener):
    today = date(2026, 5, 18)
    # 14 days bank two freezes; 14 and 15 May are missed
    data = listener(today, [*_days(date(2026, 4, 30), date(2026, 5, 13)),
                            *_days(date(2026, 5, 16), today)])
    assert _streak(data) == (3, 14, 0, [])


def test_yesterday_missed_while_today_is_open(listener, set_clock, client, auth, redis_client):
    """In Auckland with a day starting at 03:00: the last streak day was the day before
    yesterday; a banked freeze covers yesterday and the streak stays current until today is
    over without a session."""
    # 2026-06-10 14:30 UTC is 02:30 NZST on 11 June: still the user's 10 June
    today = date(2026, 6, 10)
    data = listener(today, _days(date(2026, 6, 1), date(2026, 6, 8)),
                    timezone="Pacific/Auckland", day_start_hour=3)
    assert _streak(data) == (8, 8, 0, ["2026-06-09"])
    set_clock(datetime(2026, 6, 10, 14, 30, tzinfo=UTC))
    redis_client.delete(*redis_client.keys("sonicus:cache:analytics:*"))
    again = client.get("/api/user/analytics", headers=auth("streak0@example.com")).json["data"]
    assert again["day"] == "2026-06-10" and _streak(again) == (8, 8, 0, ["2026-06-09"])
    set_clock(datetime(2026, 6, 10, 15, 30, tzinfo=UTC))  # 03:30 on 11 June: 10 June is over
    redis_client.delete(*redis_client.keys("sonicus:cache:analytics:*"))
    over = client.get("/api/user/analytics", headers=auth("streak0@example.com")).json["data"]
    assert over["day"] == "2026-06-11" and _streak(over) == (0, 8, 0, [])


def test_only_sessions_that_count_make_streak_days(set_clock, client, auth, make_user,
                                                   make_package, make_session):
    set_clock(_noon(date(2026, 9, 10)))
    me = make_user("me@example.com").id
    rain = make_package("rain").id
    for day in _days(date(2026, 9, 1), date(2026, 9, 10)):
        if day == date(2026, 9, 5):
            make_session(me, rain, day, minutes=0.5)  # under a minute: not a streak day
            make_session(me, rain, day, minutes=12, completed=False)
            make_session(me, rain, day, minutes=12, counts_toward_quota=False)
        else:
            make_session(me, rain, day)
    data = client.get("/api/user/analytics", headers=auth("me@example.com")).json["data"]
    assert _streak(data) == (5, 5, 0, [])  # 6..10 September; four days before the gap
    assert data["active_days_last_7"] == 7 and data["active_days_last_30"] == 10


def test_freeze_days_shown_are_those_of_the_last_ninety_days(listener):
    today = date(2026, 8, 31)
    missed = {date(2026, 5, 20), date(2026, 8, 20)}
    data = listener(today, _days(date(2026, 5, 1), today, skip=missed))
    assert data["freeze_days"] == ["2026-08-20"]  # 20 May is older than 90 days
    assert data["current_streak_days"] == 121
    assert data["freezes_available"] == 2


def test_goal_and_active_days(set_clock, client, auth, make_user, make_package, make_session):
    today = date(2026, 10, 14)
    set_clock(_noon(today))
    me = make_user("goal@example.com").id
    rain = make_package("rain").id
    minutes = {0: [10, 6], 1: [20], 2: [14.9], 4: [3, 12, 1], 6: [15], 7: [40], 20: [5]}
    for back, lengths in minutes.items():
        for length in lengths:
            make_session(me, rain, today - timedelta(days=back), minutes=length)
    headers = auth("goal@example.com")
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert data["goal"] is None
    assert data["active_days_last_7"] == 5 and data["active_days_last_30"] == 7

    res = client.put("/api/user/profile", json={"preferences": {"daily_goal_minutes": 15}},
                     headers=headers)
    assert res.status_code == 200, res.json
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    # met on days 0 (16), 1 (20), 4 (16), 6 (15); not on day 2 (14.9); day 7 is too old
    assert data["goal"] == {"minutes_today": 16.0, "goal_minutes": 15, "met_today": True,
                            "days_met_last_7": 4}
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]["analytics"]
    assert dashboard["goal"] == data["goal"]
    assert dashboard["active_days_last_7"] == 5

    client.put("/api/user/profile", json={"preferences": {"daily_goal_minutes": 30}},
               headers=headers)
    goal = client.get("/api/user/analytics", headers=headers).json["data"]["goal"]
    assert goal == {"minutes_today": 16.0, "goal_minutes": 30, "met_today": False,
                    "days_met_last_7": 0}


def test_show_streaks_false_nulls_every_streak_figure(set_clock, client, auth, make_user,
                                                      make_package, make_session):
    today = date(2026, 4, 20)
    set_clock(_noon(today))
    me = make_user("hide@example.com").id
    rain = make_package("rain").id
    for day in _days(date(2026, 4, 1), today, skip={date(2026, 4, 10)}):
        make_session(me, rain, day)
    headers = auth("hide@example.com")
    shown = client.get("/api/user/dashboard", headers=headers).json["data"]["analytics"]
    assert _streak(shown) == (19, 19, 1, ["2026-04-10"])

    res = client.put("/api/user/profile", json={"preferences": {"show_streaks": False}},
                     headers=headers)
    assert res.status_code == 200, res.json
    hidden = client.get("/api/user/dashboard", headers=headers).json["data"]["analytics"]
    assert _streak(hidden) == (None, None, None, None)
    assert hidden["total_sessions"] == 19 and hidden["active_days_last_7"] == 7
    analytics = client.get("/api/user/analytics", headers=headers).json["data"]
    assert _streak(analytics) == (None, None, None, None)


def test_sqlite_gives_the_same_streaks_freezes_and_recaps(tmp_path, app, set_clock, make_user,
                                                          make_package, make_session,
                                                          make_config):
    """The embedded default (SQLite) computes exactly what PostgreSQL does: streaks across
    freezes and broken runs, goals, and recaps whose hours need the time zone in force."""
    from flask_migrate import upgrade
    from sqlalchemy import select

    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.models import ListeningSession, SoundPackage, User
    from sonicus.services.analytics import compute_user_analytics
    from sonicus.services.recaps import compute_recap

    now = set_clock(datetime(2026, 3, 3, 9, 45, tzinfo=UTC))
    user = make_user("parity@example.com", timezone="Asia/Kathmandu", day_start_hour=2)
    rain = make_package("rain", category="sleep").id
    deep = make_package("deep", category="focus").id
    missed = {date(2026, 1, 9), date(2026, 1, 20), date(2026, 1, 21), date(2026, 2, 14),
              date(2026, 2, 27)}
    for n, day in enumerate(_days(date(2025, 12, 20), date(2026, 3, 1), skip=missed)):
        started = datetime(day.year, day.month, day.day, 2 + n % 20, 7 * (n % 8), tzinfo=UTC)
        make_session(user.id, rain if n % 3 else deep, day, started_at=started,
                     minutes=5 + n % 17, completed=n % 11 != 5,
                     mood_before=n % 10 + 1 if n % 4 else None, mood_after=(n * 7) % 10 + 1)
    with app.app_context():
        person = db.session.get(User, user.id)
        person.preferences = {"daily_goal_minutes": 12}
        person.change_day_settings("America/St_Johns", 4, now - timedelta(days=40))
        db.session.commit()
        rows = {m: [{c.key: getattr(o, c.key) for c in m.__table__.columns}
                    for o in db.session.execute(select(m)).scalars()]
                for m in (User, SoundPackage, ListeningSession)}

    def figures():
        person = db.session.get(User, user.id)
        return (compute_user_analytics(person, now),
                [compute_recap(user.id, period, on, use_cache=False)
                 for period in ("week", "month", "year")
                 for on in (date(2026, 1, 1), date(2026, 2, 14), date(2026, 3, 3))])

    with app.app_context():
        expected = figures()
    assert expected[0]["freeze_days"] and expected[0]["goal"]
    lite = create_app(make_config(DATABASE_URL=f"sqlite:///{tmp_path}/lite.db",
                                  REDIS_URL=None))
    with lite.app_context():
        upgrade()
        for model in (User, SoundPackage, ListeningSession):
            for values in rows[model]:
                db.session.add(model(**values))
        db.session.commit()
        got = figures()
    assert got == expected


def test_a_date_a_move_east_skipped_does_not_break_the_streak(set_clock, make_user, make_package,
                                                              make_session, client, auth,
                                                              redis_client):
    """Honolulu (-10) to Kiritimati (+14): 1 June ends at midnight in Honolulu, which is
    already 3 June in Kiritimati. 2 June never was the user's day: it cannot be missed."""
    user_id = make_user("east@example.com", timezone="Pacific/Honolulu").id
    headers = auth("east@example.com")
    package = make_package("east").id
    for day in _days(date(2026, 5, 30), date(2026, 6, 1)):
        make_session(user_id, package, day, minutes=12)
    set_clock(datetime(2026, 6, 1, 22, 0, tzinfo=UTC))  # 12:00 on 1 June in Honolulu
    res = client.put("/api/user/profile", json={"timezone": "Pacific/Kiritimati"},
                     headers=headers)
    assert res.json["data"]["day_settings_effective_at"] == "2026-06-02T10:00:00+00:00"
    set_clock(datetime(2026, 6, 2, 20, 0, tzinfo=UTC))  # 10:00 on 3 June in Kiritimati
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert data["day"] == "2026-06-03"
    assert _streak(data) == (3, 3, 0, [])
    make_session(user_id, package, date(2026, 6, 3), minutes=12)
    redis_client.flushdb()  # the analytics cached above
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert _streak(data) == (4, 4, 0, [])
    recap = client.get("/api/user/recap?period=week&date=2026-06-01", headers=headers).json
    assert recap["data"]["longest_streak"] == 2  # 1 and 3 June


def test_dates_two_moves_east_skipped_do_not_break_the_streak(set_clock, make_user,
                                                              make_package, make_session,
                                                              client, auth):
    """Honolulu to Kiritimati (2 June never begins), back to Honolulu (3 June goes on), and to
    Kiritimati again (5 June never begins): neither skipped date is missed, though only the
    latest change is the profile's prior one."""
    user_id = make_user("east2@example.com", timezone="Pacific/Honolulu").id
    headers = auth("east2@example.com")
    package = make_package("east2").id
    moves = ((datetime(2026, 6, 1, 22, 0, tzinfo=UTC), "Pacific/Kiritimati"),  # 1 June 12:00
             (datetime(2026, 6, 3, 2, 0, tzinfo=UTC), "Pacific/Honolulu"),  # 3 June 16:00
             (datetime(2026, 6, 4, 22, 0, tzinfo=UTC), "Pacific/Kiritimati"))  # 4 June 12:00
    for day in _days(date(2026, 5, 30), date(2026, 6, 6), skip=(date(2026, 6, 2),
                                                                date(2026, 6, 5))):
        make_session(user_id, package, day, minutes=12)
    for at, zone in moves:
        set_clock(at)
        res = client.put("/api/user/profile", json={"timezone": zone}, headers=headers)
        assert res.status_code == 200, res.json
    set_clock(datetime(2026, 6, 5, 20, 0, tzinfo=UTC))  # 10:00 on 6 June in Kiritimati
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert data["day"] == "2026-06-06"
    assert _streak(data) == (6, 6, 0, [])


def test_a_goal_is_met_by_its_minutes_not_by_their_rounding(set_clock, client, auth, db_session,
                                                             make_user, make_package,
                                                             make_session):
    """9 min 59 s against a 10-minute goal shows as 10.0 minutes (rounded to a tenth) but the
    goal is not met until the tenth minute is full, today and in the last 7 days."""
    today = date(2026, 6, 10)
    set_clock(_noon(today) + timedelta(hours=1))
    me = make_user("almost@example.com").id
    rain = make_package("rain").id
    for day in (today - timedelta(days=1), today):
        short = make_session(me, rain, day, minutes=10)
        short.listened_seconds = 599
    db_session.commit()
    headers = auth("almost@example.com")
    res = client.put("/api/user/profile", json={"preferences": {"daily_goal_minutes": 10}},
                     headers=headers)
    assert res.status_code == 200, res.json
    goal = client.get("/api/user/analytics", headers=headers).json["data"]["goal"]
    assert goal == {"minutes_today": 10.0, "goal_minutes": 10, "met_today": False,
                    "days_met_last_7": 0}

    make_session(me, rain, today, started_at=_noon(today) + timedelta(minutes=30), minutes=1)
    again = client.put(
        "/api/user/profile", json={"preferences": {"daily_goal_minutes": 10}}, headers=headers)
    assert again.status_code == 200  # forgets the cached figures
    goal = client.get("/api/user/analytics", headers=headers).json["data"]["goal"]
    assert goal["met_today"] is True and goal["days_met_last_7"] == 1
