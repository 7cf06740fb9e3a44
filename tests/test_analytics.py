"""GET /api/user/analytics: the figures, the user's days, the cache, the CLI, both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue

from sonicus import clock


def _today(tz="UTC", hour=0):
    return clock.local_day(clock.now(), tz, hour)


@pytest.fixture
def listening_history(client, auth, db_session, make_user, make_package, make_session):
    """Listener A's history (and some of B's, which must never count for A)."""
    a = make_user("a@example.com").id
    b = make_user("b@example.com").id
    calm = make_package("calm-night", category="sleep").id
    deep = make_package("deep-work", category="focus").id
    today = _today()
    day = lambda n: today - timedelta(days=n)  # noqa: E731
    make_session(a, calm, day(0), minutes=10, mood_before=3, mood_after=7)
    make_session(a, deep, day(1), minutes=20, mood_before=5, mood_after=6)
    make_session(a, calm, day(2), minutes=5, completed=False)
    for n in (5, 6, 7):
        make_session(a, deep, day(n), minutes=10)
    make_session(a, calm, day(0), minutes=2, completed=False, status="open")
    for n in range(12):
        make_session(b, deep, day(n), minutes=45, mood_before=9, mood_after=1)
    return {"a": a, "b": b, "calm": calm, "deep": deep, "today": today}


def test_figures_come_from_the_callers_own_sessions(client, auth, listening_history):
    h = listening_history
    res = client.get("/api/user/analytics", headers=auth("a@example.com"))
    assert res.status_code == 200, res.json
    data = res.json["data"]
    assert data["total_sessions"] == 7
    assert data["completed_sessions"] == 5
    assert data["completion_rate"] == pytest.approx(5 / 6, abs=0.001)  # of ended sessions
    assert data["total_minutes"] == 67.0
    monday = h["today"] - timedelta(days=h["today"].weekday())
    week = {0: 12, 1: 20, 2: 5, 5: 10, 6: 10, 7: 10}
    assert data["minutes_this_week"] == sum(
        m for n, m in week.items() if h["today"] - timedelta(days=n) >= monday)
    assert data["sessions_today"] == 2
    assert data["current_streak_days"] == 2
    assert data["longest_streak_days"] == 3
    assert data["avg_mood_change"] == 2.5
    assert data["top_categories"] == [
        {"category": "focus", "sessions": 4, "minutes": 50.0},
        {"category": "sleep", "sessions": 3, "minutes": 17.0}]
    assert data["mood_by_package"] == [
        {"package_id": h["calm"], "title": "Calm Night", "sessions": 1, "avg_mood_change": 4.0},
        {"package_id": h["deep"], "title": "Deep Work", "sessions": 1, "avg_mood_change": 1.0}]
    daily = data["daily_minutes"]
    assert len(daily) == 30
    assert daily[-1] == {"date": h["today"].isoformat(), "minutes": 12.0}
    assert daily[-2] == {"date": (h["today"] - timedelta(days=1)).isoformat(), "minutes": 20.0}
    assert daily[0]["date"] == (h["today"] - timedelta(days=29)).isoformat()
    assert sum(d["minutes"] for d in daily) == 67.0
    assert datetime.fromisoformat(data["computed_at"]) <= datetime.now(UTC)


def test_a_new_listener_gets_zeroes(client, auth):
    data = client.get("/api/user/analytics", headers=auth("new@example.com")).json["data"]
    assert data["total_sessions"] == 0
    assert data["completion_rate"] == 0.0
    assert data["avg_mood_change"] is None
    assert data["current_streak_days"] == data["longest_streak_days"] == 0
    assert data["top_categories"] == [] and data["mood_by_package"] == []
    assert [d["minutes"] for d in data["daily_minutes"]] == [0.0] * 30


def test_today_without_a_session_does_not_break_the_streak(client, auth, db_session, make_user,
                                                           make_package, make_session):
    user = make_user("s@example.com").id
    pkg = make_package("rain").id
    today = _today()
    for n in (1, 2, 3):
        make_session(user, pkg, today - timedelta(days=n))
    data = client.get("/api/user/analytics", headers=auth("s@example.com")).json["data"]
    assert data["current_streak_days"] == 3
    assert data["longest_streak_days"] == 3


def test_a_missed_day_ends_the_streak(client, auth, db_session, make_user, make_package,
                                      make_session):
    user = make_user("s@example.com").id
    pkg = make_package("rain").id
    today = _today()
    for n in (2, 3, 4, 5, 9):
        make_session(user, pkg, today - timedelta(days=n))
    # Two sessions on one day count once; an unfinished one does not count at all.
    make_session(user, pkg, today - timedelta(days=3))
    make_session(user, pkg, today - timedelta(days=1), completed=False)
    data = client.get("/api/user/analytics", headers=auth("s@example.com")).json["data"]
    assert data["current_streak_days"] == 0
    assert data["longest_streak_days"] == 4


def test_days_are_the_users_own_days(client, auth, db_session, make_user, make_package,
                                     make_session):
    """Far east of UTC, the user's today is a date UTC has not reached yet (or not left)."""
    # (a timezone changed in the profile would take effect only at the next UTC midnight)
    user = make_user("east@example.com", timezone="Pacific/Kiritimati").id
    pkg = make_package("waves").id
    users_today = _today("Pacific/Kiritimati")
    make_session(user, pkg, users_today, minutes=7)
    make_session(user, pkg, users_today - timedelta(days=1), minutes=3)
    data = client.get("/api/user/analytics", headers=auth("east@example.com")).json["data"]
    assert data["sessions_today"] == 1
    assert data["daily_minutes"][-1] == {"date": users_today.isoformat(), "minutes": 7.0}
    assert data["current_streak_days"] == 2


