"""Offline-first listening: retry-safe starts, resume anywhere, download licences, the upload of
sessions played offline, and sessions abandoned without a heartbeat. Real PostgreSQL, Redis and
threads."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, time, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select, update

from sonicus import clock, media
from sonicus.extensions import db
from sonicus.models import ListeningSession, SoundPackage, Track
from sonicus.services import analytics, listening
from sonicus.services.subscriptions import GRACE_PERIOD, process_due_subscriptions

SECRET = "test-media-secret"  # the test app's MEDIA_URL_SECRET


def _tomorrow_noon() -> datetime:
    """A moment after every event the fixtures write at the real time."""
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), time(12), UTC)


def _cid() -> str:
    return str(uuid.uuid4())


def _item(package_id, started, minutes=10, listened=None, **extra) -> dict:
    return {"client_id": _cid(), "package_id": package_id, "started_at": started.isoformat(),
            "ended_at": (started + timedelta(minutes=minutes)).isoformat(),
            "listened_seconds": int(minutes * 60) if listened is None else listened, **extra}


def _sync(client, headers, items):
    return client.post("/api/user/sessions/sync", json={"sessions": items}, headers=headers)


def _tracks(package_id) -> list[int]:
    return list(db.session.execute(select(Track.id).where(Track.package_id == package_id)
                                   .order_by(Track.position)).scalars())


def _premium_trial_without_a_card(client, headers, set_clock) -> datetime:
    """A Premium trial started tomorrow at noon, with no card on file; when it ends."""
    set_clock(_tomorrow_noon())
    trial = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                        headers=headers)
    assert trial.status_code == 200 and trial.json["data"]["status"] == "trialing", trial.json
    return datetime.fromisoformat(trial.json["data"]["trial_ends_at"])


def _count_sessions(user_id) -> int:
    return db.session.execute(select(func.count(ListeningSession.id))
                              .where(ListeningSession.user_id == user_id)).scalar_one()


@pytest.fixture
def pkgs(db_session, make_package):
    made = {"rain": make_package("rain", tracks=(1200, 600)).id,
            "short": make_package("short", tracks=(300,)).id,
            "delta": make_package("delta", minimum_tier="premium", tracks=(1800,)).id,
            "gamma": make_package("gamma", minimum_tier="pro_exclusive", tracks=(900,)).id}
    # in the catalog since long before any listening these tests upload
    db_session.execute(update(SoundPackage).values(
        created_at=datetime.now(UTC) - timedelta(days=60)))
    db_session.commit()
    return made


@pytest.fixture
def refreshes(monkeypatch):
    """How many analytics refreshes were requested, per user (the real function still runs)."""
    calls = []
    real = analytics.request_refresh

    def counting(user_id):
        calls.append(user_id)
        return real(user_id)

    monkeypatch.setattr(analytics, "request_refresh", counting)
    return calls


# ---- retry-safe starts ---------------------------------------------------------------------

def test_a_start_sent_again_with_its_client_id_is_the_same_session(client, auth, pkgs,
                                                                     make_user, db_session):
    user = make_user("again@example.com")
    headers = auth("again@example.com")
    body = {"package_id": pkgs["rain"], "client_id": _cid()}
    first = client.post("/api/user/sessions", json=body, headers=headers)
    second = client.post("/api/user/sessions", json=body, headers=headers)
    assert first.status_code == 201 and second.status_code == 200, second.json
    assert first.json["data"]["id"] == second.json["data"]["id"]
    assert second.json["data"]["client_id"] == body["client_id"]
    usage = client.get("/api/user/subscription", headers=headers).json["data"]["usage"]
    assert usage["sessions_today"] == 1  # the retry cost no second slot
    # another user may use the same client id for their own session
    make_user("other@example.com")
    other = client.post("/api/user/sessions", json=body, headers=auth("other@example.com"))
    assert other.status_code == 201 and other.json["data"]["id"] != first.json["data"]["id"]
    assert _count_sessions(user.id) == 1
    bad = client.post("/api/user/sessions", json={**body, "client_id": "nope"},
                      headers=headers)
    assert bad.status_code == 422 and any(e.startswith("client_id") for e in bad.json["errors"])


def test_concurrent_starts_with_one_client_id_create_one_session(app, auth, pkgs, make_user,
                                                                 db_session):
    user = make_user("twice@example.com")
    headers = auth("twice@example.com")
    body = {"package_id": pkgs["rain"], "client_id": _cid()}
    barrier = threading.Barrier(8)
    answers = [None] * 8

    def run(index):
        own = app.test_client()
        barrier.wait()
        res = own.post("/api/user/sessions", json=body, headers=headers)
        answers[index] = (res.status_code, res.json["data"]["id"])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(s for s, _ in answers) == [200] * 7 + [201], answers
    assert len({sid for _, sid in answers}) == 1
    assert _count_sessions(user.id) == 1


# ---- resume anywhere -----------------------------------------------------------------------

def test_heartbeat_says_when_the_claim_was_clamped(client, auth, pkgs, make_user, db_session):
    user = make_user("hb@example.com")
    headers = auth("hb@example.com")
    sid = listening.start_session(user.id, pkgs["rain"],
                                  now=clock.now() - timedelta(minutes=5)).id
    res = client.patch(f"/api/user/sessions/{sid}", headers=headers,
                       json={"listened_seconds": 5000})
    assert res.status_code == 200, res.json
    assert res.json["data"]["clamped"] is True
    assert 300 <= res.json["data"]["listened_seconds"] <= 305
    res = client.patch(f"/api/user/sessions/{sid}", headers=headers,
                       json={"listened_seconds": 200})
    assert res.json["data"]["clamped"] is False  # under the stored figure: nothing cut


def test_playback_follows_the_listener_across_devices(client, auth, pkgs, make_user,
                                                      db_session, set_clock):
    make_user("roam@example.com")
    headers = auth("roam@example.com")  # the same account on a phone and a laptop
    rain1, rain2 = _tracks(pkgs["rain"])
    t0 = set_clock(_tomorrow_noon())
    phone = client.post("/api/user/sessions", headers=headers,
                        json={"package_id": pkgs["rain"], "track_id": rain1}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=3))
    client.patch(f"/api/user/sessions/{phone}", headers=headers,
                 json={"listened_seconds": 180, "position_seconds": 180})
    laptop = client.post("/api/user/sessions", headers=headers,
                         json={"package_id": pkgs["short"]}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=5))
    client.patch(f"/api/user/sessions/{laptop}", headers=headers,
                 json={"listened_seconds": 100, "position_seconds": 100})
    # the laptop picks the rain package up where the phone left it, then moves on a track
    assert client.get("/api/user/playback", headers=headers).json["data"][1]["position_seconds"] \
        == 180
    later = client.post("/api/user/sessions", headers=headers,
                        json={"package_id": pkgs["rain"], "track_id": rain1}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=9))
    res = client.post(f"/api/user/sessions/{later}/complete", headers=headers,
                      json={"listened_seconds": 240, "completed": False, "track_id": rain2,
                            "position_seconds": 40})
    assert res.status_code == 200, res.json

    res = client.get("/api/user/playback", headers=headers)
    assert res.status_code == 200, res.json
    assert res.json["pagination"]["total"] == 2
    first, second = res.json["data"]
    assert (first["package_id"], first["track_id"], first["position_seconds"]) == \
        (pkgs["rain"], rain2, 40)
    assert datetime.fromisoformat(first["updated_at"]) == t0 + timedelta(minutes=9)
    assert (second["package_id"], second["position_seconds"]) == (pkgs["short"], 100)

    cont = client.get("/api/user/dashboard", headers=headers).json["data"]["continue_listening"]
    assert cont["session_id"] == later and cont["position_seconds"] == 40
    assert cont["track"]["id"] == rain2 and cont["package"]["id"] == pkgs["rain"]

    # a track of another package is not a place to resume
    res = client.patch(f"/api/user/sessions/{laptop}", headers=headers,
                       json={"listened_seconds": 100, "track_id": rain1})
    assert res.status_code == 404
    make_user("nosy@example.com")
    assert client.get("/api/user/playback", headers=auth("nosy@example.com")).json["data"] == []


def test_moving_to_another_track_without_a_position_resumes_at_its_start(
        client, auth, pkgs, make_user, db_session, set_clock):
    make_user("skip@example.com")
    headers = auth("skip@example.com")
    rain1, rain2 = _tracks(pkgs["rain"])  # 1200 s, then 600 s
    t0 = set_clock(_tomorrow_noon())
    sid = client.post("/api/user/sessions", headers=headers,
                      json={"package_id": pkgs["rain"], "track_id": rain1}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=17))
    client.patch(f"/api/user/sessions/{sid}", headers=headers,
                 json={"listened_seconds": 1000, "position_seconds": 1000})
    set_clock(t0 + timedelta(minutes=18))
    res = client.patch(f"/api/user/sessions/{sid}", headers=headers,
                       json={"listened_seconds": 1060, "track_id": rain2})
    assert res.status_code == 200, res.json

    resume = client.get("/api/user/playback", headers=headers).json["data"][0]
    # 1000 s into the first track says nothing of the second, which is only 600 s long
    assert (resume["track_id"], resume["position_seconds"]) == (rain2, 0)
    assert datetime.fromisoformat(resume["updated_at"]) == t0 + timedelta(minutes=18)
    cont = client.get("/api/user/dashboard", headers=headers).json["data"]["continue_listening"]
    assert cont["track"]["id"] == rain2 and cont["position_seconds"] == 0


# ---- abandoned sessions ------------------------------------------------------------------------

def test_a_session_never_heartbeated_is_abandoned_not_a_zero_minute_listen(
        client, auth, pkgs, make_user, db_session):
    user = make_user("left@example.com")
    headers = auth("left@example.com")
    started = clock.now() - timedelta(hours=2)
    left = listening.start_session(user.id, pkgs["rain"], now=started).id
    played = listening.start_session(user.id, pkgs["rain"], now=started).id
    listening.heartbeat(user.id, played, 600, now=started + timedelta(minutes=10))

    assert listening.close_stale_sessions() == 2
    rows = {s.id: s for s in db_session.execute(select(ListeningSession)).scalars()}
    assert rows[left].end_reason == "abandoned" and rows[left].completed is False
    assert rows[left].counts_toward_quota is True  # a start still used the day's slot
    assert rows[played].end_reason == "expired"
    data = client.get("/api/user/analytics", headers=headers).json["data"]
    assert data["total_sessions"] == 1
    res = client.get(f"/api/user/sessions/{left}", headers=headers)
    assert res.json["data"]["end_reason"] == "abandoned"


# ---- downloads ---------------------------------------------------------------------------------

def _check_signed(url: str, lifetime: int):
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert int(query["e"]) == lifetime
    assert media.verify_stream_path(SECRET, parts.path, query["st"], query["ts"], query["e"])


def test_downloads_need_the_feature_or_an_assignment(client, auth, admin_auth, pkgs, make_user,
                                                     db_session, set_clock):
    user = make_user("free@example.com")
    headers = auth("free@example.com")
    res = client.post("/api/user/downloads", json={"package_id": pkgs["rain"]}, headers=headers)
    assert res.status_code == 403 and res.json["code"] == "feature_not_in_tier"

    now = set_clock(_tomorrow_noon())
    make_user("admin@example.com", admin=True)
    until = now + timedelta(days=3)
    assert client.post(f"/api/admin/users/{user.id}/packages", headers=admin_auth(),
                       json={"package_id": pkgs["delta"],
                             "expires_at": until.isoformat()}).status_code == 201
    res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    data = res.json["data"]
    assert datetime.fromisoformat(data["licence_expires_at"]) == until  # the assignment's end
    [track] = data["tracks"]
    _check_signed(track["download_url"], 7200)
    assert datetime.fromisoformat(track["expires_at"]) == now + timedelta(hours=2)

    listed = client.get("/api/user/downloads", headers=headers).json["data"]
    assert [d["package_id"] for d in listed] == [pkgs["delta"]]
    set_clock(until + timedelta(seconds=1))  # the assignment ended: so did the licence
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []


def test_a_download_url_stops_working_when_its_licence_ends(client, auth, admin_auth, pkgs,
                                                           make_user, db_session, set_clock):
    """A licence that ends within minutes (its assignment's end) gives download URLs that
    stop working then, not 2 hours later."""
    user = make_user("brief@example.com")
    headers = auth("brief@example.com")
    make_user("admin@example.com", admin=True)
    now = set_clock(_tomorrow_noon())
    until = now + timedelta(minutes=10)
    assert client.post(f"/api/admin/users/{user.id}/packages", headers=admin_auth(),
                       json={"package_id": pkgs["delta"],
                             "expires_at": until.isoformat()}).status_code == 201
    for answer in (client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                               headers=headers).json["data"],
                   client.get("/api/user/downloads", headers=headers).json["data"][0]):
        assert datetime.fromisoformat(answer["licence_expires_at"]) == until
        [track] = answer["tracks"]
        assert datetime.fromisoformat(track["expires_at"]) == until
        _check_signed(track["download_url"], 600)
        parts = urlsplit(track["download_url"])
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert not media.verify_stream_path(SECRET, parts.path, query["st"], query["ts"],
                                            query["e"], now=until + timedelta(seconds=1))


def _still_fetches(track: dict, at: datetime) -> bool:
    """Whether the media server would serve this download URL at ``at``."""
    parts = urlsplit(track["download_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return media.verify_stream_path(SECRET, parts.path, query["st"], query["ts"], query["e"],
                                    now=at)


def test_a_download_url_outlives_an_erasure_or_a_licence_end_by_hours_not_a_day(
        client, auth, admin_auth, pkgs, make_user, db_session, set_clock):
    """The media server checks only the signature and its lifetime (it cannot know the account
    or the licence): a URL given before the account was erased, the licence ended or the
    assignment revoked must stop working within MEDIA_DOWNLOAD_URL_TTL_SECONDS (2 hours),
    not a day later. A device still entitled asks GET /api/user/downloads for fresh URLs."""
    now = set_clock(_tomorrow_noon())
    make_user("admin@example.com", admin=True)
    assigned = make_user("assigned@example.com")
    assert client.post(f"/api/admin/users/{assigned.id}/packages", headers=admin_auth(),
                       json={"package_id": pkgs["delta"]}).status_code == 201
    given = {}
    for email in ("erased@example.com", "ended@example.com", "assigned@example.com",
                  "entitled@example.com"):
        if email != "assigned@example.com":
            make_user(email, tier="premium")
        res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                          headers=auth(email))
        assert res.status_code == 201, res.json
        [track] = res.json["data"]["tracks"]
        assert datetime.fromisoformat(track["expires_at"]) == now + timedelta(hours=2)
        given[email] = track
    assert client.delete("/api/user/profile", headers=auth("erased@example.com")) \
        .status_code == 200
    assert client.delete(f"/api/user/downloads/{pkgs['delta']}",
                         headers=auth("ended@example.com")).status_code == 200
    assert client.delete(f"/api/admin/users/{assigned.id}/packages/{pkgs['delta']}",
                         headers=admin_auth()).status_code in (200, 204)

    later = set_clock(now + timedelta(hours=2, seconds=1))
    for email, track in given.items():
        assert _still_fetches(track, now + timedelta(hours=1, minutes=59)), email
        assert not _still_fetches(track, later), email
    assert client.get("/api/user/downloads", headers=auth("ended@example.com")) \
        .json["data"] == []
    assert client.get("/api/user/downloads", headers=auth("assigned@example.com")) \
        .json["data"] == []
    [fresh] = client.get("/api/user/downloads", headers=auth("entitled@example.com")) \
        .json["data"][0]["tracks"]
    assert _still_fetches(fresh, later)
    assert datetime.fromisoformat(fresh["expires_at"]) == later + timedelta(hours=2)


def test_licence_lifecycle_renew_end_and_privacy(client, auth, pkgs, make_user, db_session,
                                                 set_clock):
    make_user("prem@example.com", tier="premium")
    headers = auth("prem@example.com")
    now = set_clock(_tomorrow_noon())
    res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) == \
        now + timedelta(days=30)
    locked = client.post("/api/user/downloads", json={"package_id": pkgs["gamma"]},
                         headers=headers)
    assert locked.status_code == 403 and locked.json["code"] == "package_locked"
    assert client.post("/api/user/downloads", json={"package_id": 99999},
                       headers=headers).status_code == 404

    later = set_clock(now + timedelta(days=20))
    renewed = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                          headers=headers)
    assert datetime.fromisoformat(renewed.json["data"]["licence_expires_at"]) == \
        later + timedelta(days=30)

    make_user("thief@example.com", tier="premium")
    thief = auth("thief@example.com")
    assert client.delete(f"/api/user/downloads/{pkgs['delta']}", headers=thief).status_code \
        == 404
    assert len(client.get("/api/user/downloads", headers=headers).json["data"]) == 1

    assert client.delete(f"/api/user/downloads/{pkgs['delta']}", headers=headers).status_code \
        == 200
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []
    assert client.delete(f"/api/user/downloads/{pkgs['delta']}", headers=headers).status_code \
        == 404
    set_clock(later + timedelta(days=31))
    again = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                        headers=headers)
    assert again.status_code == 201
    assert len(client.get("/api/user/downloads", headers=headers).json["data"]) == 1


def test_a_downgrade_ends_the_licence_at_the_period_end(client, auth, billing, pkgs, make_user,
                                                        db_session, set_clock):
    make_user("down@example.com")
    headers = auth("down@example.com")
    set_clock(_tomorrow_noon())
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "pro")["current_period_end"])
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200  # at the end of the period
    set_clock(period_end - timedelta(days=10))
    res = client.post("/api/user/downloads", json={"package_id": pkgs["gamma"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) == period_end
    kept = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                       headers=headers)  # premium opens it after the downgrade too
    assert datetime.fromisoformat(kept.json["data"]["licence_expires_at"]) > period_end

    set_clock(period_end + timedelta(minutes=1))
    process_due_subscriptions(now=clock.now())
    db.session.remove()
    listed = client.get("/api/user/downloads", headers=headers).json["data"]
    assert [d["package_id"] for d in listed] == [pkgs["delta"]]


def test_a_downgrade_scheduled_after_the_grant_ends_the_licence_before_the_job_runs(
        client, auth, billing, pkgs, make_user, db_session, set_clock):
    """A licence granted for 30 days, then a downgrade scheduled: once the period has ended
    the licence is over (not listed, nothing to end), even before the expiry job writes the
    downgrade."""
    make_user("later@example.com")
    headers = auth("later@example.com")
    t0 = set_clock(_tomorrow_noon())
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "pro")["current_period_end"])
    set_clock(t0 + timedelta(days=20))
    res = client.post("/api/user/downloads", json={"package_id": pkgs["gamma"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) > period_end
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200  # at the end of the period
    set_clock(period_end + timedelta(seconds=30))  # the job has not run yet
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []
    res = client.delete(f"/api/user/downloads/{pkgs['gamma']}", headers=headers)
    assert res.status_code == 404, res.json


def test_a_licence_of_a_public_package_ends_when_the_tier_loses_downloads(
        client, auth, billing, pkgs, make_user, db_session, set_clock):
    """Starter opens a public package but keeps nothing offline: a Premium licence of it ends
    at the period's end of a cancel, as one of a Premium package does."""
    make_user("leaving@example.com")
    headers = auth("leaving@example.com")
    t0 = set_clock(_tomorrow_noon())
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "premium")["current_period_end"])
    set_clock(t0 + timedelta(days=5))  # 30 days from now are past the period's end
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    res = client.post("/api/user/downloads", json={"package_id": pkgs["rain"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) == period_end
    set_clock(period_end - timedelta(minutes=1))
    assert [d["package_id"] for d in
            client.get("/api/user/downloads", headers=headers).json["data"]] == [pkgs["rain"]]
    set_clock(period_end + timedelta(seconds=30))
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []


def test_a_trial_without_a_card_gives_licences_that_end_with_the_trial(
        client, auth, pkgs, make_user, db_session, set_clock):
    make_user("trial@example.com")
    headers = auth("trial@example.com")
    trial_ends_at = _premium_trial_without_a_card(client, headers, set_clock)
    set_clock(trial_ends_at - timedelta(days=2))
    res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    # without a card the trial falls back to Starter, which does not open the package
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) == trial_ends_at

    set_clock(trial_ends_at + timedelta(minutes=1))
    process_due_subscriptions(now=clock.now())
    db.session.remove()
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []
    played = _item(pkgs["delta"], trial_ends_at + timedelta(seconds=30), minutes=0.5)
    assert _sync(client, headers, [played]).json["data"]["results"][0]["code"] == \
        "package_locked"  # what the licence promised is what a later upload is judged by


def test_a_download_once_the_trial_has_ended_is_judged_by_the_tier_after_it(
        client, auth, pkgs, make_user, db_session, set_clock):
    """In the minute before the expiry job writes the end of a trial without a card, a
    download is refused as Starter would be (no licence that has ended as it is granted)."""
    make_user("lapsed@example.com")
    headers = auth("lapsed@example.com")
    trial_ends_at = _premium_trial_without_a_card(client, headers, set_clock)
    set_clock(trial_ends_at + timedelta(seconds=20))  # the job has not run yet
    res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                      headers=headers)
    assert res.status_code == 403 and res.json["code"] == "feature_not_in_tier", res.json
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []


