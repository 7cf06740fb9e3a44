"""The per-process caller cache: no sign-in query for a token seen moments ago, never stale
for this process's own writes, bounded staleness for other processes' writes."""

import time

from sqlalchemy import text

from sonicus import create_app
from sonicus.extensions import db


def test_a_token_seen_moments_ago_needs_no_query(sql_statements, app, client, auth):
    headers = auth("burst@example.com")
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    statements = sql_statements(
        app, lambda: client.get("/api/user/profile", headers=headers))
    assert statements == []


def test_own_writes_are_never_stale(client, auth, admin_auth, db_session):
    from sonicus.models import User

    headers = auth("writer@example.com")
    client.get("/api/user/profile", headers=headers)
    client.put("/api/user/profile", headers=headers, json={"timezone": "Europe/Berlin"})
    assert client.get("/api/user/profile",
                      headers=headers).json["data"]["timezone"] == "Europe/Berlin"
    # a change through the ORM elsewhere in this process, e.g. an admin tier grant
    user_id = db_session.query(User).filter_by(email="writer@example.com").one().id
    res = client.patch(f"/api/admin/users/{user_id}", headers=admin_auth(),
                       json={"tier": "pro"})
    assert res.status_code == 200
    assert client.get("/api/user/profile", headers=headers).json["data"]["tier"] == "pro"
    client.patch(f"/api/admin/users/{user_id}", headers=admin_auth(), json={"is_active": False})
    assert client.get("/api/user/profile", headers=headers).status_code == 403


def test_other_processes_writes_are_seen_within_the_window(idp, make_config):
    app = create_app(make_config(AUTH_USER_CACHE_SECONDS=0.5))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='far@example.com', name='Far')}"}
    assert client.get("/api/user/profile", headers=headers).json["data"]["display_name"] == "Far"
    with app.app_context():  # another process's write: plain SQL the ORM never sees
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE sonicus.users SET display_name = 'Changed' "
                              "WHERE email = 'far@example.com'"))
    time.sleep(0.6)
    assert client.get("/api/user/profile",
                      headers=headers).json["data"]["display_name"] == "Changed"


def test_the_cache_can_be_turned_off(sql_statements, idp, make_config):
    app = create_app(make_config(AUTH_USER_CACHE_SECONDS=0))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='off@example.com')}"}
    client.get("/api/user/profile", headers=headers)
    statements = sql_statements(
        app, lambda: client.get("/api/user/profile", headers=headers))
    assert any("FROM sonicus.users" in s for s in statements)


def test_a_caller_read_from_the_snapshot_is_still_held_to_the_admin_check(
        sql_statements, app, client, auth, admin_auth):
    listener, admin = auth("curious@example.com"), admin_auth("boss@example.com")
    for _ in range(2):  # the second round is answered from the snapshot
        assert client.get("/api/admin/users", headers=listener).status_code == 403
        assert client.get("/api/admin/users", headers=admin).status_code == 200
    statements = sql_statements(
        app, lambda: client.get("/api/admin/users", headers=listener))
    assert statements == []


def test_a_change_right_after_a_cached_read_is_saved(client, auth, db_session):
    from sonicus.models import User

    headers = auth("quick@example.com")
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    assert client.get("/api/user/profile", headers=headers).status_code == 200  # snapshot
    res = client.put("/api/user/profile", headers=headers,
                     json={"display_name": "Quick", "preferences": {"goals": ["sleep"]}})
    assert res.status_code == 200 and res.json["data"]["display_name"] == "Quick"
    stored = db_session.query(User).filter_by(email="quick@example.com").one()
    assert stored.display_name == "Quick" and stored.preferences["goals"] == ["sleep"]
    data = client.get("/api/user/profile", headers=headers).json["data"]
    assert data["display_name"] == "Quick" and data["preferences"]["goals"] == ["sleep"]


def test_the_profile_from_the_snapshot_is_the_profile_from_the_database(client, auth):
    headers = auth("same@example.com", name="Same Person")
    client.put("/api/user/profile", headers=headers,
               json={"timezone": "Asia/Tokyo", "preferences": {"goals": ["focus", "sleep"]}})
    # after the change: loaded from the database, then built from the snapshot, then reused
    answers = [client.get("/api/user/profile", headers=headers).json for _ in range(3)]
    assert answers[0]["data"]["timezone"] == "Asia/Tokyo"
    assert answers[0]["data"]["preferences"]["goals"] == ["focus", "sleep"]
    assert answers[0] == answers[1] == answers[2]


def test_a_caller_read_before_a_change_is_not_cached_after_it():
    """A request that read the user before another request's change committed must not put
    that stale caller into the cache after the change forgot the user."""
    from types import SimpleNamespace

    from sonicus.caller_cache import CallerCache

    cache = CallerCache(ttl_seconds=60)
    stale = SimpleNamespace(id=7, tier="premium")
    read_since = cache.generation      # request A starts reading user 7
    cache.forget([7])                  # request B commits a downgrade of user 7
    cache.put("token-a", stale, read_since)
    assert cache.get("token-a") is None
    fresh = SimpleNamespace(id=7, tier="starter")
    cache.put("token-a", fresh, cache.generation)  # a read that began after the change
    assert cache.get("token-a") is fresh
    other = SimpleNamespace(id=8, tier="pro")
    cache.put("token-b", other, read_since)         # another user's change is no reason
    assert cache.get("token-b") is other