def test_served_from_the_cache_until_a_refresh(app, client, auth, db_session, redis_client,
                                               make_user, make_package, make_session):
    from sonicus.services.analytics import cache_key, refresh_user_analytics

    user = make_user("c@example.com").id
    pkg = make_package("forest").id
    make_session(user, pkg, _today())
    first = client.get("/api/user/analytics", headers=auth("c@example.com")).json["data"]
    assert first["total_sessions"] == 1
    key = "sonicus:cache:" + cache_key(user)
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= app.config["ANALYTICS_CACHE_TTL_SECONDS"]

    make_session(user, pkg, _today())
    again = client.get("/api/user/analytics", headers=auth("c@example.com")).json["data"]
    assert again == first  # the cached figures

    with app.app_context():
        refresh_user_analytics(user)
    fresh = client.get("/api/user/analytics", headers=auth("c@example.com")).json["data"]
    assert fresh["total_sessions"] == 2

    redis_client.delete(key)  # a miss computes again
    assert client.get("/api/user/analytics",
                      headers=auth("c@example.com")).json["data"]["total_sessions"] == 2


def test_refresh_stores_and_clears_the_stale_mark(app, client, auth, db_session, make_user,
                                                  make_package, make_session):
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import mark_stale, refresh_user_analytics

    user = make_user("m@example.com").id
    pkg = make_package("stream").id
    make_session(user, pkg, _today(), minutes=4)
    with app.app_context():
        mark_stale(user)
        db.session.commit()
        assert db.session.get(UserAnalytics, user).stale_since is not None
        refresh_user_analytics(user)
        row = db.session.get(UserAnalytics, user)
        assert row.stale_since is None
        assert row.data["total_minutes"] == 4.0
        assert row.computed_at is not None


def test_refresh_request_is_queued_for_a_worker(client, auth, redis_client, make_user):
    from sonicus.tasks.queue import QUEUE_ANALYTICS

    make_user("q@example.com")
    res = client.post("/api/user/analytics/refresh", headers=auth("q@example.com"))
    assert res.status_code == 202
    assert res.json["data"] == {"status": "queued"}
    assert Queue(QUEUE_ANALYTICS, connection=redis_client).count == 1


def test_analytics_needs_a_token(client):
    assert client.get("/api/user/analytics").status_code == 401
    assert client.get("/api/user/dashboard").status_code == 401
    assert client.post("/api/user/analytics/refresh").status_code == 401