def test_a_sync_once_the_trial_has_ended_judges_later_items_by_the_tier_after_it(
        client, auth, pkgs, make_user, db_session, set_clock):
    """Before the expiry job writes the end of a trial without a card, an item played after
    it is judged by Starter and one played before it by the trial's tier."""
    make_user("synclapse@example.com")
    headers = auth("synclapse@example.com")
    trial_ends_at = _premium_trial_without_a_card(client, headers, set_clock)
    set_clock(trial_ends_at + timedelta(minutes=40))  # the job has not run yet
    res = _sync(client, headers, [_item(pkgs["delta"], trial_ends_at - timedelta(minutes=20)),
                                  _item(pkgs["delta"], trial_ends_at + timedelta(minutes=5))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == [
        ("created", None), ("rejected", "package_locked")], res.json


def test_a_failed_renewal_gives_licences_that_end_with_the_grace(
        client, auth, billing, pkgs, make_user, db_session, set_clock):
    make_user("late@example.com")
    headers = auth("late@example.com")
    set_clock(_tomorrow_noon())
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "premium")["current_period_end"])
    billing.arrange("late@example.com", status="past_due", past_due_since=period_end)
    set_clock(period_end + timedelta(days=1))
    res = client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                      headers=headers)
    assert res.status_code == 201, res.json
    grace_ends = period_end + GRACE_PERIOD  # then Starter, unless a payment arrives first
    assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) == grace_ends
    public = client.post("/api/user/downloads", json={"package_id": pkgs["rain"]},
                         headers=headers)  # Starter opens it, but keeps nothing offline
    assert datetime.fromisoformat(public.json["data"]["licence_expires_at"]) == grace_ends

    set_clock(grace_ends + timedelta(minutes=1))
    process_due_subscriptions(now=clock.now())
    db.session.remove()
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []


