"""Listening sessions: start within tier limits, heartbeats, completion, history, stale closing."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, time, timedelta

import pytest
from rq import Queue
from sqlalchemy import func, select

from sonicus import clock
from sonicus.extensions import db
from sonicus.models import ListeningSession, SoundPackage, Track, UserAnalytics
from sonicus.services import listening
from sonicus.tasks.queue import QUEUE_ANALYTICS, QUEUE_MAINTENANCE, enqueue
from sonicus.tasks.worker import make_worker


def track_ids(package_id: int) -> list[int]:
    return list(db.session.execute(select(Track.id).where(Track.package_id == package_id)
                                   .order_by(Track.position)).scalars())


@pytest.fixture
def pkgs(db_session, make_package):
    return {"rain": make_package("rain", tracks=(1200, 600)).id,
            "short": make_package("short", tracks=(300, 200)).id,
            "delta": make_package("delta", minimum_tier="premium").id,
            "gamma": make_package("gamma", minimum_tier="pro_exclusive").id,
            "draft": make_package("draft", published=False).id}


def _start(client, headers, package_id, **body):
    return client.post("/api/user/sessions", json={"package_id": package_id, **body},
                       headers=headers)


def test_start_returns_limits_of_the_tier(client, auth, pkgs, make_user):
    make_user("s@example.com")
    starter = auth("s@example.com")
    res = _start(client, starter, pkgs["rain"], mood_before=4)
    assert res.status_code == 201, res.json
    data = res.json["data"]
    assert data["max_duration_seconds"] == 900 and data["tier"] == "starter"
    started = datetime.fromisoformat(data["started_at"])
    assert datetime.fromisoformat(data["ends_at"]) == started + timedelta(seconds=900)
    assert data["status"] == "open" and data["mood_before"] == 4
    assert data["package"]["slug"] == "rain"

    make_user("p@example.com", tier="pro")
    pro = auth("p@example.com")
    res = _start(client, pro, pkgs["gamma"], track_id=track_ids(pkgs["gamma"])[0])
    assert res.status_code == 201
    assert res.json["data"]["max_duration_seconds"] is None
    assert res.json["data"]["ends_at"] is None
    assert res.json["data"]["track"]["id"] == track_ids(pkgs["gamma"])[0]


@pytest.mark.parametrize("body, status, code", [
    ({"package_id": "delta"}, 403, "package_locked"),
    ({"package_id": "gamma"}, 403, "package_locked"),
    ({"package_id": "draft"}, 404, "not_found"),
    ({"package_id": 99999}, 404, "not_found"),
    ({"package_id": "rain", "track_id": "other"}, 404, "not_found"),
    ({"package_id": "rain", "mood_before": 11}, 422, "validation_error"),
    ({"package_id": "rain", "speed": 2}, 422, "validation_error"),
    ({}, 422, "validation_error"),
])
def test_start_refusals_change_nothing(client, auth, pkgs, db_session, body, status, code,
                                       make_user):
    make_user("r@example.com")
    headers = auth("r@example.com")
    body = dict(body)
    if isinstance(body.get("package_id"), str):
        body["package_id"] = pkgs[body["package_id"]]
    if body.get("track_id") == "other":
        body["track_id"] = track_ids(pkgs["short"])[0]
    res = client.post("/api/user/sessions", json=body, headers=headers)
    assert res.status_code == status, res.json
    assert res.json["code"] == code
    assert db_session.execute(select(func.count(ListeningSession.id))).scalar_one() == 0


def test_a_start_once_the_trial_has_ended_is_judged_by_the_tier_after_it(
        client, auth, pkgs, make_user, set_clock):
    """In the minute before the expiry job writes the end of a trial without a card, a start
    is judged as Starter would be: its packages and its limits."""
    make_user("trialend@example.com")
    headers = auth("trialend@example.com")
    set_clock(datetime.combine(clock.now().date() + timedelta(days=1), time(12), UTC))
    trial = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                        headers=headers)
    trial_ends_at = datetime.fromisoformat(trial.json["data"]["trial_ends_at"])
    set_clock(trial_ends_at - timedelta(seconds=30))
    assert _start(client, headers, pkgs["delta"]).status_code == 201
    set_clock(trial_ends_at + timedelta(seconds=20))  # the job has not run yet
    locked = _start(client, headers, pkgs["delta"])
    assert locked.status_code == 403 and locked.json["code"] == "package_locked", locked.json
    started = _start(client, headers, pkgs["rain"])
    assert started.status_code == 201 and started.json["data"]["tier"] == "starter", \
        started.json


def test_a_start_after_a_downgrades_period_end_is_judged_by_the_lower_tier(
        client, auth, billing, pkgs, make_user, set_clock):
    make_user("periodend@example.com")
    headers = auth("periodend@example.com")
    set_clock(datetime.combine(clock.now().date() + timedelta(days=1), time(12), UTC))
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "pro")["current_period_end"])
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200  # at the end of the period
    set_clock(period_end - timedelta(minutes=1))
    assert _start(client, headers, pkgs["gamma"]).status_code == 201
    set_clock(period_end + timedelta(seconds=20))  # the job has not run yet
    locked = _start(client, headers, pkgs["gamma"])
    assert locked.status_code == 403 and locked.json["code"] == "package_locked", locked.json
    assert _start(client, headers, pkgs["delta"]).json["data"]["tier"] == "premium"


def test_daily_quota_and_reset_time(client, auth, pkgs, make_user, set_clock):
    # noon UTC today: the day cannot end while the test runs
    noon = set_clock(datetime.combine(clock.now().date(), time(12), UTC))
    make_user("q@example.com")  # starter: 3 a day, UTC, day starts 00:00
    headers = auth("q@example.com")
    for _ in range(3):
        assert _start(client, headers, pkgs["rain"]).status_code == 201
    res = _start(client, headers, pkgs["rain"])
    assert res.status_code == 429
    assert res.json["code"] == "daily_session_limit_reached"
    midnight = datetime.combine(noon.date() + timedelta(days=1), time(0), UTC)
    assert datetime.fromisoformat(res.json["resets_at"]) == midnight
    assert int(res.headers["Retry-After"]) == 12 * 3600
    usage = client.get("/api/user/subscription", headers=headers)
    assert usage.status_code == 200, usage.json
    assert usage.json["data"]["usage"]["sessions_remaining"] == 0


def test_accidental_tap_gives_quota_back(client, auth, pkgs, make_user):
    make_user("tap@example.com")
    headers = auth("tap@example.com")
    ids = [_start(client, headers, pkgs["rain"]).json["data"]["id"] for _ in range(3)]
    res = client.post(f"/api/user/sessions/{ids[0]}/complete", headers=headers,
                      json={"listened_seconds": 5, "completed": False})
    assert res.status_code == 200
    assert res.json["data"]["counts_toward_quota"] is False
    assert _start(client, headers, pkgs["rain"]).status_code == 201
    assert _start(client, headers, pkgs["rain"]).status_code == 429


def test_heartbeat_is_clamped_and_monotonic(client, auth, pkgs, db_session, make_user):
    user = make_user("h@example.com")
    headers = auth("h@example.com")
    started = clock.now() - timedelta(minutes=10)
    sid = listening.start_session(user.id, pkgs["rain"], track_ids(pkgs["rain"])[0],
                                  now=started).id

    res = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 5000},
                       headers=headers)
    assert res.status_code == 200
    # ten minutes of wall time, whatever the client claims
    assert 600 <= res.json["data"]["listened_seconds"] <= 605
    before = res.json["data"]["listened_seconds"]
    res = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 30},
                       headers=headers)
    assert res.json["data"]["listened_seconds"] == before  # never decreases
    # later, the tier's 15 minutes cap it (the track is 20 minutes)
    session = listening.heartbeat(user.id, sid, 5000, now=started + timedelta(minutes=40))
    assert session.listened_seconds == 900
    for bad in ({"listened_seconds": -1}, {"listened": 3}, {}):
        assert client.patch(f"/api/user/sessions/{sid}", json=bad,
                            headers=headers).status_code == 422


def test_content_length_caps_listening(pkgs, db_session, make_user):
    user = make_user("c@example.com", tier="pro")
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    whole = listening.start_session(user.id, pkgs["short"], now=start)  # package: 500 s
    assert listening.heartbeat(user.id, whole.id, 9999, now=start + timedelta(hours=2)) \
        .listened_seconds == 500
    one = listening.start_session(user.id, pkgs["short"], track_ids(pkgs["short"])[1], now=start)
    done = listening.complete_session(user.id, one.id, 9999, True,
                                      now=start + timedelta(hours=2))
    assert done.listened_seconds == 200


def test_complete_marks_analytics_and_popularity(client, auth, pkgs, db_session, app, redis_client,
                                                 make_user):
    user = make_user("done@example.com")
    headers = auth("done@example.com")
    sid = listening.start_session(user.id, pkgs["rain"],
                                  now=clock.now() - timedelta(minutes=13)).id
    queued = Queue(QUEUE_ANALYTICS, connection=redis_client)
    assert queued.count == 1  # the start's own refresh (today's sessions went up)
    queued.empty()
    # 750 s of the 900 s a starter can play: over 80%, completed by the server's word
    res = client.post(f"/api/user/sessions/{sid}/complete", headers=headers, json={
        "listened_seconds": 750, "completed": True, "mood_after": 8, "note": "calmer"})
    assert res.status_code == 200, res.json
    data = res.json["data"]
    assert data["status"] == "ended" and data["completed"] is True
    assert data["client_completed"] is True
    assert data["listened_seconds"] == 750 and data["mood_after"] == 8
    assert data["note"] == "calmer" and data["counts_toward_quota"] is True
    assert data["end_reason"] == "completed" and data["ended_at"] is not None
    db_session.expire_all()
    assert db_session.get(SoundPackage, pkgs["rain"]).popularity == 1
    assert db_session.get(UserAnalytics, user.id).stale_since is not None
    # the refresh was requested after the commit, on the analytics queue
    assert Queue(QUEUE_ANALYTICS, connection=redis_client).count == 1
    make_worker(app, simple=True).work(burst=True, with_scheduler=False)
    db_session.expire_all()
    assert db_session.get(UserAnalytics, user.id).stale_since is None

    again = client.post(f"/api/user/sessions/{sid}/complete", headers=headers,
                        json={"listened_seconds": 800, "completed": True})
    assert again.status_code == 409 and again.json["code"] == "conflict"
    late = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 800},
                        headers=headers)
    assert late.status_code == 409
    db_session.expire_all()
    assert db_session.get(ListeningSession, sid).listened_seconds == 750
    assert db_session.get(SoundPackage, pkgs["rain"]).popularity == 1


def test_complete_validation(client, auth, pkgs, make_user):
    make_user("v@example.com")
    headers = auth("v@example.com")
    sid = _start(client, headers, pkgs["rain"]).json["data"]["id"]
    for bad in ({"listened_seconds": 10}, {"listened_seconds": 10, "completed": True,
                                          "mood_after": 0},
                {"listened_seconds": 10, "completed": True, "extra": 1}):
        res = client.post(f"/api/user/sessions/{sid}/complete", json=bad, headers=headers)
        assert res.status_code == 422, bad
    assert client.get(f"/api/user/sessions/{sid}", headers=headers).json["data"]["status"] == \
        "open"


def test_someone_elses_session_is_404(client, auth, pkgs, make_user):
    make_user("ana@example.com")
    ana = auth("ana@example.com")
    make_user("ben@example.com")
    ben = auth("ben@example.com")
    sid = _start(client, ana, pkgs["rain"]).json["data"]["id"]
    assert client.get(f"/api/user/sessions/{sid}", headers=ben).status_code == 404
    assert client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 1},
                        headers=ben).status_code == 404
    res = client.post(f"/api/user/sessions/{sid}/complete", headers=ben,
                      json={"listened_seconds": 1, "completed": True})
    assert res.status_code == 404 and res.json["code"] == "not_found"
    assert client.get("/api/user/sessions", headers=ben).json["data"] == []
    assert client.get(f"/api/user/sessions/{sid}", headers=ana).json["data"]["status"] == "open"


def test_history_newest_first_with_day_filters(client, auth, pkgs, db_session, make_user,
                                               admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    user = make_user("hist@example.com", timezone="America/Los_Angeles")
    headers = auth("hist@example.com")
    # 2026-06-01 05:00 UTC is May 31 in Los Angeles
    moments = [datetime(2026, 6, 1, 5, 0, tzinfo=UTC), datetime(2026, 6, 1, 18, 0, tzinfo=UTC),
               datetime(2026, 6, 2, 18, 0, tzinfo=UTC), datetime(2026, 6, 3, 18, 0, tzinfo=UTC)]
    ids = [listening.start_session(user.id, pkgs["rain"], now=m).id for m in moments]

    res = client.get("/api/user/sessions", headers=headers)
    assert [s["id"] for s in res.json["data"]] == ids[::-1]
    assert res.json["pagination"]["total"] == 4
    assert [s["local_day"] for s in res.json["data"]] == \
        ["2026-06-03", "2026-06-02", "2026-06-01", "2026-05-31"]

    res = client.get("/api/user/sessions?from=2026-06-01&to=2026-06-02", headers=headers)
    assert [s["id"] for s in res.json["data"]] == [ids[2], ids[1]]
    res = client.get("/api/user/sessions?to=2026-05-31", headers=headers)
    assert [s["id"] for s in res.json["data"]] == [ids[0]]
    page = client.get("/api/user/sessions?per_page=3&page=2", headers=headers)
    assert [s["id"] for s in page.json["data"]] == [ids[0]]

    for query in ("from=2026-06-03&to=2026-06-01", "from=yesterday", "to=2026-06-01x"):
        bad = client.get(f"/api/user/sessions?{query}", headers=headers)
        assert bad.status_code == 422, query

    # archiving the package keeps it in history
    client.delete(f"/api/admin/packages/{pkgs['rain']}", headers=admin)
    res = client.get("/api/user/sessions", headers=headers)
    assert len(res.json["data"]) == 4
    assert res.json["data"][0]["package"] == {"id": pkgs["rain"], "slug": "rain",
                                              "title": "Rain", "category": "sleep",
                                              "required_tier": "starter", "image_url": None,
                                              "archived": True}
    assert _start(client, headers, pkgs["rain"]).status_code == 404


# ---- sessions left open ------------------------------------------------------------------

NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def open_sessions(pkgs, db_session, make_user):
    """Two sessions past their limit and two still within it, as of the real clock."""
    NOW = clock.now()  # noqa: N806  (the CLI and the job read the real clock)
    starter = make_user("st@example.com")
    pro = make_user("pro@example.com", tier="pro")
    rain_track = track_ids(pkgs["rain"])[0]
    stale_starter = listening.start_session(starter.id, pkgs["rain"], rain_track,
                                            now=NOW - timedelta(minutes=20))
    listening.heartbeat(starter.id, stale_starter.id, 800, now=NOW - timedelta(minutes=6))
    fresh_starter = listening.start_session(starter.id, pkgs["rain"],
                                            now=NOW - timedelta(minutes=5))
    stale_pro = listening.start_session(pro.id, pkgs["gamma"], now=NOW - timedelta(hours=4))
    fresh_pro = listening.start_session(pro.id, pkgs["gamma"], now=NOW - timedelta(hours=2))
    return {"stale": [stale_starter.id, stale_pro.id], "fresh": [fresh_starter.id, fresh_pro.id],
            "now": NOW}


def test_close_stale_sessions(app, db_session, open_sessions):
    NOW = open_sessions["now"]  # noqa: N806
    assert listening.close_stale_sessions(now=NOW) == 2
    db_session.expire_all()
    starter_session = db_session.get(ListeningSession, open_sessions["stale"][0])
    assert starter_session.status == "ended" and starter_session.end_reason == "expired"
    assert starter_session.ended_at == starter_session.started_at + timedelta(minutes=15)
    assert starter_session.listened_seconds == 800
    # 800 s of the 900 s the tier allows: completed by the server's count, the client said nothing
    assert starter_session.completed is True and starter_session.client_completed is None
    pro_session = db_session.get(ListeningSession, open_sessions["stale"][1])
    assert pro_session.ended_at == pro_session.started_at + timedelta(hours=3)
    assert pro_session.completed is False  # nothing listened
    for sid in open_sessions["fresh"]:
        assert db_session.get(ListeningSession, sid).status == "open"
    assert db_session.get(UserAnalytics, starter_session.user_id).stale_since is not None
    assert listening.close_stale_sessions(now=NOW) == 0  # running it again changes nothing


def test_close_stale_sessions_concurrently(app, db_session, pkgs, make_user):
    user = make_user("many@example.com", tier="pro")
    for i in range(40):
        listening.start_session(user.id, pkgs["rain"], now=NOW - timedelta(hours=4, minutes=i))
    results, barrier = [], threading.Barrier(4)

    def run():
        with app.app_context():
            barrier.wait()
            results.append(listening.close_stale_sessions(now=NOW))
            db.session.remove()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 40
    assert db_session.execute(select(func.count(ListeningSession.id))
                              .where(ListeningSession.status == "open")).scalar_one() == 0


def test_close_stale_sessions_cli_and_job(app, runner, db_session, open_sessions):
    res = runner.invoke(args=["sonicus", "close-stale-sessions"])
    assert res.exit_code == 0 and "Closed 2 stale sessions." in res.output
    from sonicus.services.listening import close_stale_sessions

    enqueue(close_stale_sessions, queue=QUEUE_MAINTENANCE)
    make_worker(app, simple=True).work(burst=True, with_scheduler=False)
    assert db_session.execute(select(func.count(ListeningSession.id))
                              .where(ListeningSession.status == "open")).scalar_one() == 2


def test_start_counts_day_of_start(pkgs, db_session, make_user):
    user = make_user("d@example.com")
    session = listening.start_session(user.id, pkgs["rain"],
                                      now=datetime(2026, 3, 1, 23, 59, tzinfo=UTC))
    assert session.local_day == date(2026, 3, 1)