def test_cli_refreshes_one_user_or_everyone(app, runner, client, auth, db_session, redis_client,
                                            make_user, make_package, make_session):
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics

    one = make_user("one@example.com").id
    two = make_user("two@example.com").id
    pkg = make_package("brook").id
    make_session(one, pkg, _today(), minutes=6)

    result = runner.invoke(args=["sonicus", "analytics", "refresh", "--user", "ONE@example.com"])
    assert result.exit_code == 0, result.output
    assert "1 user" in result.output
    with app.app_context():
        assert db.session.get(UserAnalytics, one).data["total_minutes"] == 6.0
        assert db.session.get(UserAnalytics, two) is None
    assert redis_client.exists(f"sonicus:cache:analytics:{one}")

    result = runner.invoke(args=["sonicus", "analytics", "refresh", "--all"])
    assert result.exit_code == 0 and "2 user" in result.output
    with app.app_context():
        assert db.session.get(UserAnalytics, two).data["total_sessions"] == 0

    assert runner.invoke(args=["sonicus", "analytics", "refresh"]).exit_code == 2  # usage
    bad = runner.invoke(args=["sonicus", "analytics", "refresh", "--user", "nobody@example.com"])
    assert bad.exit_code == 1 and "no user" in bad.output


def test_sqlite_gives_the_same_figures(tmp_path, app, client, auth, listening_history, make_config):
    """The embedded default (SQLite, no Redis) computes exactly what PostgreSQL does."""
    from flask_migrate import upgrade
    from sqlalchemy import select

    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.models import ListeningSession, SoundPackage, User
    from sonicus.services.analytics import compute_user_analytics

    now = clock.now()
    with app.app_context():
        users = [db.session.get(User, listening_history[k]) for k in ("a", "b")]
        packages = db.session.execute(select(SoundPackage)).scalars().all()
        sessions = db.session.execute(select(ListeningSession)).scalars().all()
        expected = compute_user_analytics(users[0], now)
        columns = {m: [c.key for c in m.__table__.columns]
                   for m in (User, SoundPackage, ListeningSession)}
        rows = {m: [{c: getattr(o, c) for c in columns[m]} for o in objs]
                for m, objs in ((User, users), (SoundPackage, packages),
                                (ListeningSession, sessions))}

    lite = create_app(make_config(DATABASE_URL=f"sqlite:///{tmp_path}/lite.db",
                                  REDIS_URL=None))
    with lite.app_context():
        upgrade()
        for model in (User, SoundPackage, ListeningSession):
            for values in rows[model]:
                db.session.add(model(**values))
        db.session.commit()
        got = compute_user_analytics(db.session.get(User, listening_history["a"]), now)
        # Without Redis the same GET works, from the in-memory cache.
        client_lite = lite.test_client()
        res = client_lite.get("/api/user/analytics", headers=auth("fresh@example.com"))
        assert res.status_code == 200 and res.json["data"]["total_sessions"] == 0
    assert got == expected


def test_sessions_today_agrees_with_the_quota_usage(client, auth, make_user, make_package):
    """A tap given back (ended within 60 s, under 30 s listened) is no session of the day:
    ``analytics.sessions_today`` counts what ``usage.sessions_today`` counts, on the
    analytics route and on the dashboard alike."""
    make_user("tap@example.com")
    headers = auth("tap@example.com")
    package = make_package("tap-rain").id
    ids = []
    for _ in range(2):
        res = client.post("/api/user/sessions", json={"package_id": package}, headers=headers)
        assert res.status_code == 201, res.json
        ids.append(res.json["data"]["id"])
    tap = client.post(f"/api/user/sessions/{ids[0]}/complete", headers=headers,
                      json={"listened_seconds": 5, "completed": False})
    assert tap.status_code == 200 and tap.json["data"]["counts_toward_quota"] is False
    usage = client.get("/api/user/subscription", headers=headers).json["data"]["usage"]
    assert usage["sessions_today"] == 1
    analytics = client.get("/api/user/analytics", headers=headers).json["data"]
    assert analytics["sessions_today"] == usage["sessions_today"]
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert dashboard["analytics"]["sessions_today"] == \
        dashboard["subscription"]["usage"]["sessions_today"] == 1