# ---- sync --------------------------------------------------------------------------------------

def test_sync_stores_clamped_sessions_and_a_retry_changes_nothing(
        client, auth, pkgs, make_user, db_session, set_clock, refreshes):
    user = make_user("off@example.com")  # starter: 15 min sessions, 3 a day
    headers = auth("off@example.com")
    now = set_clock(_tomorrow_noon())
    rain1 = _tracks(pkgs["rain"])[0]
    items = [
        _item(pkgs["rain"], now - timedelta(hours=3), minutes=60, listened=3600,
              track_id=rain1, completed=True, mood_before=3, mood_after=7,
              position_seconds=900),
        _item(pkgs["short"], now - timedelta(hours=1), minutes=2, listened=600),
    ]
    res = _sync(client, headers, items)
    assert res.status_code == 200, res.json
    results = res.json["data"]["results"]
    assert [r["status"] for r in results] == ["created", "created"]
    assert [r["client_id"] for r in results] == [i["client_id"] for i in items]
    first = client.get(f"/api/user/sessions/{results[0]['session_id']}", headers=headers)
    data = first.json["data"]
    assert data["listened_seconds"] == 900   # the tier's 15 minutes, not the claimed hour
    assert data["completed"] is True and data["client_completed"] is True
    assert data["tier"] == "starter" and data["status"] == "ended"
    second = client.get(f"/api/user/sessions/{results[1]['session_id']}", headers=headers)
    assert second.json["data"]["listened_seconds"] == 120  # two minutes of wall time
    assert refreshes == [user.id]   # one refresh for the batch

    retry = _sync(client, headers, items)
    assert [r["status"] for r in retry.json["data"]["results"]] == ["unchanged"] * 2
    assert [r["session_id"] for r in retry.json["data"]["results"]] == \
        [r["session_id"] for r in results]
    assert _count_sessions(user.id) == 2 and refreshes == [user.id]
    playback = client.get("/api/user/playback", headers=headers).json["data"]
    assert playback[0]["package_id"] == pkgs["rain"] and playback[0]["position_seconds"] == 900


