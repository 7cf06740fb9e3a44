"""Ordinary sequences a hostile reviewer walks through in production: resuming after a
downgrade or an assignment's end, uploads and settings changes at odd moments, retries.
Real PostgreSQL, Redis, JWTs against the served JWKS and the test clock."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from sqlalchemy import update

from sonicus.models import SoundPackage


def _tomorrow_noon() -> datetime:
    """A moment after every row the fixtures write at the real time."""
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), time(12), UTC)


@pytest.fixture
def pkgs(db_session, make_package):
    made = {"rain": make_package("rain", tracks=(1200, 600)).id,
            "delta": make_package("delta", minimum_tier="premium", tracks=(1800, 900)).id}
    db_session.execute(update(SoundPackage).values(
        created_at=datetime.now(UTC) - timedelta(days=60)))
    db_session.commit()
    return made


def _listen(client, headers, package_id, position):
    started = client.post("/api/user/sessions", json={"package_id": package_id},
                          headers=headers)
    assert started.status_code == 201, started.json
    session_id = started.json["data"]["id"]
    beat = client.patch(f"/api/user/sessions/{session_id}", headers=headers,
                        json={"listened_seconds": 0, "position_seconds": position})
    assert beat.status_code == 200, beat.json
    return session_id


def _resume_places(client, headers) -> list[int]:
    res = client.get("/api/user/playback", headers=headers)
    assert res.status_code == 200, res.json
    assert res.json["pagination"]["total"] == len(res.json["data"])
    return [entry["package_id"] for entry in res.json["data"]]


# ---- resume ----------------------------------------------------------------------------------

def test_playback_offers_no_package_a_downgrade_or_an_assignments_end_locked(
        client, auth, admin_auth, make_user, pkgs, set_clock):
    """Where to resume lists only packages the caller can play now, as the dashboard's
    continue_listening does: a premium package left half-heard is not offered to a Starter
    (resuming it would only answer 403 package_locked); it is again while an assignment opens
    it, and not once the assignment has expired. Nothing is lost: an upgrade brings it back."""
    listener = make_user("resume@example.com", tier="premium")
    make_user("admin@example.com", admin=True)
    headers, admin = auth("resume@example.com"), admin_auth()
    t0 = set_clock(_tomorrow_noon())
    _listen(client, headers, pkgs["rain"], 300)
    set_clock(t0 + timedelta(minutes=5))
    _listen(client, headers, pkgs["delta"], 200)
    assert _resume_places(client, headers) == [pkgs["delta"], pkgs["rain"]]

    downgrade = client.patch(f"/api/admin/users/{listener.id}", json={"tier": "starter"},
                             headers=admin)
    assert downgrade.status_code == 200, downgrade.json
    assert _resume_places(client, headers) == [pkgs["rain"]]
    locked = client.post("/api/user/sessions", json={"package_id": pkgs["delta"]},
                         headers=headers)
    assert locked.status_code == 403  # what resuming it would have answered

    assign = client.post(f"/api/admin/users/{listener.id}/packages", headers=admin,
                         json={"package_id": pkgs["delta"],
                               "expires_at": (t0 + timedelta(hours=2)).isoformat()})
    assert assign.status_code == 201, assign.json
    assert _resume_places(client, headers) == [pkgs["delta"], pkgs["rain"]]
    set_clock(t0 + timedelta(hours=3))  # the assignment has expired
    assert _resume_places(client, headers) == [pkgs["rain"]]

    upgrade = client.patch(f"/api/admin/users/{listener.id}", json={"tier": "premium"},
                           headers=admin)
    assert upgrade.status_code == 200, upgrade.json
    assert _resume_places(client, headers) == [pkgs["delta"], pkgs["rain"]]


def test_a_package_finished_since_is_no_longer_offered_to_continue(
        client, auth, make_user, pkgs, set_clock):
    """Rain stopped at 2:00 on one day, then heard to the end in a later session (the app
    reported no position at the end): neither the dashboard nor the playback list offers to
    resume Rain at 2:00 any more. A later session stopped short is offered again."""
    make_user("finish@example.com", tier="premium")
    headers = auth("finish@example.com")
    t0 = set_clock(_tomorrow_noon())
    stopped = _listen(client, headers, pkgs["rain"], 120)
    set_clock(t0 + timedelta(minutes=2))
    client.post(f"/api/user/sessions/{stopped}/complete", headers=headers,
                json={"listened_seconds": 120, "completed": False})
    cont = client.get("/api/user/dashboard", headers=headers).json["data"]["continue_listening"]
    assert (cont["session_id"], cont["position_seconds"]) == (stopped, 120)

    set_clock(t0 + timedelta(days=1))
    finished = client.post("/api/user/sessions", json={"package_id": pkgs["rain"]},
                           headers=headers).json["data"]["id"]
    set_clock(t0 + timedelta(days=1, minutes=31))
    done = client.post(f"/api/user/sessions/{finished}/complete", headers=headers,
                       json={"listened_seconds": 1800, "completed": True})
    assert done.status_code == 200 and done.json["data"]["completed"] is True, done.json
    assert client.get("/api/user/dashboard", headers=headers) \
        .json["data"]["continue_listening"] is None
    assert _resume_places(client, headers) == []

    set_clock(t0 + timedelta(days=2))
    again = _listen(client, headers, pkgs["rain"], 60)
    cont = client.get("/api/user/dashboard", headers=headers).json["data"]["continue_listening"]
    assert (cont["session_id"], cont["position_seconds"]) == (again, 60)
    assert _resume_places(client, headers) == [pkgs["rain"]]
