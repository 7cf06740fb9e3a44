"""Every admin route, enumerated from the app's URL map: 403 for a plain user, 401 anonymous."""

from __future__ import annotations

import re

import pytest

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def admin_endpoints(app) -> list[tuple[str, str]]:
    """(method, path) of every rule under /api/admin, path parameters filled with 1."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/admin"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?[^<>]+>", "1", rule.rule)
        for method in sorted(rule.methods - IGNORED_METHODS):
            found.append((method, path))
    return found


def _call(client, method, path, headers=None):
    kwargs = {"headers": headers or {}}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return client.open(path, method=method, **kwargs)


def test_the_enumeration_finds_the_admin_routes(app):
    endpoints = admin_endpoints(app)
    for expected in [("GET", "/api/admin/platform/stats"), ("GET", "/api/admin/users"),
                     ("GET", "/api/admin/users/1"), ("PATCH", "/api/admin/users/1"),
                     ("GET", "/api/admin/jobs"), ("GET", "/api/admin/audit")]:
        assert expected in endpoints
    assert all("<" not in path for _, path in endpoints)


def test_plain_user_gets_403_forbidden_on_every_admin_route(app, client, auth, db_session):
    from sonicus.models import AuditLog, User, UserSubscription

    headers = auth("plain@example.com")
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    user_id = db_session.query(User).one().id
    assert user_id == 1  # the filled-in path parameter points at a real row
    failures = []
    for method, path in admin_endpoints(app):
        res = _call(client, method, path, headers)
        if res.status_code != 403 or res.json.get("code") != "forbidden" \
                or res.json.get("success") is not False:
            failures.append((method, path, res.status_code, res.json))
    assert failures == []
    db_session.expire_all()
    assert db_session.query(AuditLog).count() == 0
    assert db_session.get(User, user_id).is_active is True
    assert db_session.query(UserSubscription).one().tier == "starter"


def test_anonymous_gets_401_on_every_admin_route(app, client):
    failures = []
    for method, path in admin_endpoints(app):
        res = _call(client, method, path)
        if res.status_code != 401 or res.json.get("code") != "missing_token" \
                or "WWW-Authenticate" not in res.headers:
            failures.append((method, path, res.status_code))
    assert failures == []


@pytest.mark.parametrize("groups", [("sonicus-user", "sonicus-admin"), ("sonicus-user", "admin")])
def test_lookalike_groups_are_not_admin(app, client, auth, groups):
    res = client.get("/api/admin/users", headers=auth("near@example.com", groups=groups))
    assert res.status_code == 403
    assert res.json["code"] == "forbidden"


def test_admin_reaches_the_read_routes(app, client, admin_auth):
    headers = admin_auth()
    for method, path in admin_endpoints(app):
        if method == "GET" and path in ("/api/admin/platform/stats", "/api/admin/users",
                                        "/api/admin/jobs", "/api/admin/audit"):
            res = client.get(path, headers=headers)
            assert res.status_code == 200, (path, res.json)
            assert res.json["success"] is True


def test_suspended_admin_is_locked_out(client, admin_auth, db_session):
    from sonicus.models import User

    headers = admin_auth("boss@example.com")
    assert client.get("/api/admin/users", headers=headers).status_code == 200
    from sonicus.services.admin_users import update_user

    user = db_session.query(User).filter_by(email="boss@example.com").one()
    update_user(None, user.id, {"is_active": False}, actor_label="test")
    res = client.get("/api/admin/users", headers=headers)
    assert res.status_code == 403
    assert res.json["code"] == "account_suspended"