def test_sync_results_echo_each_client_id_as_the_item_spelled_it(
        client, auth, pkgs, make_user, db_session, set_clock):
    user = make_user("spelling@example.com")
    headers = auth("spelling@example.com")
    now = set_clock(_tomorrow_noon())
    plain = [_cid() for _ in range(4)]
    spelled = ["{" + plain[0].upper() + "}", plain[1].upper(), plain[2].replace("-", ""),
               "urn:uuid:" + plain[3]]
    items = [{**_item(pkgs["rain"], now - timedelta(hours=6 - i)), "client_id": spelled[i]}
             for i in range(3)]
    items.append({**_item(pkgs["rain"], now + timedelta(hours=1)), "client_id": spelled[3]})
    res = _sync(client, headers, items)
    assert res.status_code == 200, res.json
    results = res.json["data"]["results"]
    assert [r["status"] for r in results] == ["created"] * 3 + ["rejected"]
    assert [r["client_id"] for r in results] == spelled
    stored = db.session.execute(select(ListeningSession.client_id)
                                .where(ListeningSession.user_id == user.id)
                                .order_by(ListeningSession.started_at)).scalars().all()
    assert stored == plain[:3]  # kept in the canonical form
    # a retry in another spelling finds the same sessions and is answered in its own
    again = [{**item, "client_id": plain[i]} for i, item in enumerate(items[:3])]
    retry = _sync(client, headers, again).json["data"]["results"]
    assert [r["status"] for r in retry] == ["unchanged"] * 3
    assert [r["client_id"] for r in retry] == plain[:3]
    assert [r["session_id"] for r in retry] == [r["session_id"] for r in results[:3]]
    assert _count_sessions(user.id) == 3
    # two spellings of one id in a batch are still the same id twice
    twice = _sync(client, headers, [{**items[0], "client_id": plain[0].upper()},
                                    {**items[1], "client_id": plain[0]}])
    assert twice.status_code == 422, twice.json
    assert any(e.startswith("sessions.1.client_id:") for e in twice.json["errors"])


def test_a_start_echoes_its_client_id_as_the_client_spelled_it(client, auth, pkgs, make_user,
                                                               db_session):
    user = make_user("braced@example.com")
    headers = auth("braced@example.com")
    plain = _cid()
    braced = "{" + plain.upper() + "}"
    first = client.post("/api/user/sessions", json={"package_id": pkgs["rain"],
                                                    "client_id": braced}, headers=headers)
    assert first.status_code == 201 and first.json["data"]["client_id"] == braced, first.json
    again = client.post("/api/user/sessions", json={"package_id": pkgs["rain"],
                                                    "client_id": plain}, headers=headers)
    assert again.status_code == 200 and again.json["data"]["id"] == first.json["data"]["id"]
    assert again.json["data"]["client_id"] == plain
    stored = client.get(f"/api/user/sessions/{first.json['data']['id']}", headers=headers)
    assert stored.json["data"]["client_id"] == plain  # the session itself keeps one form
    assert _count_sessions(user.id) == 1


def test_every_rejection_has_its_code(client, auth, pkgs, make_user, db_session, set_clock,
                                      make_session):
    user = make_user("rules@example.com")  # starter, UTC
    headers = auth("rules@example.com")
    now = set_clock(_tomorrow_noon())
    other = _tracks(pkgs["short"])[0]   # a track of another package
    yesterday = now - timedelta(days=1)
    for hour in (1, 2, 3):  # yesterday's quota is used
        make_session(user, pkgs["rain"], started_at=yesterday.replace(hour=hour), minutes=10)
    items = [
        _item(pkgs["rain"], now - timedelta(days=15)),
        _item(pkgs["rain"], now + timedelta(minutes=10)),
        {**_item(pkgs["rain"], now - timedelta(hours=2)),
         "ended_at": (now - timedelta(hours=3)).isoformat()},
        _item(99999, now - timedelta(hours=2)),
        _item(pkgs["rain"], now - timedelta(hours=2), track_id=other),
        _item(pkgs["delta"], now - timedelta(hours=2)),
        _item(pkgs["rain"], now - timedelta(hours=4), minutes=30),
        _item(pkgs["rain"], now - timedelta(hours=4) + timedelta(minutes=10), minutes=30),
        _item(pkgs["rain"], yesterday.replace(hour=5)),
        _item(pkgs["rain"], now - timedelta(hours=4) + timedelta(minutes=29, seconds=30)),
    ]
    res = _sync(client, headers, items)
    assert res.status_code == 200, res.json
    got = [(r["status"], r.get("code")) for r in res.json["data"]["results"]]
    assert got == [
        ("rejected", "started_at_out_of_range"),
        ("rejected", "started_at_out_of_range"),
        ("rejected", "invalid_interval"),
        ("rejected", "not_found"),
        ("rejected", "not_found"),
        ("rejected", "package_locked"),
        ("created", None),
        ("rejected", "overlap"),
        ("rejected", "daily_session_limit_reached"),
        ("created", None),   # 30 s of overlap is tolerated
    ]
    assert all(r["message"] for r in res.json["data"]["results"] if r["status"] == "rejected")
    assert _count_sessions(user.id) == 5
    again = _sync(client, headers, items)
    assert [(r["status"], r.get("code")) for r in again.json["data"]["results"]] == \
        [(s if s == "rejected" else "unchanged", c) for s, c in got]


