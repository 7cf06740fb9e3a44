"""GET /api/user/recommendations: packages ranked by measured mood outcomes (own, people like
you, the population), shrunk by the evidence; only sessions that count feed them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from rq import Queue

from sonicus import clock
from sonicus.tasks.queue import QUEUE_MAINTENANCE


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def _build(app):
    """The platform job, inline (its SQL on PostgreSQL)."""
    from sonicus.services.recommendation_model import rebuild_recommendation_model

    with app.app_context():
        return rebuild_recommendation_model()


def _recommendations(client, headers, query=""):
    res = client.get(f"/api/user/recommendations{query}", headers=headers)
    assert res.status_code == 200, res.json
    return res.json["data"]


def _sessions(make_session, user, package, lifts, *, start_day=None, minutes=10, before=4):
    """One counting session per lift, oldest first, a day apart."""
    day = start_day or _today() - timedelta(days=len(lifts) + 1)
    for i, lift in enumerate(lifts):
        low = max(1, min(before, 10 - lift)) if lift >= 0 else max(before, 1 - lift)
        make_session(user, package, day + timedelta(days=i), minutes=minutes, mood_before=low,
                     mood_after=low + lift)


def _set_preferences(client, headers, **preferences):
    res = client.put("/api/user/profile", headers=headers, json={"preferences": preferences})
    assert res.status_code == 200, res.json


def test_five_one_second_sessions_of_plus_eight_count_for_nothing(app, client, auth, make_user,
                                                                   make_package, make_session):
    cheat = make_package("cheat", popularity=1).id
    steady = make_package("steady", popularity=2).id
    me = make_user("cheat@example.com")
    listeners = [make_user(f"l{i}@example.com") for i in range(5)]
    for i in range(5):  # one second each: none counts
        make_session(me, cheat, _today() - timedelta(days=i + 1), minutes=1 / 60,
                     completed=True, mood_before=1, mood_after=9)
    for listener in listeners:
        _sessions(make_session, listener, steady, [1, 2, 1])
    _build(app)

    items = _recommendations(client, auth("cheat@example.com"))
    assert [i["package"]["id"] for i in items] == [steady, cheat]
    first, trap = items
    assert first["reason"]["kind"] == "popular" and first["expected_mood_change"] > 0
    assert trap["reason"]["kind"] == "popular"
    assert trap["expected_mood_change"] == 0.0 and trap["confidence"] == 0.0
    assert trap["reason"]["text"] == "Popular with listeners: played 1 time."


def test_one_plus_eight_session_does_not_outrank_thirty_plus_two(app, client, auth, make_user,
                                                                  make_package, make_session):
    once = make_package("once").id
    thirty = make_package("thirty").id
    me = make_user("shrink@example.com")
    _sessions(make_session, me, once, [8])
    _sessions(make_session, me, thirty, [2] * 30)
    _build(app)

    items = _recommendations(client, auth("shrink@example.com"))
    assert [i["package"]["id"] for i in items] == [thirty, once]
    assert items[0]["reason"] == {
        "kind": "own_outcome", "text": "Lifted your mood by 2.0 points on average over 30 "
                                       "sessions."}
    assert items[1]["reason"]["text"] == \
        "Lifted your mood by 8.0 points on average over 1 session."
    assert items[0]["confidence"] > items[1]["confidence"]
    assert items[1]["expected_mood_change"] < items[0]["expected_mood_change"] < 2.0


def test_a_users_rating_bias_is_taken_out(app, client, auth, make_user, make_package,
                                          make_session):
    """Someone who rates every session +5 does not make an average package look best to
    themselves: against the population it lifts them no more than it lifts anyone."""
    average = make_package("average", popularity=5).id
    better = make_package("better", popularity=1).id
    everyone = [make_user(f"p{i}@example.com") for i in range(10)]
    for person in everyone:
        _sessions(make_session, person, average, [1] * 5)
        _sessions(make_session, person, better, [3] * 5)
    enthusiast = make_user("enthusiast@example.com")
    _sessions(make_session, enthusiast, average, [5] * 5)
    _build(app)

    items = _recommendations(client, auth("enthusiast@example.com"))
    assert [i["package"]["id"] for i in items] == [better, average]
    assert items[1]["reason"]["kind"] == "own_outcome"  # the text keeps what they said
    assert items[1]["reason"]["text"] == "Lifted your mood by 5.0 points on average over 5 " \
                                         "sessions."
    assert items[1]["expected_mood_change"] < 3.0 < 5.0


def test_people_with_your_goal_and_starting_mood(app, client, auth, make_user, make_package,
                                                 make_session):
    for_sleep = make_package("deep-sleep", category="sleep", popularity=1).id
    for_focus = make_package("focus-beats", category="focus", popularity=50).id
    sleepers = [make_user(f"s{i}@example.com") for i in range(6)]
    for i, person in enumerate(sleepers):
        _set_preferences(client, auth(f"s{i}@example.com"), goals=["sleep"])
        _sessions(make_session, person, for_sleep, [3, 3, 3], before=3)
        _sessions(make_session, person, for_focus, [0, 0, 0], before=3)
    focusers = [make_user(f"f{i}@example.com") for i in range(6)]
    for i, person in enumerate(focusers):
        _set_preferences(client, auth(f"f{i}@example.com"), goals=["focus"])
        _sessions(make_session, person, for_sleep, [-1, -1, -1], before=3)
        _sessions(make_session, person, for_focus, [3, 3, 3], before=3)
    me = make_user("tired@example.com")
    _set_preferences(client, auth("tired@example.com"), goals=["Sleep"])
    _sessions(make_session, me, for_focus, [0], before=2)  # a low starting mood, like them
    _build(app)

    items = _recommendations(client, auth("tired@example.com"))
    assert items[0]["package"]["id"] == for_sleep
    assert items[0]["reason"] == {
        "kind": "similar_users",
        "text": "People with your sleep goal and a similar starting mood felt 3.0 points "
                "better after it (18 sessions)."}
    assert items[0]["expected_mood_change"] > 0 and 0 < items[0]["confidence"] < 1
    # Without the goal, the population's figures: the same package is no longer first.
    make_user("nogoal@example.com")
    plain = _recommendations(client, auth("nogoal@example.com"))
    assert plain[0]["package"]["id"] == for_focus
    assert plain[0]["reason"]["kind"] == "popular"
    assert plain[0]["reason"]["text"].startswith("Listeners felt ")


def test_a_package_rated_poorly_twice_recently_is_not_first(app, client, auth, make_user,
                                                            make_package, make_session):
    soured = make_package("soured", popularity=1).id
    modest = make_package("modest", popularity=2).id
    me = make_user("soured@example.com")
    _sessions(make_session, me, soured, [5, 5, 5, 5, 5, 5, -1, -2])
    _sessions(make_session, me, modest, [1, 1])
    _build(app)

    items = _recommendations(client, auth("soured@example.com"))
    assert [i["package"]["id"] for i in items] == [modest, soured]
    assert items[1]["expected_mood_change"] > items[0]["expected_mood_change"]


def test_only_packages_the_caller_can_play(app, client, auth, admin_auth, make_user,
                                           make_package, make_session):
    from datetime import UTC, datetime

    open_one = make_package("open-one", popularity=1).id
    premium = make_package("premium-one", minimum_tier="premium", popularity=9).id
    assigned = make_package("assigned-one", minimum_tier="pro_exclusive").id
    make_package("draft", published=False, popularity=99)
    make_package("archived", archived_at=datetime(2026, 1, 1, tzinfo=UTC), popularity=99)
    me = make_user("starter@example.com")
    make_user("admin@example.com", admin=True)
    for package in (open_one, premium, assigned):
        _sessions(make_session, me, package, [4, 4])
    res = client.post(f"/api/admin/users/{me.id}/packages", headers=admin_auth(),
                      json={"package_id": assigned})
    assert res.status_code == 201, res.json
    _build(app)

    items = _recommendations(client, auth("starter@example.com"))
    assert sorted(i["package"]["slug"] for i in items) == ["assigned-one", "open-one"]
    access = {i["package"]["slug"]: (i["package"]["access"], i["package"]["locked"])
              for i in items}
    assert access == {"assigned-one": ("assigned", False), "open-one": ("tier", False)}
    assert set(items[0]["package"]) >= {"id", "slug", "title", "category", "minimum_tier",
                                        "required_tier", "duration_seconds", "popularity"}


def test_another_users_outcomes_never_show(app, client, auth, make_user, make_package,
                                           make_session):
    theirs = make_package("theirs", popularity=3).id
    other = make_user("other@example.com")
    make_user("me@example.com")
    _sessions(make_session, other, theirs, [6, 6, 6, 6])
    _build(app)

    make_package("plain", popularity=2)
    mine = _recommendations(client, auth("me@example.com"))
    assert mine[0]["reason"] == {"kind": "popular",
                                 "text": "Popular with listeners: played 3 times."}
    assert [i["expected_mood_change"] for i in mine] == [0.0, 0.0]  # one user moves nothing
    assert "6.0" not in str(mine)
    theirs_view = _recommendations(client, auth("other@example.com"))
    assert theirs_view[0]["reason"]["kind"] == "own_outcome"


def test_limit_is_checked(client, auth, make_user, make_package):
    make_user()
    for i in range(12):
        make_package(f"p-{i}", popularity=i)
    headers = auth()
    assert len(_recommendations(client, headers)) == 10
    assert len(_recommendations(client, headers, "?limit=3&_=cachebuster")) == 3
    for bad in ("0", "51", "abc", "2.5"):
        res = client.get(f"/api/user/recommendations?limit={bad}", headers=headers)
        assert res.status_code == 422, bad
        assert res.json["errors"][0].startswith("limit:")


def test_the_query_count_does_not_grow_with_the_data(app, client, auth, sql_statements,
                                                     make_user, make_package, make_session):
    small = make_user("small@example.com")
    big = make_user("big@example.com")
    packages = [make_package(f"pkg-{i}", category=f"cat-{i % 5}", popularity=i).id
                for i in range(30)]
    _sessions(make_session, small, packages[0], [2])
    for i in range(120):
        make_session(big, packages[i % 30], _today() - timedelta(days=i % 40), minutes=5,
                     mood_before=i % 9 + 1, mood_after=(i * 7) % 10 + 1)
    for email in ("small@example.com", "big@example.com"):
        _set_preferences(client, auth(email), goals=["sleep", "focus"],
                         favorite_categories=["cat-1"])
    _build(app)
    headers = {email: auth(email) for email in ("small@example.com", "big@example.com")}
    for email in headers:  # sign-in done once
        _recommendations(client, headers[email])

    counts = [len(sql_statements(app, lambda e=email: _recommendations(client, headers[e],
                                                                       "?limit=50")))
              for email in headers]
    assert counts[0] == counts[1] <= 5, counts


def test_the_platform_job_runs_on_a_worker_and_a_refresh_updates_own_figures(
        app, client, auth, redis_client, make_user, make_package, make_session):
    from sonicus.services.analytics import refresh_user_analytics
    from sonicus.tasks import schedule
    from sonicus.tasks.worker import make_worker

    helps = make_package("helps", popularity=1).id
    other = make_package("other", popularity=5).id
    me = make_user("worker@example.com")
    _sessions(make_session, me, helps, [3, 3, 3])
    now = 1_800_000_000.0
    with app.app_context():
        assert "rebuild_recommendation_model" in schedule.tick(now)
        assert schedule.tick(now + 1) == []  # one per slot
    make_worker(app, simple=True).work(burst=True)
    assert Queue(QUEUE_MAINTENANCE, connection=redis_client).failed_job_registry.count == 0
    items = _recommendations(client, auth("worker@example.com"))
    assert items[0]["package"]["id"] == helps
    assert items[0]["reason"]["text"] == "Lifted your mood by 3.0 points on average over 3 " \
                                         "sessions."

    # New sessions reach the user's own figures with their analytics refresh.
    _sessions(make_session, me, other, [5] * 6, start_day=_today())
    with app.app_context():
        refresh_user_analytics(me.id, publish=False)
    items = _recommendations(client, auth("worker@example.com"))
    assert items[0]["package"]["id"] == other
    assert items[0]["reason"]["text"] == "Lifted your mood by 5.0 points on average over 6 " \
                                         "sessions."


@pytest.mark.parametrize("goals", [[], ["sleep"]])
def test_before_any_model_the_list_is_by_popularity(client, auth, make_user, make_package,
                                                    goals):
    make_user()
    headers = auth()
    _set_preferences(client, headers, goals=goals, favorite_categories=["focus"])
    low = make_package("low", popularity=1).id
    high = make_package("high", popularity=7).id
    favourite = make_package("fav", category="focus", popularity=0).id
    items = _recommendations(client, headers)
    assert [i["package"]["id"] for i in items] == [favourite, high, low]
    assert items[0]["reason"]["kind"] == "favorite_category"
    assert items[0]["reason"]["text"] == \
        "From focus, one of your favourite categories; played 0 times."
    assert {i["confidence"] for i in items} == {0.0}


def test_erasure_removes_a_users_own_figures(app, client, auth, db_session, make_user,
                                             make_package, make_session):
    from sqlalchemy import func, select

    from sonicus.models import UserOutcomeProfile, UserPackageOutcome

    package = make_package("calm").id
    me = make_user("gone@example.com").id
    _sessions(make_session, me, package, [2, 3])
    _build(app)

    def rows(model):
        count = db_session.execute(select(func.count()).select_from(model)
                                   .where(model.user_id == me)).scalar_one()
        db_session.rollback()
        return count

    assert rows(UserPackageOutcome) == 1 and rows(UserOutcomeProfile) == 1
    assert client.delete("/api/user/profile", headers=auth("gone@example.com")).status_code == 200
    assert rows(UserPackageOutcome) == 0 and rows(UserOutcomeProfile) == 0
    _build(app)  # the anonymised sessions feed nothing any more
    assert rows(UserPackageOutcome) == 0 and rows(UserOutcomeProfile) == 0


def test_a_rebuild_is_seen_at_once_by_every_process_even_at_the_same_moment(
        app, client, auth, make_user, make_package, make_session, set_clock,
        two_web_processes):
    import requests

    set_clock(clock.now().replace(microsecond=0))  # both builds stamped with the same time
    calm = make_package("calm", popularity=3).id
    others = [make_user(f"o{i}@example.com") for i in range(6)]
    for person in others:
        _sessions(make_session, person, calm, [2])
    make_user("me@example.com")
    headers = auth("me@example.com")
    web = two_web_processes[0]

    def reasons():
        here = _recommendations(client, headers)
        res = requests.get(web.http_url("/api/user/recommendations"), headers=headers,
                           timeout=10)
        assert res.status_code == 200, res.text
        there = res.json()["data"]
        assert here == there
        return [item["reason"]["text"] for item in here]

    _build(app)
    assert reasons() == ["Listeners felt 2.0 points better after it on average (6 sessions)."]
    for person in others:
        _sessions(make_session, person, calm, [4], start_day=_today())
    assert reasons() == ["Listeners felt 2.0 points better after it on average (6 sessions)."]
    _build(app)  # both processes read the previous build's figures just before
    assert reasons() == ["Listeners felt 3.0 points better after it on average (12 "
                         "sessions)."]


def test_recommended_packages_carry_their_artwork(app, client, auth, make_user, make_package,
                                                  db_session):
    drawn = make_package("drawn", popularity=2)
    make_package("plain", popularity=1)
    drawn.image_path = "art/drawn.svg"
    db_session.commit()
    make_user("art@example.com")
    headers = auth("art@example.com")
    _build(app)

    items = {i["package"]["slug"]: i["package"] for i in _recommendations(client, headers)}
    assert items["drawn"]["image_url"].endswith("/art/drawn.svg")
    assert items["plain"]["image_url"] is None
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert [r["package"]["image_url"] for r in dashboard["recommended"]] == [
        items["drawn"]["image_url"], None]


def test_an_erased_listeners_moods_stop_feeding_other_peoples_recommendations(
        app, client, auth, redis_client, make_user, make_package, make_session):
    from sonicus.tasks.worker import make_worker

    calm = make_package("calm", popularity=3).id
    leaving = make_user("leaving@example.com")
    _sessions(make_session, leaving, calm, [8])
    for i in range(5):
        _sessions(make_session, make_user(f"o{i}@example.com"), calm, [2])
    make_user("me@example.com")
    _build(app)
    headers = auth("me@example.com")
    assert _recommendations(client, headers)[0]["reason"]["text"] == \
        "Listeners felt 3.0 points better after it on average (6 sessions)."

    assert client.delete("/api/user/profile",
                         headers=auth("leaving@example.com")).status_code == 200
    make_worker(app, simple=True).work(burst=True)
    assert Queue(QUEUE_MAINTENANCE, connection=redis_client).failed_job_registry.count == 0
    assert _recommendations(client, headers)[0]["reason"]["text"] == \
        "Listeners felt 2.0 points better after it on average (5 sessions)."


def test_one_listener_outside_a_goal_cannot_be_worked_out_from_two_figures(
        app, client, auth, make_user, make_package, make_session):
    """Five sleepers and one other listener played a package. The sleepers' figure and the
    population's, each of enough people, would give the sixth listener's own outcome by
    difference: the cohort figure is not shown while so few stand outside it."""
    calm = make_package("calm", popularity=3).id
    for i in range(5):
        make_user(f"s{i}@example.com")
        _set_preferences(client, auth(f"s{i}@example.com"), goals=["sleep"])
    for i in range(5):
        _sessions(make_session, make_user(f"s{i}@example.com"), calm, [2])
    _sessions(make_session, make_user("alone@example.com"), calm, [8])
    make_user("me@example.com")
    headers = auth("me@example.com")
    _build(app)

    figures = set()
    for goals in (["sleep"], []):
        _set_preferences(client, headers, goals=goals)
        figures.add(_recommendations(client, headers)[0]["reason"]["text"])
    assert figures == {"Listeners felt 3.0 points better after it on average (6 sessions)."}


def test_a_recommended_package_in_the_library_says_so(app, client, auth, make_user,
                                                      make_package):
    kept = make_package("kept", popularity=2).id
    make_package("other", popularity=1)
    make_user("lib@example.com")
    headers = auth("lib@example.com")
    assert client.post(f"/api/user/packages/{kept}", headers=headers).status_code == 201
    _build(app)

    marks = {i["package"]["slug"]: i["package"]["in_library"]
             for i in _recommendations(client, headers)}
    assert marks == {"kept": True, "other": False}
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert {r["package"]["slug"]: r["package"]["in_library"]
            for r in dashboard["recommended"]} == marks


def test_without_redis_an_erasure_answers_200_even_if_the_rebuild_after_it_fails(
        app, auth, db_session, make_config, make_user, make_package, make_session,
        monkeypatch):
    from sonicus import create_app
    from sonicus.services import recommendation_model

    inline = create_app(make_config(REDIS_URL=None))
    calm = make_package("calm").id
    leaving = make_user("inline@example.com")
    _sessions(make_session, leaving, calm, [2])
    _build(app)

    def broken():
        raise RuntimeError("the model could not be rebuilt")

    monkeypatch.setattr(recommendation_model, "rebuild_recommendation_model", broken)
    res = inline.test_client().delete("/api/user/profile", headers=auth("inline@example.com"))
    assert res.status_code == 200, res.json
