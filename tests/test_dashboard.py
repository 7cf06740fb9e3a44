"""GET /api/user/dashboard: everything the home screen needs, in a bounded number of queries."""

from __future__ import annotations

from datetime import timedelta

from sonicus import clock


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def test_dashboard_in_one_call(client, auth, db_session, make_user, make_package, make_session):
    me = make_user("home@example.com").id
    pkg = make_package("ocean", category="sleep").id
    make_session(me, pkg, _today(), minutes=12, mood_before=4, mood_after=6)
    open_id = make_session(me, pkg, _today(), minutes=3, completed=False, status="open").id
    res = client.get("/api/user/dashboard", headers=auth("home@example.com"))
    assert res.status_code == 200, res.json
    data = res.json["data"]
    assert data["profile"]["email"] == "home@example.com"
    assert data["profile"]["tier"] == "starter"
    sub = data["subscription"]
    assert sub["tier"] == "starter" and sub["status"] == "active"
    assert sub["limits"] == {"daily_sessions": 3, "max_session_minutes": 15,
                             "package_levels": ["public"], "offline_downloads": False}
    assert sub["usage"]["sessions_today"] == 2
    assert sub["usage"]["sessions_remaining"] == 1
    assert sub["usage"]["resets_at"]
    assert data["analytics"]["total_sessions"] == 2
    assert data["analytics"]["completed_sessions"] == 1
    assert "daily_minutes" not in data["analytics"]  # the summary only
    cont = data["continue_listening"]
    assert cont["session_id"] == open_id
    assert cont["listened_seconds"] == 180
    assert cont["package"]["id"] == pkg and cont["package"]["title"] == "Ocean"
    assert data["onboarding"] == data["profile"]["onboarding"]
    assert [p["package"]["id"] for p in data["recommended"]] == [pkg]


def test_no_open_session_means_nothing_to_continue(client, auth, db_session, make_user,
                                                   make_package, make_session):
    me = make_user("done@example.com").id
    pkg = make_package("ocean").id
    make_session(me, pkg, _today())
    data = client.get("/api/user/dashboard", headers=auth("done@example.com")).json["data"]
    assert data["continue_listening"] is None


def test_another_users_open_session_is_not_offered(client, auth, db_session, make_user,
                                                   make_package, make_session):
    other = make_user("other@example.com").id
    make_user("me@example.com")
    pkg = make_package("ocean").id
    make_session(other, pkg, _today(), status="open", completed=False)
    data = client.get("/api/user/dashboard", headers=auth("me@example.com")).json["data"]
    assert data["continue_listening"] is None


def test_recommended_is_the_first_items_of_the_recommendations(
        app, client, auth, db_session, make_user, make_package, make_session):
    from sonicus.services.recommendation_model import rebuild_recommendation_model

    me = make_user("rank@example.com").id
    other = make_user("someone@example.com").id
    headers = auth("rank@example.com")
    res = client.put("/api/user/profile", headers=headers,
                     json={"preferences": {"favorite_categories": ["nature"]}})
    assert res.status_code == 200
    helped_a_lot = make_package("helped-a-lot", category="focus", popularity=1).id
    helped = make_package("helped", category="sleep", popularity=2).id
    worse = make_package("made-it-worse", category="nature", popularity=900).id
    favourite = make_package("favourite", category="nature", popularity=3).id
    popular = make_package("popular", category="focus", popularity=500).id
    others_hit = make_package("others-hit", category="focus", popularity=400).id
    make_package("premium-only", category="nature", minimum_tier="premium", popularity=10_000)
    make_package("draft", category="nature", published=False, popularity=10_000)
    day = _today() - timedelta(days=1)
    for _ in range(3):
        make_session(me, helped_a_lot, day, mood_before=2, mood_after=8)
        make_session(me, helped, day, mood_before=5, mood_after=6)
        make_session(me, worse, day, mood_before=6, mood_after=4)
    # Someone else's outcomes are not mine.
    make_session(other, others_hit, day, mood_before=1, mood_after=10)
    rebuild_recommendation_model()

    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    ranked = [(p["package"]["id"], p["reason"]["kind"]) for p in data["recommended"]]
    assert ranked[:3] == [(helped_a_lot, "own_outcome"), (helped, "own_outcome"),
                          (favourite, "favorite_category")]
    assert {popular, others_hit} <= {pid for pid, _kind in ranked}
    assert (others_hit, "own_outcome") not in ranked
    assert ranked[-1][0] == worse  # rated poorly twice recently: last
    assert data["recommended"][0]["reason"]["text"] == \
        "Lifted your mood by 6.0 points on average over 3 sessions."
    assert all(p["package"]["locked"] is False for p in data["recommended"])
    listed = client.get("/api/user/recommendations?limit=6", headers=headers).json["data"]
    assert data["recommended"] == listed


def test_without_favourites_popularity_ranks(client, auth, make_user, make_package):
    make_user("plain@example.com")
    first = make_package("first-made", popularity=1).id
    second = make_package("second-made", popularity=7).id
    data = client.get("/api/user/dashboard", headers=auth("plain@example.com")).json["data"]
    assert [(p["package"]["id"], p["reason"]["kind"]) for p in data["recommended"]] == [
        (second, "popular"), (first, "popular")]