def test_an_item_from_a_clock_ahead_within_the_skew_keeps_its_length(
        client, auth, pkgs, make_user, db_session, set_clock):
    """A device whose clock runs a minute ahead uploads a session that just ended: it is
    stored as having ended by now, with its minute of listening, not as an empty interval."""
    make_user("ahead@example.com")
    headers = auth("ahead@example.com")
    now = set_clock(_tomorrow_noon())
    item = _item(pkgs["rain"], now + timedelta(seconds=30), minutes=1, listened=60)
    [result] = _sync(client, headers, [item]).json["data"]["results"]
    assert result["status"] == "created", result
    stored = client.get(f"/api/user/sessions/{result['session_id']}",
                        headers=headers).json["data"]
    started, ended = (datetime.fromisoformat(stored["started_at"]),
                      datetime.fromisoformat(stored["ended_at"]))
    assert ended <= now and ended - started == timedelta(minutes=1), stored
    assert stored["listened_seconds"] == 60 and stored["counts_toward_quota"] is True


@pytest.mark.parametrize("body, field", [
    ({"sessions": []}, "sessions"),
    ({}, "sessions"),
    ({"sessions": "x"}, "sessions"),
    ("101", "sessions"),
    ("missing", "sessions.3.started_at"),
    ("naive", "sessions.0.started_at"),
    ("twice", "sessions.1.client_id"),
    ("extra", "sessions.0.speed"),
])
def test_a_malformed_batch_is_422_naming_the_field(client, auth, pkgs, make_user, db_session,
                                                   body, field):
    make_user("shape@example.com")
    headers = auth("shape@example.com")
    start = clock.now() - timedelta(hours=2)
    good = [_item(pkgs["rain"], start + timedelta(minutes=11 * i)) for i in range(4)]
    if body == "101":
        body = {"sessions": [_item(pkgs["rain"], start) for _ in range(101)]}
    elif body == "missing":
        good[3].pop("started_at")
        body = {"sessions": good}
    elif body == "naive":
        good[0]["started_at"] = start.replace(tzinfo=None).isoformat()
        body = {"sessions": good}
    elif body == "twice":
        good[1]["client_id"] = good[0]["client_id"]
        body = {"sessions": good}
    elif body == "extra":
        good[0]["speed"] = 2
        body = {"sessions": good}
    res = client.post("/api/user/sessions/sync", json=body, headers=headers)
    assert res.status_code == 422, res.json
    assert any(e.startswith(f"{field}:") for e in res.json["errors"]), res.json["errors"]
    assert db_session.execute(select(func.count(ListeningSession.id))).scalar_one() == 0


@pytest.mark.parametrize("control", ["\u202a", "\u202e", "\u2066", "\u2069"])
def test_a_note_with_bidirectional_controls_is_422_naming_the_item_and_nothing_is_stored(
        client, auth, pkgs, make_user, db_session, control):
    make_user("bidi@example.com")
    headers = auth("bidi@example.com")
    start = clock.now() - timedelta(hours=2)
    items = [_item(pkgs["rain"], start, note="\u200fשקט\u200e"),
             _item(pkgs["rain"], start + timedelta(minutes=11), note=f"calm{control}aes")]
    res = _sync(client, headers, items)
    assert res.status_code == 422, res.json
    assert any(e.startswith("sessions.1.note:") for e in res.json["errors"]), res.json
    assert db_session.execute(select(func.count(ListeningSession.id))).scalar_one() == 0
    kept = _sync(client, headers, items[:1])
    assert kept.status_code == 200, kept.json
    assert db_session.execute(select(ListeningSession.note)).scalar_one() == "\u200fשקט\u200e"


def test_a_batch_over_the_limit_is_refused_by_its_size_alone(client, auth, pkgs, make_user,
                                                            db_session):
    user = make_user("flood@example.com")
    headers = auth("flood@example.com")
    res = _sync(client, headers, [{}] * 5000)  # under the body limit, far over the batch's
    assert res.status_code == 422, res.json
    assert res.json["errors"] == ["sessions: Length must be between 1 and 100."]
    start = clock.now() - timedelta(hours=2)
    res = _sync(client, headers, [_item(pkgs["rain"], start)] * 101)  # also one id twice
    assert res.json["errors"] == ["sessions: Length must be between 1 and 100."]
    assert _count_sessions(user.id) == 0


def test_a_batch_full_of_unknown_fields_names_the_first_ten_of_each_item_and_counts_the_rest(
        client, auth, pkgs, make_user, db_session):
    """100 items, each with 155 fields no item has: a 422 naming, for each item, its first 10
    unknown fields exactly as before (in the order sent), then one line counting the others,
    instead of 15,500 lines (an answer of about 540 KB). An item with a few unknown fields
    still has each of them named, and nothing is stored."""
    user = make_user("noisy@example.com")
    headers = auth("noisy@example.com")
    start = clock.now() - timedelta(hours=2)
    items = []
    for i in range(100):
        item = _item(pkgs["rain"], start + timedelta(minutes=11 * i))
        item.update({f"x{n:03d}": n for n in range(155 if i else 3)})
        items.append(item)
    res = _sync(client, headers, items)
    assert res.status_code == 422 and res.json["code"] == "validation_error", res.json
    errors = res.json["errors"]
    assert [e for e in errors if e.startswith("sessions.0.")] == \
        [f"sessions.0.x{n:03d}: Unknown field." for n in range(3)]
    assert not [e for e in errors if e.startswith("sessions.0:")]
    item_1 = [e for e in errors if e.startswith(("sessions.1.", "sessions.1:"))]
    assert item_1 == [f"sessions.1.x{n:03d}: Unknown field." for n in range(10)] + [
        "sessions.1: 145 more fields refused as well; only the first 10 are named."]
    assert len(errors) == 3 + 99 * 11
    assert len(res.get_data()) < 64 * 1024
    assert _count_sessions(user.id) == 0


def test_a_batch_full_of_nul_characters_is_refused_in_a_bounded_answer(
        client, auth, pkgs, make_user, db_session):
    """100 items, each with 11 lists of 101 strings holding a NUL character (a body of
    about 1 MB): a 422 whose first errors name the first strings exactly, in at most 1,201
    lines, the last one counting those not listed (it was one line per string, 111,100)."""
    user = make_user("nul@example.com")
    headers = auth("nul@example.com")
    start = clock.now() - timedelta(hours=2)
    items = []
    for i in range(100):
        item = _item(pkgs["rain"], start + timedelta(minutes=11 * i))
        item.update({f"x{n:02d}": ["\x00"] * 101 for n in range(11)})
        items.append(item)
    res = _sync(client, headers, items)
    assert res.status_code == 422 and res.json["code"] == "validation_error", res.json
    errors = res.json["errors"]
    assert errors[0] == "sessions.0.x00.0: Must not contain NUL characters or unpaired " \
        "surrogates."
    assert len(errors) <= 1201 and errors[-1].endswith("more errors not listed.")
    assert len(res.get_data()) < 256 * 1024
    assert _count_sessions(user.id) == 0


def test_sync_judges_each_item_by_the_tier_in_force_when_it_started(
        client, auth, billing, pkgs, make_user, db_session, set_clock):
    make_user("up@example.com")
    headers = auth("up@example.com")
    t0 = set_clock(_tomorrow_noon())
    billing.buy(client, headers, "premium")   # premium from t0
    set_clock(t0 + timedelta(hours=6))
    items = [_item(pkgs["delta"], t0 - timedelta(hours=2)),       # starter then: locked
             _item(pkgs["rain"], t0 - timedelta(hours=2), minutes=40),  # starter: 15 min
             _item(pkgs["delta"], t0 + timedelta(hours=1), minutes=40)]  # premium
    res = _sync(client, headers, items)
    results = res.json["data"]["results"]
    assert [(r["status"], r.get("code")) for r in results] == \
        [("rejected", "package_locked"), ("created", None), ("created", None)]
    rows = {r["session_id"]: client.get(f"/api/user/sessions/{r['session_id']}",
                                        headers=headers).json["data"] for r in results[1:]}
    starter, premium = (rows[results[1]["session_id"]], rows[results[2]["session_id"]])
    assert (starter["tier"], starter["listened_seconds"]) == ("starter", 900)
    assert (premium["tier"], premium["listened_seconds"]) == ("premium", 1800)  # its length


