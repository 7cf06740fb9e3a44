"""Completion is the server's word: completed only at 80% of the playable length listened, by
the server's count; refunded taps and sessions under a minute count nowhere."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sonicus import clock


def _complete(client, headers, session_id, **body):
    res = client.post(f"/api/user/sessions/{session_id}/complete", json=body, headers=headers)
    assert res.status_code == 200, res.json
    return res.json["data"]


def test_completion_is_the_servers_word(client, auth, redis_client, make_user, make_package,
                                        set_clock):
    """The black-box review: five 1-second sessions claiming `completed: true, mood_after: 10`
    must not make completed sessions, a streak, a mood change or a top recommendation."""
    cheat = make_package("cheat", tracks=(600,)).id
    popular = make_package("popular", popularity=50).id
    user = make_user("claims@example.com")
    headers = auth("claims@example.com")
    start = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    for n in range(5):
        set_clock(start + timedelta(minutes=n))
        sid = client.post("/api/user/sessions", json={"package_id": cheat, "mood_before": 2},
                          headers=headers).json["data"]["id"]
        set_clock(start + timedelta(minutes=n, seconds=1))
        data = _complete(client, headers, sid, listened_seconds=1, completed=True,
                         mood_after=10)
        assert data["completed"] is False and data["client_completed"] is True
        assert data["end_reason"] == "stopped" and data["listened_seconds"] == 1

    stats = client.get("/api/user/analytics", headers=headers).json["data"]
    assert stats["total_sessions"] == 5
    assert stats["completed_sessions"] == 0 and stats["completion_rate"] == 0.0
    assert stats["current_streak_days"] == 0 and stats["longest_streak_days"] == 0
    assert stats["avg_mood_change"] is None and stats["mood_by_package"] == []
    recommended = client.get("/api/user/dashboard", headers=headers).json["data"]["recommended"]
    assert recommended[0]["package"]["id"] == popular, recommended
    assert all(p["reason"]["kind"] != "own_outcome" and p["expected_mood_change"] == 0
               for p in recommended)

    # Listening for real: 8 of the 10 minutes is 80%; the claim alone decides nothing.
    set_clock(start + timedelta(hours=1))
    sid = client.post("/api/user/sessions", json={"package_id": cheat, "mood_before": 4},
                      headers=headers).json["data"]["id"]
    set_clock(start + timedelta(hours=1, minutes=8))
    data = _complete(client, headers, sid, listened_seconds=480, completed=False, mood_after=7)
    assert data["completed"] is True and data["client_completed"] is False
    assert data["end_reason"] == "completed"
    redis_client.delete(f"sonicus:cache:analytics:{user.id}")  # the refresh job's work
    stats = client.get("/api/user/analytics", headers=headers).json["data"]
    assert stats["completed_sessions"] == 1 and stats["current_streak_days"] == 1
    assert stats["avg_mood_change"] == 3.0


def test_completion_needs_80_percent_of_what_can_be_played(db_session, make_user, make_package):
    """The playable length is the track's (else the package's), capped by the tier."""
    from sonicus.models import SoundPackage
    from sonicus.services import listening

    long = make_package("long", tracks=(3000, 1200)).id  # 70 minutes
    second_track = db_session.get(SoundPackage, long).tracks[1].id
    starter = make_user("s@example.com")  # 15 minutes at most
    pro = make_user("p@example.com", tier="pro")  # no maximum
    t0 = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    later = t0 + timedelta(hours=2)

    def ended(user, listened, track_id=None):
        session = listening.start_session(user.id, long, track_id, now=t0)
        return listening.complete_session(user.id, session.id, listened, False, now=later)

    assert ended(starter, 719).completed is False  # 80% of 900 s is 720
    assert ended(starter, 720).completed is True
    assert ended(pro, 3359).completed is False  # 80% of 4200 s is 3360
    assert ended(pro, 3360).completed is True
    assert ended(pro, 959, track_id=second_track).completed is False  # 80% of the 1200 s track
    assert ended(pro, 960, track_id=second_track).completed is True


def test_short_and_refunded_sessions_count_nowhere(client, auth, db_session, make_user,
                                                   make_package, make_session):
    from sonicus.services.recommendation_model import rebuild_recommendation_model

    tiny = make_package("tiny", tracks=(40,), popularity=900).id
    real = make_package("real").id
    user = make_user("short@example.com")
    headers = auth("short@example.com")
    today = clock.local_day(clock.now(), "UTC", 0)
    # Completed by the server's word (80% of 40 s), but under a minute listened; and a tap
    # whose quota was given back. Both on the days before today, both lifting the mood a lot.
    make_session(user, tiny, today - timedelta(days=1), minutes=0.6, completed=True,
                 mood_before=1, mood_after=10)
    make_session(user, tiny, today - timedelta(days=2), minutes=0.4, completed=True,
                 counts_toward_quota=False, mood_before=1, mood_after=9)
    make_session(user, real, today, minutes=10, completed=True, mood_before=5, mood_after=6)

    stats = client.get("/api/user/analytics", headers=headers).json["data"]
    assert stats["total_sessions"] == 3  # listening is still listening
    assert stats["completed_sessions"] == 1 and stats["completion_rate"] == 1.0
    assert stats["current_streak_days"] == 1 and stats["longest_streak_days"] == 1
    assert stats["avg_mood_change"] == 1.0
    assert stats["mood_by_package"] == [
        {"package_id": real, "title": "Real", "sessions": 1, "avg_mood_change": 1.0}]
    rebuild_recommendation_model()
    recommended = client.get("/api/user/dashboard", headers=headers).json["data"]["recommended"]
    assert [(p["package"]["id"], p["reason"]["kind"]) for p in recommended][:2] == [
        (real, "own_outcome"), (tiny, "popular")]
    assert recommended[1]["expected_mood_change"] == 0


def test_the_stale_sweep_completes_by_listened_time_only(db_session, make_user, make_package):
    from sonicus.models import ListeningSession
    from sonicus.services import listening

    package = make_package("rain", tracks=(600,)).id
    user = make_user("sweep@example.com")
    t0 = datetime(2026, 6, 10, 9, 0, tzinfo=UTC)
    heard = listening.start_session(user.id, package, now=t0)
    listening.heartbeat(user.id, heard.id, 500, now=t0 + timedelta(minutes=9))
    barely = listening.start_session(user.id, package, now=t0)
    listening.heartbeat(user.id, barely.id, 100, now=t0 + timedelta(minutes=9))
    assert listening.close_stale_sessions(now=t0 + timedelta(hours=1)) == 2
    db_session.expire_all()
    heard, barely = (db_session.get(ListeningSession, s.id) for s in (heard, barely))
    assert (heard.completed, heard.client_completed, heard.end_reason) == (True, None, "expired")
    assert (barely.completed, barely.client_completed) == (False, None)
    assert date(2026, 6, 10) == heard.local_day