def test_paid_tier_sees_its_packages(client, auth, make_user, make_package):
    make_user("pro@example.com", tier="premium")
    make_package("public-one", popularity=1)
    premium = make_package("premium-one", minimum_tier="premium", popularity=5).id
    exclusive = make_package("pro-one", minimum_tier="pro_exclusive", popularity=9).id
    data = client.get("/api/user/dashboard", headers=auth("pro@example.com")).json["data"]
    ids = [p["package"]["id"] for p in data["recommended"]]
    assert premium in ids and exclusive not in ids
    assert data["subscription"]["usage"]["sessions_remaining"] == 10


def test_query_count_does_not_grow_with_the_data(sql_statements, auth, redis_client, make_config,
                                                 make_user, make_package, make_session):
    from sonicus import create_app

    # Identity snapshots that outlast the test: each warm request reuses its cold one's
    # however slow the machine is, so only the data could change the counts.
    app = create_app(make_config(AUTH_USER_CACHE_SECONDS=600))
    client = app.test_client()
    small = make_user("small@example.com").id
    big = make_user("big@example.com").id
    first = make_package("first").id
    make_session(small, first, _today(), mood_before=3, mood_after=5)
    make_session(small, first, _today(), status="open", completed=False)
    packages = [make_package(f"pkg-{i}", category=f"cat-{i % 7}", popularity=i).id
                for i in range(40)]
    for i in range(300):
        make_session(big, packages[i % 40], _today() - timedelta(days=i % 60),
                     mood_before=i % 10 + 1, mood_after=(i * 7) % 10 + 1)
    make_session(big, packages[3], _today(), status="open", completed=False)

    headers = {email: auth(email) for email in ("small@example.com", "big@example.com")}

    def fetch(email):
        def run():
            res = client.get("/api/user/dashboard", headers=headers[email])
            assert res.status_code == 200
            assert res.json["data"]["continue_listening"] is not None
        return run

    redis_client.flushdb()
    cold_small = sql_statements(app, fetch("small@example.com"))
    cold_big = sql_statements(app, fetch("big@example.com"))
    warm_small = sql_statements(app, fetch("small@example.com"))
    warm_big = sql_statements(app, fetch("big@example.com"))
    # cold: 16 with the look-up, once the computed analytics are cached, that the account was
    # not erased meanwhile (else they are forgotten again)
    assert len(cold_small) == len(cold_big) <= 16
    # warm: 10 with the lookup by id of the cached analytics' package titles and categories,
    # and whether another account of the person used the trial (one statement for live and
    # erased accounts)
    assert len(warm_small) == len(warm_big) <= 10
    assert len(warm_big) < len(cold_big)  # the analytics came from the cache


def test_an_archived_package_is_not_offered_to_continue_listening(
        client, auth, admin_auth, db_session, make_user, make_package, make_session):
    me = make_user("resume@example.com").id
    make_user("admin@example.com", admin=True)
    kept = make_package("kept").id
    gone = make_package("gone").id
    older = make_session(me, kept, _today() - timedelta(days=2), minutes=3, completed=False)
    newer = make_session(me, gone, _today() - timedelta(days=1), minutes=3, completed=False)
    older.position_seconds, newer.position_seconds = 90, 120
    db_session.commit()
    headers = auth("resume@example.com")
    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert data["continue_listening"]["package"]["id"] == gone

    assert client.delete(f"/api/admin/packages/{gone}", headers=admin_auth()).status_code == 200
    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert data["continue_listening"]["package"]["id"] == kept  # the one that still plays
    assert data["continue_listening"]["position_seconds"] == 90


def test_a_package_the_tier_no_longer_opens_is_not_offered_to_continue_listening(
        client, auth, admin_auth, db_session, make_user, make_package, make_session):
    """A premium listener half-way through a premium package is downgraded: the dashboard
    offers what still plays (starting the premium one would be 403 package_locked) until an
    assignment opens that package again."""
    me = make_user("downgraded@example.com", tier="premium").id
    make_user("admin@example.com", admin=True)
    public = make_package("public-rain").id
    premium = make_package("deep-premium", minimum_tier="premium").id
    older = make_session(me, public, _today() - timedelta(days=2), minutes=3, completed=False)
    newer = make_session(me, premium, _today() - timedelta(days=1), minutes=3, completed=False)
    older.position_seconds, newer.position_seconds = 90, 120
    db_session.commit()
    headers = auth("downgraded@example.com")
    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert data["continue_listening"]["package"]["id"] == premium

    res = client.patch(f"/api/admin/users/{me}", headers=admin_auth(), json={"tier": "starter"})
    assert res.status_code == 200, res.json
    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert data["subscription"]["tier"] == "starter"
    assert data["continue_listening"]["package"]["id"] == public  # the one that still plays
    assert data["continue_listening"]["position_seconds"] == 90
    res = client.post("/api/user/sessions", headers=headers, json={"package_id": premium})
    assert res.status_code == 403  # what the dashboard no longer offers

    res = client.post(f"/api/admin/users/{me}/packages", headers=admin_auth(),
                      json={"package_id": premium})
    assert res.status_code in (200, 201), res.json
    data = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert data["continue_listening"]["package"]["id"] == premium  # assigned: it plays again
