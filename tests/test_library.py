"""The personal library: add, favourite, remove, tier checks, admin assignment."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from sonicus.models import AuditLog, UserSoundPackage


@pytest.fixture
def packages(db_session, make_package):
    return {"rain": make_package("rain").id,
            "delta": make_package("delta", minimum_tier="premium").id,
            "draft": make_package("draft", published=False).id}


def test_add_list_favourite_remove(client, auth, packages, make_user):
    make_user("l@example.com")
    headers = auth("l@example.com")
    assert client.get("/api/user/packages", headers=headers).json["data"] == []

    res = client.post(f"/api/user/packages/{packages['rain']}", headers=headers)
    assert res.status_code == 201, res.json
    entry = res.json["data"]
    assert entry["package_id"] == packages["rain"] and entry["favorite"] is False
    assert entry["package"]["slug"] == "rain" and entry["package"]["locked"] is False
    assert datetime.fromisoformat(entry["assigned_at"]) <= datetime.now(UTC)

    # re-adding is idempotent: 200 with the same entry; the body can set the favourite
    again = client.post(f"/api/user/packages/{packages['rain']}", json={"favorite": True},
                        headers=headers)
    assert again.status_code == 200
    assert again.json["data"]["assigned_at"] == entry["assigned_at"]
    assert again.json["data"]["favorite"] is True

    res = client.patch(f"/api/user/packages/{packages['rain']}", json={"favorite": False},
                       headers=headers)
    assert res.status_code == 200 and res.json["data"]["favorite"] is False

    listing = client.get("/api/user/packages", headers=headers)
    assert [e["package"]["slug"] for e in listing.json["data"]] == ["rain"]
    assert listing.json["pagination"]["total"] == 1

    assert client.delete(f"/api/user/packages/{packages['rain']}",
                         headers=headers).status_code == 200
    assert client.get("/api/user/packages", headers=headers).json["data"] == []
    assert client.delete(f"/api/user/packages/{packages['rain']}",
                         headers=headers).status_code == 404


def test_add_with_favourite_and_filter(client, auth, packages, make_user):
    make_user("fav@example.com", tier="premium")
    headers = auth("fav@example.com")
    client.post(f"/api/user/packages/{packages['rain']}", json={"favorite": True},
                headers=headers)
    client.post(f"/api/user/packages/{packages['delta']}", headers=headers)
    favs = client.get("/api/user/packages?favorite=true", headers=headers).json["data"]
    assert [e["package"]["slug"] for e in favs] == ["rain"]
    everything = client.get("/api/user/packages", headers=headers).json["data"]
    assert [e["package"]["slug"] for e in everything] == ["delta", "rain"]  # newest first


def test_above_tier_is_locked_and_changes_nothing(client, auth, packages, db_session, make_user):
    make_user("s@example.com")
    headers = auth("s@example.com")
    res = client.post(f"/api/user/packages/{packages['delta']}", headers=headers)
    assert res.status_code == 403
    assert res.json["code"] == "package_locked"
    assert res.json["required_tier"] == "premium"
    assert db_session.execute(select(func.count(UserSoundPackage.id))).scalar_one() == 0


def test_unknown_unpublished_and_bad_bodies(client, auth, packages, make_user):
    make_user("b@example.com", tier="pro")
    headers = auth("b@example.com")
    assert client.post(f"/api/user/packages/{packages['draft']}",
                       headers=headers).status_code == 404
    assert client.post("/api/user/packages/99999", headers=headers).status_code == 404
    res = client.post(f"/api/user/packages/{packages['rain']}", json={"star": True},
                      headers=headers)
    assert res.status_code == 422 and res.json["errors"] == ["star: Unknown field."]
    res = client.patch(f"/api/user/packages/{packages['rain']}", json={"favorite": True},
                       headers=headers)
    assert res.status_code == 404  # not in the library yet


def test_libraries_are_private(client, auth, packages, make_user):
    make_user("ana@example.com")
    ana = auth("ana@example.com")
    make_user("ben@example.com")
    ben = auth("ben@example.com")
    client.post(f"/api/user/packages/{packages['rain']}", headers=ana)
    assert client.get("/api/user/packages", headers=ben).json["data"] == []
    assert client.patch(f"/api/user/packages/{packages['rain']}", json={"favorite": True},
                        headers=ben).status_code == 404
    assert client.delete(f"/api/user/packages/{packages['rain']}",
                         headers=ben).status_code == 404
    assert len(client.get("/api/user/packages", headers=ana).json["data"]) == 1


def test_archived_package_leaves_library(client, auth, packages, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    make_user("x@example.com")
    headers = auth("x@example.com")
    client.post(f"/api/user/packages/{packages['rain']}", headers=headers)
    assert client.delete(f"/api/admin/packages/{packages['rain']}",
                         headers=admin).status_code == 200
    assert client.get("/api/user/packages", headers=headers).json["data"] == []


def test_admin_assigns_packages(client, auth, packages, db_session, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    user_id = make_user("member@example.com").id
    headers = auth("member@example.com")

    res = client.post(f"/api/admin/users/{user_id}/packages",
                      json={"package_id": packages["delta"]}, headers=admin)
    assert res.status_code == 201, res.json
    assert res.json["data"]["assigned_by_admin"] is True
    again = client.post(f"/api/admin/users/{user_id}/packages",
                        json={"package_id": packages["delta"]}, headers=admin)
    assert again.status_code == 200

    # an assignment opens the package whatever the tier
    entries = client.get("/api/user/packages", headers=headers).json["data"]
    assert [(e["package"]["slug"], e["package"]["locked"], e["package"]["access"])
            for e in entries] == [("delta", False, "assigned")]
    start = client.post("/api/user/sessions", json={"package_id": packages["delta"]},
                        headers=headers)
    assert start.status_code == 201, start.json

    audit = db_session.execute(select(AuditLog).where(AuditLog.action == "library.assign")
                               .order_by(AuditLog.id)).scalars().all()
    assert len(audit) == 2 and audit[0].target_id == str(user_id)
    assert audit[0].after["package_id"] == packages["delta"]

    assert client.post("/api/admin/users/99999/packages", json={"package_id": packages["rain"]},
                       headers=admin).status_code == 404
    assert client.post(f"/api/admin/users/{user_id}/packages",
                       json={"package_id": packages["draft"]}, headers=admin).status_code == 404
    assert client.post(f"/api/admin/users/{user_id}/packages", json={"package": 1},
                       headers=admin).status_code == 422
    assert client.post(f"/api/admin/users/{user_id}/packages",
                       json={"package_id": packages["rain"]}, headers=headers).status_code == 403


def test_removing_a_package_refuses_a_body_field_and_keeps_it(client, auth, packages, make_user):
    """A DELETE takes no body: ``{"favorite": true}`` sent with one is a 422 naming the field,
    and the package stays in the library."""
    make_user("l@example.com")
    headers = auth("l@example.com")
    assert client.post(f"/api/user/packages/{packages['rain']}",
                       headers=headers).status_code == 201
    res = client.delete(f"/api/user/packages/{packages['rain']}", json={"favorite": True},
                        headers=headers)
    assert res.status_code == 422
    assert res.json["code"] == "validation_error"
    assert res.json["errors"] == ["favorite: Unknown field."]
    listing = client.get("/api/user/packages", headers=headers).json["data"]
    assert [e["package"]["slug"] for e in listing] == ["rain"]
    assert client.delete(f"/api/user/packages/{packages['rain']}", json={},
                         headers=headers).status_code == 200


def test_unpublished_package_leaves_library_until_published_again(
        client, auth, packages, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    make_user("x@example.com")
    headers = auth("x@example.com")
    client.post(f"/api/user/packages/{packages['rain']}", headers=headers)
    res = client.patch(f"/api/admin/packages/{packages['rain']}", headers=admin,
                       json={"published": False})
    assert res.status_code == 200, res.json
    assert client.get(f"/api/packages/{packages['rain']}", headers=headers).status_code == 404
    assert client.get("/api/user/packages", headers=headers).json["data"] == []
    assert client.patch(f"/api/user/packages/{packages['rain']}", headers=headers,
                      json={"favorite": True}).status_code == 404

    res = client.patch(f"/api/admin/packages/{packages['rain']}", headers=admin,
                       json={"published": True})
    assert res.status_code == 200, res.json
    listed = client.get("/api/user/packages", headers=headers).json["data"]
    assert [e["package_id"] for e in listed] == [packages["rain"]]