def test_sync_judges_each_item_by_the_assignments_live_when_it_started(
        client, auth, admin_auth, pkgs, make_user, db_session, set_clock):
    user = make_user("lent@example.com")
    headers = auth("lent@example.com")
    make_user("admin@example.com", admin=True)
    t0 = set_clock(_tomorrow_noon())
    assert client.post(f"/api/admin/users/{user.id}/packages", headers=admin_auth(),
                       json={"package_id": pkgs["delta"],
                             "expires_at": (t0 + timedelta(hours=2)).isoformat()}
                       ).status_code == 201
    set_clock(t0 + timedelta(hours=5))
    res = _sync(client, headers, [_item(pkgs["delta"], t0 + timedelta(hours=1)),
                                  _item(pkgs["delta"], t0 + timedelta(hours=3))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "package_locked")]


def test_an_archived_package_opens_to_no_one_from_its_archive(
        client, auth, admin_auth, pkgs, make_user, db_session, set_clock):
    """Archiving a package takes it out of the catalog: listening uploaded from before the
    archive is kept, listening after it is `not_found`, and its licences end with it."""
    make_user("keep@example.com", tier="premium")
    headers = auth("keep@example.com")
    make_user("admin@example.com", admin=True)
    t0 = set_clock(_tomorrow_noon())
    assert client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                       headers=headers).status_code == 201
    assert client.delete(f"/api/admin/packages/{pkgs['delta']}",
                         headers=admin_auth()).status_code == 200
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []
    assert client.delete(f"/api/user/downloads/{pkgs['delta']}",
                         headers=headers).status_code == 404
    set_clock(t0 + timedelta(hours=3))
    res = _sync(client, headers, [_item(pkgs["delta"], t0 - timedelta(hours=1)),
                                  _item(pkgs["delta"], t0 + timedelta(hours=1))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "not_found")], res.json


def test_sync_counts_each_item_on_the_auckland_day_it_started(
        client, auth, pkgs, make_user, db_session, set_clock, make_session):
    user = make_user("kiwi@example.com", timezone="Pacific/Auckland")  # starter: 3 a day
    headers = auth("kiwi@example.com")
    now = set_clock(_tomorrow_noon() + timedelta(days=1))
    today = clock.user_day(user, now).day
    midnight = clock.day_start(today, "Pacific/Auckland", 0)   # today began here
    yesterday = today - timedelta(days=1)
    for minutes in (300, 200, 100):  # yesterday (Auckland) is full
        make_session(user, pkgs["rain"], yesterday,
                     started_at=midnight - timedelta(minutes=minutes), minutes=5)
    items = [_item(pkgs["rain"], midnight - timedelta(minutes=30), minutes=20),
             _item(pkgs["rain"], midnight + timedelta(minutes=5), minutes=20)]
    res = _sync(client, headers, items)
    results = res.json["data"]["results"]
    assert [(r["status"], r.get("code")) for r in results] == \
        [("rejected", "daily_session_limit_reached"), ("created", None)]
    stored = client.get(f"/api/user/sessions/{results[1]['session_id']}",
                        headers=headers).json["data"]
    assert stored["local_day"] == today.isoformat()   # it started after midnight there


