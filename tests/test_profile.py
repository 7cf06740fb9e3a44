from datetime import date


def _seed_listening(make_package, make_session, user_id):
    make_session(user_id, make_package("rain"), date(2026, 11, 20), minutes=5, mood_before=3,
                 mood_after=7, note="felt calmer")


def test_update_profile_fields(client, auth):
    headers = auth()
    res = client.put("/api/user/profile", headers=headers, json={
        "display_name": "Night Owl", "timezone": "Pacific/Auckland", "day_start_hour": 4,
        "preferences": {"goals": ["sleep"], "daily_goal_minutes": 20}})
    assert res.status_code == 200
    data = res.json["data"]
    assert data["display_name"] == "Night Owl"
    assert data["timezone"] == "Pacific/Auckland"
    assert data["day_start_hour"] == 4
    assert data["preferences"]["goals"] == ["sleep"]
    assert data["preferences"]["daily_goal_minutes"] == 20
    assert data["preferences"]["show_streaks"] is True
    # a later partial change keeps the rest
    res = client.put("/api/user/profile", headers=headers,
                     json={"preferences": {"show_streaks": False}})
    prefs = res.json["data"]["preferences"]
    assert prefs["goals"] == ["sleep"] and prefs["show_streaks"] is False


def test_empty_update_is_rejected(client, auth):
    res = client.put("/api/user/profile", headers=auth(), json={})
    assert res.status_code == 422


def test_the_servers_own_local_zone_is_not_a_time_zone_a_user_can_pick(client, auth):
    """``localtime`` is the machine's zone (a file beside the IANA ones), not an IANA name:
    what it means would change with the server the API runs on."""
    headers = auth()
    res = client.put("/api/user/profile", headers=headers, json={"timezone": "localtime"})
    assert res.status_code == 422
    assert res.json["errors"] == ["timezone: Not a valid IANA time zone."]
    assert client.get("/api/user/profile", headers=headers).json["data"]["timezone"] == "UTC"


def test_onboarding_reflects_state(client, auth):
    data = client.get("/api/user/profile", headers=auth(email_verified=False)).json["data"]
    assert data["email_verified"] is False
    assert data["onboarding"] == {"email_verified": False, "tier_chosen": False,
                                  "payment_pending": False, "completed": False}


def test_export_contains_everything_and_only_mine(client, auth, db_session, make_package,
                                                  make_session):
    from sonicus.models import User

    mine = auth("me@example.com")
    client.get("/api/user/profile", headers=mine)
    client.get("/api/user/profile", headers=auth("other@example.com"))
    me = db_session.query(User).filter_by(email="me@example.com").one()
    other = db_session.query(User).filter_by(email="other@example.com").one()
    _seed_listening(make_package, make_session, me.id)
    res = client.get("/api/user/export", headers=mine)
    assert res.status_code == 200
    doc = res.json["data"]
    assert doc["user"]["email"] == "me@example.com"
    assert doc["subscription"]["tier"] == "starter"
    assert [s["note"] for s in doc["sessions"]] == ["felt calmer"]
    assert doc["subscription_events"][0]["type"] == "signed_up"
    assert other.id != me.id


def test_delete_erases_account_and_anonymises_sessions(client, auth, db_session, make_package,
                                                       make_session):
    from sonicus.models import ListeningSession, User, UserSubscription

    headers = auth("gone@example.com")
    client.get("/api/user/profile", headers=headers)
    user_id = db_session.query(User).one().id
    _seed_listening(make_package, make_session, user_id)
    res = client.delete("/api/user/profile", headers=headers)
    assert res.status_code == 200
    assert res.json["success"] is True
    db_session.expire_all()
    assert db_session.query(User).count() == 0
    assert db_session.query(UserSubscription).count() == 0
    session = db_session.query(ListeningSession).one()
    assert session.user_id is None and session.note is None and session.mood_before is None
    # signing in again starts a fresh account
    res = client.get("/api/user/profile", headers=headers)
    assert res.status_code == 200 and res.json["data"]["id"] != user_id