def test_hiding_streaks_while_a_refresh_runs_is_not_undone_by_its_figures(
        app, client, auth, make_user, make_package, make_session, monkeypatch):
    """The user turns streaks off (and sets a goal) while a refresh job is computing their
    figures with the preferences it read before: the job stores those figures in the cache
    after the profile change forgot it. The analytics and the dashboard show the user's new
    preferences all the same: no streak, the new goal."""
    import threading

    from sonicus.services import analytics

    me = make_user("hide@example.com").id
    rain = make_package("rain").id
    today = _today()
    for n in range(3):
        make_session(me, rain, today - timedelta(days=n), minutes=12)
    headers = auth("hide@example.com")
    with app.app_context():
        analytics.refresh_user_analytics(me)  # the row exists; the cache holds a streak of 3

    compute = analytics.compute_user_analytics

    def profile_changes_meanwhile(user, now=None):
        data = compute(user, now)  # with the preferences read before the change
        changed = []
        thread = threading.Thread(target=lambda: changed.append(client.put(
            "/api/user/profile", headers=headers,
            json={"preferences": {"show_streaks": False, "daily_goal_minutes": 30}})))
        thread.start()
        thread.join(10)
        assert changed and changed[0].status_code == 200
        return data

    monkeypatch.setattr(analytics, "compute_user_analytics", profile_changes_meanwhile)
    with app.app_context():
        assert analytics.refresh_user_analytics(me)["current_streak_days"] == 3
    monkeypatch.setattr(analytics, "compute_user_analytics", compute)

    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert data["current_streak_days"] is None and data["longest_streak_days"] is None
    assert data["freezes_available"] is None and data["freeze_days"] is None
    assert data["goal"]["goal_minutes"] == 30
    summary = client.get("/api/user/dashboard", headers=headers).json["data"]["analytics"]
    assert summary["current_streak_days"] is None and summary["goal"]["goal_minutes"] == 30


def test_a_renamed_or_recategorised_package_shows_as_it_is_now_in_cached_analytics(
        client, auth, admin_auth, make_user, listening_history):
    """An admin renames a package and moves another to a new category; the listener's
    analytics, cached for ten minutes, show the new title in ``mood_by_package`` and the new
    category in ``top_categories`` at once, not the old ones until the cache runs out."""
    h = listening_history
    make_user("admin@example.com", admin=True)
    before = client.get("/api/user/analytics", headers=auth("a@example.com")).json["data"]
    assert {p["title"] for p in before["mood_by_package"]} == {"Calm Night", "Deep Work"}
    assert {c["category"] for c in before["top_categories"]} == {"sleep", "focus"}
    for package, change in ((h["calm"], {"title": "Quiet Night"}),
                            (h["deep"], {"category": "study"})):
        res = client.patch(f"/api/admin/packages/{package}", json=change,
                           headers=admin_auth())
        assert res.status_code == 200, res.json
    after = client.get("/api/user/analytics", headers=auth("a@example.com")).json["data"]
    assert {p["package_id"]: p["title"] for p in after["mood_by_package"]} == {
        h["calm"]: "Quiet Night", h["deep"]: "Deep Work"}
    assert {c["category"] for c in after["top_categories"]} == {"sleep", "study"}


def test_a_read_that_computed_before_a_refresh_does_not_cache_over_it(
        app, client, auth, monkeypatch, make_user, make_package, make_session):
    """The dashboard reads the analytics on a cold cache while a session completes and the
    worker's refresh caches the new figures; the read, which computed before them, does not
    put its older figures back in the cache: the next read shows the completed session, not
    the figures without it for the next ten minutes."""
    import threading

    from sonicus.services import analytics

    me = make_user("racer@example.com").id
    rain = make_package("rain").id
    make_session(me, rain, _today(), minutes=3)
    headers = auth("racer@example.com")
    compute = analytics.compute_user_analytics
    raced = []

    def a_session_completes_meanwhile():  # another request and the worker's refresh
        with app.app_context():
            make_session(me, rain, _today(), minutes=4)
            assert analytics.refresh_user_analytics(me)["total_minutes"] == 7.0

    def compute_then_race(user, now=None):
        data = compute(user, now)
        if not raced:
            raced.append(True)
            thread = threading.Thread(target=a_session_completes_meanwhile)
            thread.start()
            thread.join(10)
        return data

    monkeypatch.setattr(analytics, "compute_user_analytics", compute_then_race)
    first = client.get("/api/user/analytics", headers=headers).json["data"]
    assert first["total_minutes"] == 3.0 and raced
    again = client.get("/api/user/analytics", headers=headers).json["data"]
    assert again["total_minutes"] == 7.0