def _race_live_start_and_batch(app, headers, package_id, item) -> dict:
    barrier = threading.Barrier(2)
    outcome = {}

    def live():
        own = app.test_client()
        barrier.wait()
        outcome["live"] = own.post("/api/user/sessions", json={"package_id": package_id},
                                   headers=headers).status_code

    def batch():
        own = app.test_client()
        barrier.wait()
        res = own.post("/api/user/sessions/sync", json={"sessions": [item]}, headers=headers)
        outcome["batch"] = res.json["data"]["results"][0]

    threads = [threading.Thread(target=live), threading.Thread(target=batch)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcome


def test_a_batch_and_a_live_start_race_for_the_last_slot(app, auth, pkgs, make_user,
                                                         db_session):
    for round_ in range(4):
        email = f"racer{round_}@example.com"
        user = make_user(email)
        now = clock.now()
        for minutes in (90, 80):  # two of the three starts of a starter's day
            listening.start_session(user.id, pkgs["rain"], now=now - timedelta(minutes=minutes))
        item = _item(pkgs["short"], now - timedelta(minutes=30), minutes=3)
        outcome = _race_live_start_and_batch(app, auth(email), pkgs["rain"], item)
        wins = [outcome["live"] == 201, outcome["batch"]["status"] == "created"]
        assert wins.count(True) == 1, outcome
        if outcome["live"] != 201:
            assert outcome["live"] == 429
        else:
            assert outcome["batch"]["code"] == "daily_session_limit_reached"
        assert _count_sessions(user.id) == 3


def test_one_batch_sent_twice_at_once_is_stored_once(app, auth, pkgs, make_user, db_session):
    """Two identical uploads racing (a client retrying before the first answer): one stores
    the sessions, the other finds them (`unchanged`), nothing twice."""
    user = make_user("twin@example.com")
    headers = auth("twin@example.com")
    now = clock.now()
    items = [_item(pkgs["rain"], now - timedelta(hours=5, minutes=-20 * i)) for i in range(3)]
    barrier = threading.Barrier(2)
    answers = [None, None]

    def upload(index):
        own = app.test_client()
        barrier.wait()
        res = own.post("/api/user/sessions/sync", json={"sessions": items}, headers=headers)
        answers[index] = [(r["status"], r["session_id"]) for r in res.json["data"]["results"]]

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted([status for status, _ in answer][0] for answer in answers)
    assert statuses == ["created", "unchanged"], answers
    assert all(len({status for status, _ in answer}) == 1 for answer in answers), answers
    assert [sid for _, sid in answers[0]] == [sid for _, sid in answers[1]]
    assert _count_sessions(user.id) == 3


def test_sync_statements_do_not_grow_with_the_batch(app, auth, pkgs, make_user, db_session,
                                                    sql_statements, set_clock):
    make_user("bulk@example.com", tier="pro")
    headers = auth("bulk@example.com")
    now = set_clock(_tomorrow_noon() + timedelta(days=3))  # pro for the last days
    client = app.test_client()

    def batch(count, offset):
        start = now - timedelta(days=offset)
        return [_item(pkgs["rain"], start + timedelta(minutes=3 * i), minutes=2,
                      position_seconds=60) for i in range(count)]

    small, large = batch(10, 2), batch(100, 1)
    client.get("/api/user/profile", headers=headers)  # the caller is known and cached
    counts = []
    for items in (small, large):
        statements = sql_statements(app, lambda items=items: counts.append(
            [r["status"] for r in _sync(client, headers, items).json["data"]["results"]]))
        counts.append(len(statements))
    assert counts[0] == ["created"] * 10 and counts[2] == ["created"] * 100
    assert counts[1] == counts[3], counts[1::2]
    assert counts[3] <= 20


def test_revoking_an_assignment_ends_its_licence(client, auth, admin_auth, pkgs, make_user,
                                                 db_session):
    user = make_user("lend@example.com")  # starter: no downloads of its own
    headers = auth("lend@example.com")
    make_user("admin@example.com", admin=True)
    assert client.post(f"/api/admin/users/{user.id}/packages", headers=admin_auth(),
                       json={"package_id": pkgs["delta"]}).status_code == 201
    assert client.post("/api/user/downloads", json={"package_id": pkgs["delta"]},
                       headers=headers).status_code == 201
    assert len(client.get("/api/user/downloads", headers=headers).json["data"]) == 1
    assert client.delete(f"/api/admin/users/{user.id}/packages/{pkgs['delta']}",
                         headers=admin_auth()).status_code == 200
    assert client.get("/api/user/downloads", headers=headers).json["data"] == []
    assert client.delete(f"/api/user/downloads/{pkgs['delta']}", headers=headers).status_code \
        == 404


def test_export_lists_licences_and_erasure_forgets_them(client, auth, pkgs, make_user,
                                                        db_session):
    user = make_user("gone@example.com", tier="premium")
    headers = auth("gone@example.com")
    assert client.post("/api/user/downloads", json={"package_id": pkgs["rain"]},
                       headers=headers).status_code == 201
    item = _item(pkgs["rain"], clock.now() - timedelta(minutes=30), minutes=10)
    assert _sync(client, headers, [item]).json["data"]["results"][0]["status"] == "created"
    export = client.get("/api/user/export", headers=headers).json["data"]
    assert [d["package_id"] for d in export["downloads"]] == [pkgs["rain"]]
    assert export["sessions"][0]["client_id"] == item["client_id"]
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    kept = db_session.execute(select(ListeningSession)).scalar_one()
    assert kept.user_id is None and kept.client_id is None
    assert _count_sessions(user.id) == 0


def test_listening_from_before_two_changes_of_time_zone_counts_on_the_day_it_was_listened_on(
        client, auth, pkgs, make_user, db_session, set_clock):
    """A Starter's full day, then a move to Kiritimati and back: listening from that day
    uploaded afterwards is judged by the settings in force then (UTC), not by the prior ones
    (Kiritimati, a day later there), so the day gets no fourth session."""
    make_user("traveller@example.com")  # starter: 3 sessions a day, UTC
    headers = auth("traveller@example.com")
    t0 = set_clock(_tomorrow_noon())
    day = t0.replace(hour=0)
    full = _sync(client, headers, [_item(pkgs["rain"], day + timedelta(hours=h))
                                   for h in (8, 9, 10)])
    assert [r["status"] for r in full.json["data"]["results"]] == ["created"] * 3, full.json
    for days_later, zone in ((1, "Pacific/Kiritimati"), (3, "UTC")):
        set_clock(t0 + timedelta(days=days_later))
        res = client.put("/api/user/profile", json={"timezone": zone}, headers=headers)
        assert res.status_code == 200, res.json
    set_clock(t0 + timedelta(days=5))
    late = _sync(client, headers, [_item(pkgs["rain"], day + timedelta(hours=11))])
    assert [(r["status"], r.get("code")) for r in late.json["data"]["results"]] == [
        ("rejected", "daily_session_limit_reached")], late.json


def test_an_archived_package_is_no_longer_a_place_to_resume(client, auth, admin_auth, pkgs,
                                                            make_user, set_clock):
    make_user("admin@example.com", admin=True)
    make_user("resume@example.com")
    headers = auth("resume@example.com")
    t0 = set_clock(_tomorrow_noon())
    for minutes, package in ((0, pkgs["short"]), (5, pkgs["rain"])):
        set_clock(t0 + timedelta(minutes=minutes))
        sid = client.post("/api/user/sessions", headers=headers,
                          json={"package_id": package}).json["data"]["id"]
        set_clock(t0 + timedelta(minutes=minutes + 2))
        res = client.patch(f"/api/user/sessions/{sid}", headers=headers,
                           json={"listened_seconds": 100, "position_seconds": 100})
        assert res.status_code == 200, res.json
    resume = client.get("/api/user/playback", headers=headers).json
    assert [p["package_id"] for p in resume["data"]] == [pkgs["rain"], pkgs["short"]]

    assert client.delete(f"/api/admin/packages/{pkgs['rain']}",
                         headers=admin_auth()).status_code == 200
    resume = client.get("/api/user/playback", headers=headers).json
    assert [p["package_id"] for p in resume["data"]] == [pkgs["short"]]
    assert resume["pagination"]["total"] == 1


def test_a_removed_or_shortened_track_is_no_place_to_resume_past_its_end(
        client, auth, admin_auth, pkgs, make_user, db_session, set_clock):
    """An admin edits a package's tracks: a resume position in a track that was removed goes
    back to the package's start (not to the same second of another track), and one past the
    end of a track that got shorter is at its end."""
    make_user("admin@example.com", admin=True)
    make_user("edited@example.com", tier="premium")
    headers = auth("edited@example.com")
    _rain1, rain2 = _tracks(pkgs["rain"])
    [short1] = _tracks(pkgs["short"])
    t0 = set_clock(_tomorrow_noon())
    for minutes, package, track, position in ((0, pkgs["rain"], rain2, 500),
                                              (10, pkgs["delta"], None, 1500),
                                              (20, pkgs["short"], short1, 250)):
        set_clock(t0 + timedelta(minutes=minutes))
        sid = client.post("/api/user/sessions", headers=headers,
                          json={"package_id": package, "track_id": track}).json["data"]["id"]
        set_clock(t0 + timedelta(minutes=minutes + 9))
        res = client.patch(f"/api/user/sessions/{sid}", headers=headers,
                           json={"listened_seconds": 500, "position_seconds": position})
        assert res.status_code == 200 and res.json["data"]["position_seconds"] == position

    def resume() -> dict:
        listed = client.get("/api/user/playback", headers=headers).json["data"]
        return {p["package_id"]: (p["track_id"], p["position_seconds"]) for p in listed}

    assert resume() == {pkgs["rain"]: (rain2, 500), pkgs["delta"]: (None, 1500),
                        pkgs["short"]: (short1, 250)}
    # rain loses its second track; delta's (played without a track) and short's get shorter
    for package, tracks in ((pkgs["rain"], [1200]), (pkgs["delta"], [1200]),
                            (pkgs["short"], [100])):
        res = client.patch(f"/api/admin/packages/{package}", headers=admin_auth(), json={
            "tracks": [{"title": f"T{i}", "duration_seconds": length,
                        "media_path": f"x/{package}/{i}.mp3"}
                       for i, length in enumerate(tracks)]})
        assert res.status_code == 200, res.json
    assert resume() == {pkgs["rain"]: (None, 0), pkgs["delta"]: (None, 1200),
                        pkgs["short"]: (short1, 100)}
    cont = client.get("/api/user/dashboard", headers=headers).json["data"]["continue_listening"]
    assert cont["package"]["id"] == pkgs["short"] and cont["position_seconds"] == 100


def test_a_downgrade_scheduled_after_the_grant_shortens_the_listed_licence_and_its_urls(
        client, auth, billing, pkgs, make_user, db_session, set_clock):
    """The list of downloads shows when a licence really ends: once a downgrade is scheduled
    after the grant, the end of the period, and no download URL it hands out works past it."""
    make_user("shorter@example.com")
    headers = auth("shorter@example.com")
    t0 = set_clock(_tomorrow_noon())
    period_end = datetime.fromisoformat(
        billing.buy(client, headers, "pro")["current_period_end"])
    set_clock(t0 + timedelta(days=20))
    for package in (pkgs["gamma"], pkgs["delta"]):
        res = client.post("/api/user/downloads", json={"package_id": package}, headers=headers)
        assert res.status_code == 201, res.json
        assert datetime.fromisoformat(res.json["data"]["licence_expires_at"]) > period_end
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200  # at the end of the period
    set_clock(period_end - timedelta(minutes=10))
    listed = {d["package_id"]: d for d in
              client.get("/api/user/downloads", headers=headers).json["data"]}
    gamma = listed[pkgs["gamma"]]   # pro only: ends with the period
    assert datetime.fromisoformat(gamma["licence_expires_at"]) == period_end
    for track in gamma["tracks"]:
        assert datetime.fromisoformat(track["expires_at"]) <= period_end
        query = parse_qs(urlsplit(track["download_url"]).query)
        assert int(query["ts"][0]) + int(query["e"][0]) <= period_end.timestamp()
    delta = listed[pkgs["delta"]]   # premium keeps it after the downgrade
    assert datetime.fromisoformat(delta["licence_expires_at"]) > period_end
    assert all(datetime.fromisoformat(t["expires_at"]) > period_end for t in delta["tracks"])


@pytest.mark.parametrize("complete_first", [True, False], ids=["complete-first", "sync-first"])
def test_an_upload_overlaps_a_live_session_alike_before_and_after_its_completion(
        client, auth, pkgs, make_user, db_session, set_clock, complete_first):
    """A live session is heard of for 5 minutes, then the phone goes offline and plays other
    listening; back online 2 hours later, the app completes the live session and uploads
    the offline listening, in either order. The upload is judged the same both ways: what
    played after the live session's last heartbeat is stored, what overlaps its 5 known
    minutes is `overlap`; the live session ends as the listener said either way."""
    make_user("order@example.com", tier="premium")
    headers = auth("order@example.com")
    t0 = set_clock(_tomorrow_noon())
    sid = client.post("/api/user/sessions", headers=headers,
                      json={"package_id": pkgs["rain"]}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=5))
    assert client.patch(f"/api/user/sessions/{sid}", headers=headers,
                        json={"listened_seconds": 300}).status_code == 200
    set_clock(t0 + timedelta(hours=2))
    items = [_item(pkgs["short"], t0 + timedelta(minutes=10), minutes=5),
             _item(pkgs["short"], t0 + timedelta(minutes=1), minutes=3)]

    def complete():
        res = client.post(f"/api/user/sessions/{sid}/complete", headers=headers,
                          json={"listened_seconds": 1200, "completed": False})
        assert res.status_code == 200, res.json
        return res.json["data"]["listened_seconds"]

    if complete_first:
        listened = complete()
        res = _sync(client, headers, items)
    else:
        res = _sync(client, headers, items)
        listened = complete()
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "overlap")], res.json
    assert listened == 1200


