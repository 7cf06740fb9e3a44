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


BIDI_CONTROLS = [chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))]


def test_a_display_name_with_bidirectional_controls_is_422_naming_it(client, auth):
    """A name holding an embedding, override or isolate control (U+202A..U+202E,
    U+2066..U+2069) would show reversed or reordered text in the admin screens and exports
    (an admin reading "moc.elpmaxe@nimda" as another account): refused, the name kept."""
    headers = auth()
    assert client.put("/api/user/profile", headers=headers,
                      json={"display_name": "Night Owl"}).status_code == 200
    for control in BIDI_CONTROLS:
        res = client.put("/api/user/profile", headers=headers,
                         json={"display_name": f"Eve{control}nimda"})
        assert res.status_code == 422, (hex(ord(control)), res.json)
        assert [e.split(":")[0] for e in res.json["errors"]] == ["display_name"]
        assert "bidirectional" in res.json["errors"][0]
    assert client.get("/api/user/profile", headers=headers).json["data"]["display_name"] == \
        "Night Owl"


def test_right_to_left_names_are_welcome(client, auth):
    headers = auth()
    for name in ("محمد الأحمد", "שרה כהן", "Dana (דנה)", "علي\u200f 2"):
        res = client.put("/api/user/profile", headers=headers, json={"display_name": name})
        assert res.status_code == 200, res.json
        assert res.json["data"]["display_name"] == name
