"""Assigned packages open regardless of tier, until the assignment expires or is revoked; adding a
package to one's own library grants nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from sonicus.models import AuditLog, PackageAssignment


@pytest.fixture
def catalog(db_session, make_package):
    return {"rain": make_package("rain").id,
            "delta": make_package("delta", minimum_tier="premium", popularity=5).id,
            "gamma": make_package("gamma", minimum_tier="pro_exclusive").id}


@pytest.fixture
def admin(make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    return admin_auth("admin@example.com")


def _assign(client, admin, user_id, package_id, **body):
    return client.post(f"/api/admin/users/{user_id}/packages",
                       json={"package_id": package_id, **body}, headers=admin)


def _access(client, headers, query=""):
    listing = client.get(f"/api/packages{query}", headers=headers).json["data"]
    return {p["slug"]: (p["access"], p["locked"]) for p in listing}


def _start(client, headers, package_id):
    return client.post("/api/user/sessions", json={"package_id": package_id}, headers=headers)


def test_assigned_packages_open_regardless_of_tier(client, auth, admin, catalog, make_user):
    user_id = make_user("patient@example.com").id  # starter
    headers = auth("patient@example.com")
    make_user("other@example.com")
    assert _access(client, headers)["delta"] == ("locked", True)

    res = _assign(client, admin, user_id, catalog["delta"])
    assert res.status_code == 201, res.json
    entry = res.json["data"]
    assert entry["package"]["access"] == "assigned" and entry["package"]["locked"] is False
    assert entry["assignment"]["expires_at"] is None and entry["assigned_by_admin"] is True

    assert _access(client, headers) == {"rain": ("tier", False), "delta": ("assigned", False),
                                        "gamma": ("locked", True)}
    assert set(_access(client, headers, "?accessible=true")) == {"rain", "delta"}
    detail = client.get(f"/api/packages/{catalog['delta']}", headers=headers).json["data"]
    assert (detail["access"], detail["locked"]) == ("assigned", False)
    assert detail["tracks"][0]["stream_url"].startswith("https://media.example.com/")
    library = client.get("/api/user/packages", headers=headers).json["data"]
    assert [(e["package"]["slug"], e["package"]["access"]) for e in library] == \
        [("delta", "assigned")]
    recommended = client.get("/api/user/dashboard", headers=headers).json["data"]["recommended"]
    assert {p["package"]["slug"]: p["package"]["access"] for p in recommended} == \
        {"delta": "assigned", "rain": "tier"}

    start = _start(client, headers, catalog["delta"])
    assert start.status_code == 201, start.json
    assert start.json["data"]["max_duration_seconds"] == 900  # still the starter's length

    # Someone else's assignment opens nothing for me; removing it from the library revokes
    # nothing.
    other = auth("other@example.com")
    assert _access(client, other)["delta"] == ("locked", True)
    assert _start(client, other, catalog["delta"]).status_code == 403
    assert client.delete(f"/api/user/packages/{catalog['delta']}",
                         headers=headers).status_code == 200
    assert _access(client, headers)["delta"] == ("assigned", False)


def test_an_expired_or_revoked_assignment_locks_again(client, auth, admin, catalog, make_user,
                                                      db_session, set_clock):
    user_id = make_user("temp@example.com").id
    headers = auth("temp@example.com")
    t0 = set_clock(datetime(2026, 6, 10, 9, 0, tzinfo=UTC))
    until = t0 + timedelta(hours=1)
    res = _assign(client, admin, user_id, catalog["delta"], expires_at=until.isoformat())
    assert res.status_code == 201
    assert datetime.fromisoformat(res.json["data"]["assignment"]["expires_at"]) == until
    running = _start(client, headers, catalog["delta"]).json["data"]["id"]

    # It expires while the session runs: the session may finish, the next start is refused.
    set_clock(until)
    assert _access(client, headers)["delta"] == ("locked", True)
    detail = client.get(f"/api/packages/{catalog['delta']}", headers=headers).json["data"]
    assert detail["tracks"][0]["stream_url"] is None
    done = client.post(f"/api/user/sessions/{running}/complete", headers=headers,
                       json={"listened_seconds": 900, "completed": True})
    assert done.status_code == 200 and done.json["data"]["completed"] is True
    refused = _start(client, headers, catalog["delta"])
    assert refused.status_code == 403 and refused.json["code"] == "package_locked"
    assert client.delete(f"/api/admin/users/{user_id}/packages/{catalog['delta']}",
                         headers=admin).status_code == 404  # nothing live to revoke

    # Revoked: locked at once; a second revocation finds nothing live.
    assert _assign(client, admin, user_id, catalog["gamma"]).status_code == 201
    assert _access(client, headers)["gamma"] == ("assigned", False)
    set_clock(until + timedelta(minutes=5))
    revoked = client.delete(f"/api/admin/users/{user_id}/packages/{catalog['gamma']}",
                            headers=admin)
    assert revoked.status_code == 200, revoked.json
    assert datetime.fromisoformat(revoked.json["data"]["revoked_at"]) == \
        until + timedelta(minutes=5)
    assert _access(client, headers)["gamma"] == ("locked", True)
    assert _start(client, headers, catalog["gamma"]).status_code == 403
    again = client.delete(f"/api/admin/users/{user_id}/packages/{catalog['gamma']}",
                          headers=admin)
    assert again.status_code == 404 and again.json["code"] == "not_found"
    assert client.delete(f"/api/admin/users/{user_id}/packages/{catalog['rain']}",
                         headers=admin).status_code == 404  # never assigned
    assert client.delete(f"/api/admin/users/99999/packages/{catalog['rain']}",
                         headers=admin).status_code == 404
    assert client.delete(f"/api/admin/users/{user_id}/packages/{catalog['gamma']}",
                         headers=headers).status_code == 403  # admins only

    # Revocation is audited; the ended assignments stay as history.
    audit = db_session.execute(select(AuditLog).where(AuditLog.action == "library.revoke")
                               ).scalars().all()
    assert len(audit) == 1 and audit[0].actor_label == "admin@example.com"
    assert audit[0].target_id == str(user_id)
    assert audit[0].before["revoked_at"] is None and audit[0].after["revoked_at"] is not None
    history = db_session.execute(select(PackageAssignment).order_by(PackageAssignment.id)
                                 ).scalars().all()
    assert [(a.package_id, a.expires_at, a.revoked_at) for a in history] == [
        (catalog["delta"], until, None), (catalog["gamma"], None, until + timedelta(minutes=5))]
    assert history[0].is_live(t0) and not history[0].is_live(until)

    # Assigning again starts a new assignment; the old one is kept.
    assert _assign(client, admin, user_id, catalog["gamma"]).status_code == 201
    assert _access(client, headers)["gamma"] == ("assigned", False)
    assert len(db_session.execute(select(PackageAssignment)).scalars().all()) == 3


def test_assignment_input_is_checked(client, admin, catalog, make_user, set_clock):
    user_id = make_user("input@example.com").id
    now = set_clock(datetime(2026, 6, 10, 9, 0, tzinfo=UTC))
    past = _assign(client, admin, user_id, catalog["delta"], expires_at=now.isoformat())
    assert past.status_code == 422
    assert past.json["errors"] == ["expires_at: Must be in the future."]
    naive = _assign(client, admin, user_id, catalog["delta"], expires_at="2026-07-01T00:00:00")
    assert naive.status_code == 422 and naive.json["errors"][0].startswith("expires_at:")

    # Assigning what is already assigned updates its end (200), audited like the first.
    first = _assign(client, admin, user_id, catalog["delta"],
                    expires_at=(now + timedelta(days=1)).isoformat())
    assert first.status_code == 201
    longer = _assign(client, admin, user_id, catalog["delta"],
                     expires_at=(now + timedelta(days=7)).isoformat())
    assert longer.status_code == 200
    assert datetime.fromisoformat(longer.json["data"]["assignment"]["expires_at"]) == \
        now + timedelta(days=7)


def test_an_end_past_the_last_representable_instant_is_422_and_assigns_nothing(
        client, admin, catalog, make_user, db_session):
    """9999-12-31T23:59:59-12:00 is a valid timestamp whose UTC instant is in the year 10000."""
    user_id = make_user("edge@example.com").id
    for edge in ("9999-12-31T23:59:59-12:00", "9999-12-31T20:00:00-05:00"):
        res = _assign(client, admin, user_id, catalog["delta"], expires_at=edge)
        assert res.status_code == 422, res.json
        assert res.json["errors"][0].startswith("expires_at: ")
    assert db_session.execute(select(PackageAssignment)).scalars().all() == []
    last = _assign(client, admin, user_id, catalog["delta"], expires_at="9999-12-31T23:59:59Z")
    assert last.status_code == 201


def test_adding_to_ones_own_library_grants_nothing(client, auth, catalog, make_user, billing):
    make_user("self@example.com")  # starter
    headers = auth("self@example.com")
    refused = client.post(f"/api/user/packages/{catalog['delta']}", headers=headers)
    assert refused.status_code == 403 and refused.json["code"] == "package_locked"

    # Added while premium, kept after falling back to starter: in the library, but locked.
    make_user("former@example.com", tier="premium")
    former = auth("former@example.com")
    added = client.post(f"/api/user/packages/{catalog['delta']}", headers=former)
    assert added.status_code == 201 and added.json["data"]["package"]["access"] == "tier"
    billing.arrange("former@example.com", tier="starter")
    former = auth("former@example.com", name="Former")  # a new token: a fresh caller
    library = client.get("/api/user/packages", headers=former).json["data"]
    assert [(e["package"]["slug"], e["package"]["access"], e["assignment"])
            for e in library] == [("delta", "locked", None)]
    assert _access(client, former)["delta"] == ("locked", True)
    assert _start(client, former, catalog["delta"]).status_code == 403


def test_live_assignments_are_read_in_one_query(sql_statements, auth, make_config, make_user,
                                                make_package, db_session):
    from sonicus import create_app
    from sonicus.services.library import assign_package

    app = create_app(make_config(AUTH_USER_CACHE_SECONDS=600))
    client = app.test_client()
    packages = [make_package(f"premium-{i}", minimum_tier="premium").id for i in range(8)]
    admin = make_user("admin@example.com", admin=True)
    one = make_user("one@example.com").id
    many = make_user("many@example.com").id
    assign_package(admin, one, packages[0])
    for package_id in packages:
        assign_package(admin, many, package_id)
    headers = {email: auth(email) for email in ("one@example.com", "many@example.com")}

    def fetch(email, path):
        def run():
            res = client.get(path, headers=headers[email])
            assert res.status_code == 200
        return run

    for path in ("/api/packages", "/api/user/packages", "/api/user/dashboard"):
        for email in headers:  # warm: the callers are cached
            fetch(email, path)()
        counts = {email: len(sql_statements(app, fetch(email, path))) for email in headers}
        assert counts["one@example.com"] == counts["many@example.com"], path
        if path != "/api/user/dashboard":  # a page of one package costs what a page of 8 does
            assert len(sql_statements(app, fetch("many@example.com", f"{path}?per_page=1"))) == \
                counts["many@example.com"], path
    listing = client.get("/api/packages", headers=headers["many@example.com"]).json["data"]
    assert all(p["access"] == "assigned" for p in listing)


def _library_entry(client, headers, package_id) -> dict:
    library = client.get("/api/user/packages", headers=headers).json["data"]
    return next(e for e in library if e["package_id"] == package_id)


def test_an_assignment_keeps_the_users_own_favourite_and_shows_as_assigned_while_it_lasts(
        client, auth, admin, catalog, make_user):
    """A listener who had added packages to their library (one a favourite, one not) saw an
    administrator's assignment of them flip their favourites, and the entries did not show as
    assigned by an admin; the listener's own choice is kept, the entries show as assigned by
    an admin while the assignment lasts, and are the listener's own again once it ends."""
    user_id = make_user("own@example.com", tier="pro").id
    headers = auth("own@example.com")
    for package_id, favorite in ((catalog["delta"], True), (catalog["gamma"], False)):
        res = client.post(f"/api/user/packages/{package_id}", json={"favorite": favorite},
                          headers=headers)
        assert res.status_code == 201, res.json
    res = _assign(client, admin, user_id, catalog["delta"], favorite=False)
    assert res.status_code == 201, res.json
    assert (res.json["data"]["favorite"], res.json["data"]["assigned_by_admin"]) == (True, True)
    assert _assign(client, admin, user_id, catalog["gamma"], favorite=True).status_code == 201
    for package_id, favorite in ((catalog["delta"], True), (catalog["gamma"], False)):
        entry = _library_entry(client, headers, package_id)
        assert (entry["favorite"], entry["assigned_by_admin"]) == (favorite, True), entry
        assert entry["assignment"] is not None
    res = client.delete(f"/api/admin/users/{user_id}/packages/{catalog['delta']}",
                        headers=admin)
    assert res.status_code == 200, res.json
    entry = _library_entry(client, headers, catalog["delta"])
    assert (entry["favorite"], entry["assigned_by_admin"], entry["assignment"]) == \
        (True, False, None)
    # an entry the assignment put there takes the administrator's favourite
    _assign(client, admin, user_id, catalog["rain"], favorite=True)
    entry = _library_entry(client, headers, catalog["rain"])
    assert (entry["favorite"], entry["assigned_by_admin"]) == (True, True)