def test_listening_before_a_package_was_unpublished_is_kept(
        client, auth, admin_auth, pkgs, make_user, db_session, set_clock):
    """A listener who played a package offline and uploads after an admin took it out of the
    catalog (unpublished, not archived) keeps that listening; listening after the unpublish
    is `not_found`; published again, listening from then on is stored, and what the upload
    says was played while it was out of the catalog is still `not_found`."""
    make_user("played@example.com", tier="premium")
    headers = auth("played@example.com")
    make_user("admin@example.com", admin=True)
    t0 = set_clock(_tomorrow_noon())
    assert client.patch(f"/api/admin/packages/{pkgs['delta']}", json={"published": False},
                        headers=admin_auth()).status_code == 200
    set_clock(t0 + timedelta(hours=3))
    res = _sync(client, headers, [_item(pkgs["delta"], t0 - timedelta(hours=2)),
                                  _item(pkgs["delta"], t0 + timedelta(hours=1))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "not_found")], res.json

    assert client.patch(f"/api/admin/packages/{pkgs['delta']}", json={"published": True},
                        headers=admin_auth()).status_code == 200
    set_clock(t0 + timedelta(hours=5))
    res = _sync(client, headers, [_item(pkgs["delta"], t0 + timedelta(hours=3, minutes=30)),
                                  _item(pkgs["delta"], t0 + timedelta(hours=2))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "not_found")], res.json


def test_listening_from_before_a_package_existed_is_not_found(
        client, auth, make_user, make_package, db_session, set_clock):
    """A package added to the catalog today was never played last week: an upload that says
    so is `not_found`, while listening since it was added is stored."""
    make_user("early@example.com")
    headers = auth("early@example.com")
    fresh = make_package("fresh", tracks=(600,))
    added = fresh.created_at
    set_clock(added + timedelta(hours=3))
    res = _sync(client, headers, [_item(fresh.id, added - timedelta(days=3)),
                                  _item(fresh.id, added - timedelta(minutes=5)),
                                  _item(fresh.id, added + timedelta(hours=1))])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("rejected", "not_found"), ("rejected", "not_found"), ("created", None)], res.json


def test_a_full_batch_with_long_notes_is_not_too_large(client, auth, pkgs, make_user,
                                                       db_session, set_clock):
    """100 items (the most a batch holds), each with a note of 2000 characters (the most a
    note holds): a body several times MAX_CONTENT_LENGTH that the contract allows, stored;
    a body past what any valid batch needs is still 413."""
    # the account (and its plan) exists before the first item, whatever the time of day the
    # suite runs at: listening before the account's first sign-in is judged as Starter's
    midnight = _tomorrow_noon() - timedelta(hours=12)
    set_clock(midnight)
    user = make_user("diary@example.com", tier="pro")
    headers = auth("diary@example.com")
    set_clock(midnight + timedelta(hours=20))
    first = midnight + timedelta(minutes=5)
    items = [_item(pkgs["rain"], first + timedelta(minutes=11 * i), note="é" * 2000)
             for i in range(100)]
    res = _sync(client, headers, items)
    assert res.status_code == 200, res.json
    assert [r["status"] for r in res.json["data"]["results"]] == ["created"] * 100
    assert _count_sessions(user.id) == 100
    huge = client.post("/api/user/sessions/sync", headers=headers,
                       data=b'{"sessions": [' + b" " * 1_700_000 + b"]}",
                       content_type="application/json")
    assert huge.status_code == 413 and huge.json["code"] == "payload_too_large", huge.json
    elsewhere = client.put("/api/user/profile", headers=headers,
                           data=b'{"display_name": "' + b"x" * 70_000 + b'"}',
                           content_type="application/json")
    assert elsewhere.status_code == 413   # other routes keep MAX_CONTENT_LENGTH


def test_an_upload_after_the_stale_sweep_is_judged_as_before_it(
        client, auth, pkgs, make_user, db_session, set_clock):
    """A live session is left open after 5 minutes (the app killed), then the listener goes
    on offline. The stale sweep closes the live one at its start plus 3 hours; listening
    uploaded after that overlaps only the 5 minutes it is known to have played, as it would
    have before the sweep, and is stored. Listening within those 5 minutes still overlaps."""
    make_user("killed@example.com", tier="pro")
    headers = auth("killed@example.com")
    t0 = set_clock(_tomorrow_noon())
    sid = client.post("/api/user/sessions", headers=headers,
                      json={"package_id": pkgs["rain"]}).json["data"]["id"]
    set_clock(t0 + timedelta(minutes=5))
    assert client.patch(f"/api/user/sessions/{sid}", headers=headers,
                        json={"listened_seconds": 300}).status_code == 200
    set_clock(t0 + timedelta(hours=3, minutes=5))
    assert listening.close_stale_sessions(now=clock.now()) == 1
    swept = client.get(f"/api/user/sessions/{sid}", headers=headers).json["data"]
    assert swept["end_reason"] == "expired"
    res = _sync(client, headers, [_item(pkgs["rain"], t0 + timedelta(minutes=6), minutes=60),
                                  _item(pkgs["short"], t0 + timedelta(minutes=1), minutes=4)])
    assert [(r["status"], r.get("code")) for r in res.json["data"]["results"]] == \
        [("created", None), ("rejected", "overlap")], res.json
