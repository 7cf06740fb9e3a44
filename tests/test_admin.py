"""The admin area: platform stats, user management, jobs, audit log (real PostgreSQL + Redis)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from sonicus import clock
from sonicus.models import AuditLog, PlatformStats, SubscriptionEvent, User, UserSubscription


def _stats(client, headers, **query):
    res = client.get("/api/admin/platform/stats", headers=headers, query_string=query)
    assert res.status_code == 200, res.json
    return res.json["data"]


# ---- platform stats ----------------------------------------------------------------------

@pytest.fixture
def platform(db_session, make_user, make_package, make_session):
    """A small platform with every subscription state and sessions at known times."""
    now = clock.now()
    users = {
        "free": make_user("free@example.com"),
        "p1": make_user("p1@example.com", tier="premium", payment_method_on_file=True),
        "p2": make_user("p2@example.com", tier="premium", trial_used=True),  # converted trial
        "p3": make_user("p3@example.com", tier="premium", status="past_due"),
        "pro": make_user("pro@example.com", tier="pro"),
        "comp": make_user("comp@example.com", tier="pro", complimentary=True),
        "trial": make_user("trial@example.com", tier="premium", status="trialing",
                           trial_used=True),
        "lapsed": make_user("lapsed@example.com", trial_used=True),  # trial ended, not paying
        "gone": make_user("gone@example.com", status="canceled", is_active=False),
        "pending": make_user("pending@example.com", status="incomplete"),
    }
    package = make_package()
    today_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    make_session(users["free"], package,
                 started_at=max(today_start, now - timedelta(minutes=5)), minutes=10)
    make_session(users["p1"], package, started_at=now - timedelta(days=3), minutes=20)
    make_session(users["p1"], package, started_at=now - timedelta(days=3, hours=1),
                 status="open", minutes=0)
    make_session(users["pro"], package, started_at=now - timedelta(days=20), minutes=30)
    make_session(None, package, started_at=now - timedelta(days=10), minutes=5)  # erased user
    make_session(users["trial"], package, started_at=now - timedelta(days=40), minutes=100)
    return users


def test_stats_figures_are_exact(client, admin_auth, platform):
    data = _stats(client, admin_auth())
    # the admin who asked is a user too (starter, created by the request)
    assert data["users_total"] == 11
    assert data["users_suspended"] == 1
    assert data["users_by_tier"] == {"starter": 5, "premium": 4, "pro": 2}
    assert data["active_subscriptions"] == 5  # p1, p2, p3 (grace), pro, comp
    assert data["paying_subscriptions"] == 4
    assert data["complimentary_subscriptions"] == 1
    assert data["trialing"] == 1
    # 3 x 9.99 + 19.99 in exact decimal arithmetic (binary floats give 49.959999...)
    assert data["mrr"] == "49.96"
    assert data["currency"] == "USD"
    assert data["sessions_today"] == 1
    assert data["sessions_30d"] == 5
    assert data["active_users_7d"] == 2  # free, p1
    assert data["active_users_30d"] == 3  # + pro; the erased user's session has no user
    assert data["trials_ended"] == 2  # p2 converted, lapsed did not; trial still running
    assert data["trials_converted"] == 1
    assert data["trial_conversion_rate"] == 0.5
    # ended sessions in 30 days: 600, 1200, 1800, 300 seconds -> 16.25 minutes
    assert data["avg_session_minutes"] == 16.25
    assert data["computed_at"]


def test_stats_count_the_tier_and_status_in_force_before_the_expiry_job_writes_them(
        client, admin_auth, db_session, make_user):
    """A trial that ended without a card, a grace that ran out and a paid period that lapsed
    count as the starter tier they are in force (as the admin list shows them), not as the
    paid tier their rows still hold until the expiry job writes the change."""
    now = clock.now()
    make_user("ended-trial@example.com", tier="premium", status="trialing", trial_used=True,
              trial_ends_at=now - timedelta(hours=1))
    make_user("grace-over@example.com", tier="premium", status="past_due",
              past_due_since=now - timedelta(days=30))
    make_user("still-trialing@example.com", tier="pro", status="trialing", trial_used=True,
              trial_ends_at=now + timedelta(days=3))
    data = _stats(client, admin_auth())
    assert data["users_by_tier"] == {"starter": 3, "premium": 0, "pro": 1}
    assert data["trialing"] == 1
    assert data["active_subscriptions"] == 0
    assert data["mrr"] == "0.00"


def test_stats_on_an_empty_platform(client, admin_auth):
    data = _stats(client, admin_auth())
    assert data["users_total"] == 1
    assert data["mrr"] == "0.00"
    assert data["trial_conversion_rate"] is None
    assert data["avg_session_minutes"] == 0
    assert data["sessions_30d"] == 0


def test_first_call_computes_and_stores_then_the_cache_serves(client, admin_auth, db_session,
                                                              make_user):
    headers = admin_auth()
    assert db_session.query(PlatformStats).count() == 0
    first = _stats(client, headers)
    assert db_session.query(PlatformStats).count() == 1
    make_user("late@example.com")
    second = _stats(client, headers)
    assert second == first  # served from the cache
    assert db_session.query(PlatformStats).count() == 1
    fresh = _stats(client, headers, refresh="true")
    assert fresh["users_total"] == first["users_total"] + 1
    assert fresh["computed_at"] > first["computed_at"]
    assert _stats(client, headers) == fresh


def test_stale_figures_are_served_while_a_worker_refreshes_them(app, client, admin_auth, db_session,
                                                                redis_client, make_user):
    from sonicus.services.stats import compute_platform_stats
    from sonicus.tasks.queue import QUEUE_MAINTENANCE
    from sonicus.tasks.worker import make_worker

    headers = admin_auth()
    client.get("/api/user/profile", headers=headers)  # the admin exists before the old figures
    old_moment = clock.now() - timedelta(hours=2)
    old = compute_platform_stats(old_moment)
    db_session.add(PlatformStats(data=old, computed_at=old_moment))
    db_session.commit()
    make_user("new@example.com")

    first = _stats(client, headers)
    assert first["computed_at"] == old_moment.isoformat()
    assert first["users_total"] == old["users_total"]
    # A second request does not queue a second refresh.
    _stats(client, headers)
    assert redis_client.llen(f"rq:queue:{QUEUE_MAINTENANCE}") == 1

    make_worker(app, simple=True).work(burst=True, with_scheduler=True)

    refreshed = _stats(client, headers)
    assert refreshed["users_total"] == old["users_total"] + 1
    assert refreshed["computed_at"] > first["computed_at"]
    db_session.expire_all()
    assert db_session.query(PlatformStats).count() == 2


def test_stats_without_redis_compute_inline(admin_auth, db_session, make_config, make_user):
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL=None))
    client = app.test_client()
    make_user("x@example.com", tier="pro")
    data = _stats(client, admin_auth())
    assert data["mrr"] == "19.99"
    assert _stats(client, admin_auth()) == data  # memory cache


# ---- users: list -------------------------------------------------------------------------

@pytest.fixture
def people(db_session, make_user):
    return {
        "ana": make_user("ana.lopez@example.com", name="Ana Lopez", tier="premium"),
        "bob": make_user("bob@sleepwell.io", name="Robert Ng"),
        "cy": make_user("cy@example.com", name="Cyrus 100%", tier="pro", status="trialing"),
        "dee": make_user("DEE@Example.com", name="Dee", is_active=False),
        "under": make_user("under_score@example.com", name="U"),
    }


def _list(client, headers, **query):
    res = client.get("/api/admin/users", headers=headers, query_string=query)
    assert res.status_code == 200, res.json
    return res.json


def _emails(body) -> list[str]:
    return [row["email"] for row in body["data"]]


def test_user_list_newest_first_with_tier_and_status(client, admin_auth, people):
    headers = admin_auth()
    body = _list(client, headers, per_page=3)
    assert body["pagination"] == {"page": 1, "per_page": 3, "total": 6, "pages": 2}
    assert _emails(body) == ["admin@example.com", "under_score@example.com", "DEE@Example.com"]
    dee = body["data"][2]
    assert dee["is_active"] is False
    assert dee["tier"] == "starter" and dee["subscription_status"] == "active"
    page2 = _list(client, headers, per_page=3, page=2)
    assert _emails(page2) == ["cy@example.com", "bob@sleepwell.io", "ana.lopez@example.com"]


@pytest.mark.parametrize("q, expected", [
    ("LOPEZ", ["ana.lopez@example.com"]),           # name or email, any case
    ("robert", ["bob@sleepwell.io"]),                # display name only
    ("sleepwell", ["bob@sleepwell.io"]),             # email only
    ("dee@ex", ["DEE@Example.com"]),
    ("100%", ["cy@example.com"]),                    # % is a character, not a wildcard
    ("r_s", ["under_score@example.com"]),            # so is _
    ("an", ["ana.lopez@example.com"]),               # short: the start of an email...
    ("ro", ["bob@sleepwell.io"]),                    # ...or of a name
    ("ez", []),                                      # not a substring when this short
    ("_", []),
    ("nobody", []),
    ("sleepwell.io robert", []),                     # never across email and name
])
def test_user_search(client, admin_auth, people, q, expected):
    assert _emails(_list(client, admin_auth(), q=q)) == expected


def test_user_filters(client, admin_auth, people):
    headers = admin_auth()
    assert _emails(_list(client, headers, tier="premium")) == ["ana.lopez@example.com"]
    assert _emails(_list(client, headers, status="trialing")) == ["cy@example.com"]
    assert _emails(_list(client, headers, status="suspended")) == ["DEE@Example.com"]
    assert _emails(_list(client, headers, tier="starter", q="example")) == [
        "admin@example.com", "under_score@example.com", "DEE@Example.com"]
    body = _list(client, headers, tier="pro", status="active")
    assert body["data"] == [] and body["pagination"]["total"] == 0


def test_user_without_subscription_row_counts_as_starter_active(client, admin_auth, db_session,
                                                                make_user):
    make_user("paid@example.com", tier="premium")
    make_user("bare@example.com", with_subscription=False)
    headers = admin_auth()
    client.get("/api/user/profile", headers=headers)
    assert _emails(_list(client, headers, q="bare")) == ["bare@example.com"]
    assert _list(client, headers, q="bare")["data"][0]["tier"] == "starter"
    assert "bare@example.com" in _emails(_list(client, headers, tier="starter"))
    assert "bare@example.com" in _emails(_list(client, headers, tier="starter", status="active"))
    assert _emails(_list(client, headers, tier="premium")) == ["paid@example.com"]
    assert _emails(_list(client, headers, tier="starter", status="trialing")) == []
    assert _list(client, headers, status="active")["pagination"]["total"] == 3


@pytest.mark.parametrize("query, field", [
    ({"tier": "gold"}, "tier"), ({"status": "sleeping"}, "status"), ({"per_page": 101}, "per_page"),
    ({"page": 0}, "page"), ({"q": "x" * 101}, "q"), ({"q": "io\nrobert"}, "q"),
])
def test_user_list_rejects_bad_query(client, admin_auth, query, field):
    res = client.get("/api/admin/users", headers=admin_auth(), query_string=query)
    assert res.status_code == 422
    assert res.json["code"] == "validation_error"
    assert any(e.startswith(f"{field}:") for e in res.json["errors"])


def test_admin_api_on_sqlite(tmp_path, admin_auth, make_config, make_user, make_package,
                             make_session):
    """The embedded default: migrations on SQLite (no trigram index), search, detail, stats."""
    from flask_migrate import upgrade

    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.services.admin_users import list_users

    app = create_app(make_config(REDIS_URL=None,
                                 DATABASE_URL=f"sqlite:///{tmp_path / 'sonicus.db'}"))
    with app.app_context():
        upgrade()
        make_user("ana.lopez@example.com", name="Ana Lopez", tier="premium")
        make_user("bob@sleepwell.io", name="Robert 50%")

        def search(**args):
            return list_users({"page": 1, "per_page": 20, **args})

        assert [r.email for r in search(q="LOPEZ").items] == ["ana.lopez@example.com"]
        assert [r.email for r in search(q="50%").items] == ["bob@sleepwell.io"]
        found = search(q="sleepwell.io robert")
        assert (found.items, found.total) == ([], 0)
        assert search(tier="premium").total == 1
        ana = {"id": search(q="ana").items[0].id}
        make_session(ana["id"], make_package(), started_at=clock.now())
        db.session.remove()
    client = app.test_client()
    headers = admin_auth()
    detail = client.get(f"/api/admin/users/{ana['id']}", headers=headers).json["data"]
    assert detail["usage"]["sessions_today"] == 1 and detail["last_activity_at"]
    assert _patch(client, headers, ana["id"], {"is_active": False}).status_code == 200
    data = _stats(client, headers)
    assert (data["users_total"], data["mrr"], data["sessions_today"]) == (3, "9.99", 1)
    assert data["active_users_7d"] == 1 and data["avg_session_minutes"] == 10
    assert _audit(client, headers)["data"][0]["action"] == "user.suspend"


# ---- users: detail -----------------------------------------------------------------------

def test_user_detail_with_subscription_usage_and_last_activity(
        client, admin_auth, db_session, make_user, make_package, make_session):
    user = make_user("ana@example.com", name="Ana", tier="premium")
    package = make_package()
    now = clock.now()
    latest = now - timedelta(minutes=2)
    make_session(user, package, started_at=now - timedelta(days=2))
    make_session(user, package, started_at=latest, status="open", minutes=0)
    make_session(user, package, started_at=latest - timedelta(minutes=1),
                 counts_toward_quota=False)
    res = client.get(f"/api/admin/users/{user.id}", headers=admin_auth())
    assert res.status_code == 200, res.json
    data = res.json["data"]
    assert data["email"] == "ana@example.com" and data["display_name"] == "Ana"
    assert data["subscription"]["tier"] == "premium"
    assert data["subscription"]["status"] == "active"
    assert data["subscription"]["limits"]["daily_sessions"] == 10
    today = clock.local_day(now, "UTC", 0)
    expected_today = 1 if clock.local_day(latest, "UTC", 0) == today else 0
    assert data["usage"]["sessions_today"] == expected_today
    assert data["usage"]["sessions_remaining"] == 10 - expected_today
    assert data["sessions_total"] == 3
    assert data["last_activity_at"].startswith(latest.strftime("%Y-%m-%dT%H:%M:%S"))


def test_user_without_sessions_has_no_last_activity(client, admin_auth, db_session, make_user):
    user = make_user("quiet@example.com")
    data = client.get(f"/api/admin/users/{user.id}", headers=admin_auth()).json["data"]
    assert data["last_activity_at"] is None
    assert data["sessions_total"] == 0
    assert data["usage"]["sessions_remaining"] == 3


def test_unknown_user_is_404(client, admin_auth, db_session):
    headers = admin_auth()
    for method, kwargs in (("GET", {}), ("PATCH", {"json": {"tier": "pro"}})):
        res = client.open("/api/admin/users/999999", method=method, headers=headers, **kwargs)
        assert res.status_code == 404
        assert res.json["code"] == "not_found"
    assert db_session.query(AuditLog).count() == 0


# ---- users: changes ----------------------------------------------------------------------

def _patch(client, headers, user_id, body):
    return client.patch(f"/api/admin/users/{user_id}", headers=headers, json=body)


def _audit(client, headers, **query):
    res = client.get("/api/admin/audit", headers=headers, query_string=query)
    assert res.status_code == 200, res.json
    return res.json


def test_tier_grant_is_a_complimentary_event_and_audited(client, auth, admin_auth, db_session):
    listener = auth("ana@example.com")
    assert client.get("/api/user/profile", headers=listener).json["data"]["tier"] == "starter"
    user_id = db_session.query(User).filter_by(email="ana@example.com").one().id
    headers = admin_auth("boss@example.com")

    res = _patch(client, headers, user_id, {"tier": "pro", "reason": "support goodwill"})
    assert res.status_code == 200, res.json
    assert res.json["message"] == "User updated."
    assert res.json["data"]["subscription"]["tier"] == "pro"
    assert res.json["data"]["subscription"]["complimentary"] is True
    assert res.json["data"]["subscription"]["limits"]["daily_sessions"] is None
    # The listener sees it on their next request.
    assert client.get("/api/user/profile", headers=listener).json["data"]["tier"] == "pro"

    event = db_session.query(SubscriptionEvent).filter_by(type="complimentary_grant").one()
    assert (event.user_id, event.from_tier, event.to_tier, event.amount_cents) == (
        user_id, "starter", "pro", 0)
    assert event.details == {"by": "boss@example.com", "reason": "support goodwill"}

    entry = _audit(client, headers)["data"][0]
    assert entry["action"] == "user.tier_grant"
    assert entry["actor_label"] == "boss@example.com"
    assert entry["target_type"] == "user" and entry["target_id"] == str(user_id)
    assert entry["before"] == {"tier": "starter", "status": "active", "complimentary": False}
    assert entry["after"] == {"tier": "pro", "status": "active", "complimentary": True,
                              "reason": "support goodwill"}

    # Same tier again: nothing changes, nothing is recorded.
    again = _patch(client, headers, user_id, {"tier": "pro"})
    assert again.status_code == 200 and again.json["message"] == "No change."
    assert db_session.query(SubscriptionEvent).filter_by(type="complimentary_grant").count() == 1
    assert db_session.query(AuditLog).count() == 1


def test_tier_grant_ends_a_trial(client, admin_auth, db_session, make_user):
    user = make_user("t@example.com", tier="premium", status="trialing", trial_used=True,
                     trial_ends_at=clock.now() + timedelta(days=3))
    res = _patch(client, admin_auth(), user.id, {"tier": "pro"})
    sub = res.json["data"]["subscription"]
    assert (sub["tier"], sub["status"], sub["trial_ends_at"]) == ("pro", "active", None)


def test_suspend_and_reactivate(client, auth, admin_auth, db_session):
    listener = auth("ana@example.com")
    client.get("/api/user/profile", headers=listener)
    user_id = db_session.query(User).filter_by(email="ana@example.com").one().id
    headers = admin_auth()

    res = _patch(client, headers, user_id, {"is_active": False, "reason": "chargeback"})
    assert res.status_code == 200
    assert res.json["data"]["is_active"] is False
    blocked = client.get("/api/user/profile", headers=listener)
    assert blocked.status_code == 403
    assert blocked.json["code"] == "account_suspended"

    res = _patch(client, headers, user_id, {"is_active": True})
    assert res.json["data"]["is_active"] is True
    assert client.get("/api/user/profile", headers=listener).status_code == 200

    entries = _audit(client, headers, target_id=str(user_id))["data"]
    assert [e["action"] for e in entries] == ["user.activate", "user.suspend"]
    assert entries[1]["before"] == {"is_active": True}
    assert entries[1]["after"] == {"is_active": False, "reason": "chargeback"}


def test_suspension_closes_the_users_sockets_on_every_process(app, client, admin_auth,
                                                              redis_client, make_user):
    import json

    from sonicus.realtime.publish import user_events_channel

    user = make_user("ana@example.com")
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(user_events_channel(app.config))
    pubsub.get_message(timeout=1)

    def published():
        seen, deadline = [], time.time() + 2
        while time.time() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                seen.append(json.loads(message["data"]))
        return seen

    headers = admin_auth()
    _patch(client, headers, user.id, {"tier": "premium"})
    assert published() == []  # a tier grant closes nothing
    _patch(client, headers, user.id, {"is_active": False})
    assert published() == [{"user_id": user.id, "close": 4403, "reason": "account suspended"}]
    _patch(client, headers, user.id, {"is_active": False})  # already suspended
    assert published() == []
    pubsub.close()


def test_admin_cannot_suspend_themselves(client, admin_auth, db_session):
    headers = admin_auth("boss@example.com")
    client.get("/api/user/profile", headers=headers)
    me = db_session.query(User).filter_by(email="boss@example.com").one()
    res = _patch(client, headers, me.id, {"is_active": False, "tier": "pro"})
    assert res.status_code == 409
    assert res.json["code"] == "conflict"
    db_session.expire_all()
    assert db_session.get(User, me.id).is_active is True
    assert db_session.query(UserSubscription).filter_by(user_id=me.id).one().tier == "starter"
    assert db_session.query(AuditLog).count() == 0
    # Their own tier is fine, and audited.
    assert _patch(client, headers, me.id, {"tier": "pro"}).status_code == 200


def _admins(app, *emails):
    """Admins signed in once (their rows exist, role admin), as ``(email, headers, id)``."""
    from sonicus.extensions import db

    found = []
    for email, headers in emails:
        assert app.test_client().get("/api/user/profile", headers=headers).status_code == 200
        with app.app_context():
            user_id = db.session.execute(
                db.select(User.id).where(User.email == email)).scalar_one()
            db.session.remove()
        found.append((email, headers, user_id))
    return found


def _active_admins(db_session) -> list[str]:
    db_session.expire_all()
    return sorted(u.email for u in db_session.query(User).filter_by(role="admin",
                                                                   is_active=True))


def test_two_admins_suspending_each_other_at_once_leave_both_active(app, admin_auth,
                                                                    db_session):
    """Two administrators (the only two) suspend each other at the same moment, from two
    threads against PostgreSQL: neither may, the platform keeps its administrators and
    nothing is recorded. An administrator's account is the operator's (CLI)."""
    (a_email, a, a_id), (b_email, b, b_id) = _admins(
        app, ("a1@example.com", admin_auth("a1@example.com")),
        ("a2@example.com", admin_auth("a2@example.com")))
    barrier = threading.Barrier(2)
    results, errors = [], []

    def suspend(headers, target):
        try:
            client = app.test_client()
            barrier.wait(5)
            res = client.patch(f"/api/admin/users/{target}", headers=headers,
                               json={"is_active": False})
            results.append((res.status_code, res.json.get("code")))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=suspend, args=(a, b_id)),
               threading.Thread(target=suspend, args=(b, a_id))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert results == [(409, "conflict"), (409, "conflict")]
    assert _active_admins(db_session) == [a_email, b_email]
    assert db_session.query(AuditLog).count() == 0
    for headers in (a, b):
        assert app.test_client().get("/api/admin/users", headers=headers).status_code == 200


def test_an_admin_cannot_suspend_or_reactivate_another_admin_through_the_api(
        app, client, admin_auth, auth, db_session, runner):
    """Even with a third administrator left active, the API refuses to change another
    administrator's status (409 naming the CLI); a listener's is still the admin's to change,
    another admin's tier too. The operator suspends and reactivates administrators with
    ``sonicus users suspend|activate``, the way back when none is left."""
    (_, boss, _), (_, _, other_id), (_, _, third_id) = _admins(
        app, ("boss@example.com", admin_auth("boss@example.com")),
        ("other@example.com", admin_auth("other@example.com")),
        ("third@example.com", admin_auth("third@example.com")))
    refused = _patch(client, boss, other_id, {"is_active": False, "tier": "pro"})
    assert refused.status_code == 409 and refused.json["code"] == "conflict"
    assert "sonicus users suspend" in refused.json["message"]
    assert _active_admins(db_session) == ["boss@example.com", "other@example.com",
                                          "third@example.com"]
    assert db_session.query(UserSubscription).filter_by(user_id=other_id).one().tier == "starter"
    assert _patch(client, boss, other_id, {"tier": "pro"}).status_code == 200
    listener = auth("ana@example.com")
    client.get("/api/user/profile", headers=listener)
    ana = db_session.query(User).filter_by(email="ana@example.com").one().id
    assert _patch(client, boss, ana, {"is_active": False}).status_code == 200

    # The operator suspends an administrator; the API cannot bring them back either.
    out = runner.invoke(args=["sonicus", "users", "suspend", "third@example.com"])
    assert out.exit_code == 0, out.output
    again = _patch(client, boss, third_id, {"is_active": True})
    assert again.status_code == 409 and again.json["code"] == "conflict"
    assert _active_admins(db_session) == ["boss@example.com", "other@example.com"]
    # Every administrator suspended by the operator: `users activate` is the way back.
    for email in ("boss@example.com", "other@example.com"):
        assert runner.invoke(args=["sonicus", "users", "suspend", email]).exit_code == 0
    assert _active_admins(db_session) == []
    assert client.get("/api/admin/users", headers=boss).json["code"] == "account_suspended"
    out = runner.invoke(args=["sonicus", "users", "activate", "boss@example.com"])
    assert out.exit_code == 0 and out.output.strip() == "boss@example.com is now active."
    assert client.get("/api/admin/users", headers=boss).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"role": "user"}, "role"),  # roles come from the identity provider's groups
    ({"tier": "gold"}, "tier"),
    ({"is_active": "maybe"}, "is_active"),
    ({"tier": "pro", "email": "x@example.com"}, "email"),
    ({"reason": "only a reason"}, "_schema"),
    ({}, "_schema"),
])
def test_bad_changes_are_422_and_change_nothing(client, admin_auth, db_session, body, field,
                                                make_user):
    user = make_user("ana@example.com")
    res = _patch(client, admin_auth(), user.id, body)
    assert res.status_code == 422
    assert res.json["code"] == "validation_error"
    if field != "_schema":
        assert any(e.startswith(f"{field}:") for e in res.json["errors"]), res.json["errors"]
    else:
        assert res.json["errors"] == ["body: Give tier or is_active."]
    db_session.expire_all()
    assert db_session.query(UserSubscription).filter_by(user_id=user.id).one().tier == "starter"
    assert db_session.query(AuditLog).count() == 0


def test_concurrent_grants_record_one_event(app, admin_auth, db_session, make_user):
    """Two admins grant the same tier at once: the row lock lets one win, the other no-ops."""
    user = make_user("ana@example.com")
    headers = [admin_auth("a1@example.com"), admin_auth("a2@example.com")]
    for h in headers:  # create both admins first
        app.test_client().get("/api/user/profile", headers=h)
    user_id = user.id
    barrier = threading.Barrier(len(headers) * 3)
    results = []

    def grant(h):
        client = app.test_client()
        barrier.wait()
        res = client.patch(f"/api/admin/users/{user_id}", headers=h, json={"tier": "pro"})
        results.append((res.status_code, res.json["message"]))

    threads = [threading.Thread(target=grant, args=(h,)) for h in headers * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == sorted([(200, "User updated.")] + [(200, "No change.")] * 5)
    assert db_session.query(SubscriptionEvent).filter_by(type="complimentary_grant").count() == 1
    assert db_session.query(AuditLog).filter_by(action="user.tier_grant").count() == 1


# ---- audit log ---------------------------------------------------------------------------

def test_audit_log_is_paginated_newest_first_and_filterable(client, admin_auth, db_session,
                                                            make_user):
    headers = admin_auth()
    users = [make_user(f"u{i}@example.com") for i in range(3)]
    for user in users:
        _patch(client, headers, user.id, {"tier": "premium"})
        _patch(client, headers, user.id, {"is_active": False})
    body = _audit(client, headers, per_page=4)
    assert body["pagination"] == {"page": 1, "per_page": 4, "total": 6, "pages": 2}
    assert [(e["action"], e["target_id"]) for e in body["data"][:2]] == [
        ("user.suspend", str(users[2].id)), ("user.tier_grant", str(users[2].id))]
    assert body["data"][0]["at"]
    suspensions = _audit(client, headers, action="user.suspend")
    assert suspensions["pagination"]["total"] == 3
    assert {e["target_id"] for e in suspensions["data"]} == {str(u.id) for u in users}


# ---- jobs --------------------------------------------------------------------------------

def broken_job(package_id):
    raise RuntimeError(f"package {package_id} has no tracks")


def test_jobs_show_depth_failures_and_workers(app, client, admin_auth, redis_client):
    from rq import Queue

    from sonicus.tasks.queue import QUEUE_ANALYTICS, QUEUE_DEFAULT, QUEUE_MAINTENANCE, QUEUES
    from sonicus.tasks.worker import make_worker

    failing = Queue(QUEUE_DEFAULT, connection=redis_client)
    failing.enqueue(broken_job, 7)
    make_worker(app, simple=True, queues=[QUEUE_DEFAULT]).work(burst=True)
    Queue(QUEUE_MAINTENANCE, connection=redis_client).enqueue(broken_job, 5)
    make_worker(app, simple=True, queues=[QUEUE_MAINTENANCE]).work(burst=True)
    waiting = Queue(QUEUE_ANALYTICS, connection=redis_client)
    waiting.enqueue(broken_job, 8)
    waiting.enqueue(broken_job, 9)
    worker = make_worker(app, simple=True, name="web-test-worker")
    worker.register_birth()
    try:
        res = client.get("/api/admin/jobs", headers=admin_auth())
    finally:
        worker.register_death()
    assert res.status_code == 200, res.json
    data = res.json["data"]
    assert data["backend"] == "redis"
    depth = {q["name"]: q for q in data["queues"]}
    assert set(depth) == set(QUEUES)
    assert depth[QUEUE_ANALYTICS]["queued"] == 2
    assert depth[QUEUE_DEFAULT]["failed"] == 1 and depth[QUEUE_DEFAULT]["queued"] == 0
    newest, failed = data["failed_jobs"]  # newest first
    assert newest["queue"] == QUEUE_MAINTENANCE and newest["args"] == [5]
    assert failed["queue"] == QUEUE_DEFAULT
    assert failed["func_name"].endswith("broken_job")
    assert failed["args"] == [7]
    assert failed["error"] == "RuntimeError: package 7 has no tracks"
    assert "Traceback" in failed["traceback"]
    [seen] = data["workers"]
    assert seen["name"] == "web-test-worker"
    assert set(seen["queues"]) == set(QUEUES)


def test_jobs_without_redis(admin_auth, make_config):
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL=None))
    res = app.test_client().get("/api/admin/jobs", headers=admin_auth())
    assert res.status_code == 200
    assert res.json["data"]["backend"] == "inline"
    assert res.json["data"]["failed_jobs"] == [] and res.json["data"]["workers"] == []
    assert all(q["queued"] == 0 for q in res.json["data"]["queues"])
    assert "in-process" in res.json["message"]


def test_jobs_with_redis_down_is_503(admin_auth, db_session, make_config):
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL="redis://127.0.0.1:1/0"))
    res = app.test_client().get("/api/admin/jobs", headers=admin_auth())
    assert res.status_code == 503
    assert res.json["code"] == "service_unavailable"


def test_openapi_documents_the_admin_routes(client):
    paths = client.get("/api/openapi.json").json["paths"]
    for path in ("/api/admin/platform/stats", "/api/admin/users", "/api/admin/users/{user_id}",
                 "/api/admin/jobs", "/api/admin/audit"):
        assert path in paths
    assert "patch" in paths["/api/admin/users/{user_id}"]


def test_sessions_abandoned_without_listening_do_not_shorten_the_average_session(
        client, admin_auth, db_session, make_user, make_package, make_session):
    from sonicus.models.listening import ABANDONED

    listener = make_user("avg@example.com")
    package = make_package()
    now = clock.now()
    make_session(listener, package, started_at=now - timedelta(days=1), minutes=10)
    make_session(listener, package, started_at=now - timedelta(days=2), minutes=20)
    # Started and left without a heartbeat; the server closed it: not a 0-minute listen.
    left = make_session(listener, package, started_at=now - timedelta(days=3), minutes=0,
                        completed=False)
    left.end_reason = ABANDONED
    db_session.commit()

    data = _stats(client, admin_auth(), refresh="true")
    assert data["sessions_30d"] == 3  # it was started all the same
    assert data["avg_session_minutes"] == 15.0


# ---- users: the tier in force ------------------------------------------------------------

def _lagging_people(make_user):
    """Rows whose deadline has passed and that the expiry job has not written yet."""
    past = clock.now() - timedelta(hours=1)
    return {
        "trial": make_user("trial.over@example.com", tier="premium", status="trialing",
                           trial_used=True, trial_ends_at=past),
        "grace": make_user("grace.over@example.com", tier="pro", status="past_due",
                           provider="sandbox", current_period_start=past - timedelta(days=33),
                           current_period_end=past - timedelta(days=3),
                           past_due_since=past - timedelta(days=3)),
        "downgrade": make_user("down.due@example.com", tier="pro", status="active",
                               provider="sandbox", payment_method_on_file=True,
                               pending_tier="premium",
                               current_period_start=past - timedelta(days=30),
                               current_period_end=past),
    }


def test_admin_user_list_shows_the_tier_in_force_before_the_expiry_job(
        app, client, admin_auth, db_session, make_user, sql_statements):
    """An operator looking at the user list saw a user whose trial (or grace period) had
    ended, or whose downgrade had fallen due, still on the paid tier until the expiry job ran;
    the list shows the tier in force, and costs no query per user."""
    people = _lagging_people(make_user)
    headers = admin_auth()
    rows = {row["email"]: row for row in _list(client, headers)["data"]}
    assert (rows["trial.over@example.com"]["tier"],
            rows["trial.over@example.com"]["subscription_status"]) == ("starter", "active")
    assert (rows["grace.over@example.com"]["tier"],
            rows["grace.over@example.com"]["subscription_status"]) == ("starter", "active")
    assert rows["down.due@example.com"]["tier"] == "premium"
    # the list itself writes nothing: the rows are still as they were
    db_session.expire_all()
    assert db_session.query(UserSubscription).filter_by(
        user_id=people["trial"].id).one().tier == "premium"
    few = len(sql_statements(app, lambda: _list(client, headers, per_page=1)))
    many = len(sql_statements(app, lambda: _list(client, headers, per_page=50)))
    assert many == few


def test_admin_user_detail_shows_the_tier_in_force_before_the_expiry_job(
        client, admin_auth, db_session, make_user):
    """An operator opening a user whose trial had ended saw the paid tier, its limits and
    its session allowance until the expiry job ran; the detail shows the tier in force, as
    the user's own subscription view does."""
    people = _lagging_people(make_user)
    headers = admin_auth()
    data = client.get(f"/api/admin/users/{people['trial'].id}", headers=headers).json["data"]
    assert (data["tier"], data["subscription_status"]) == ("starter", "active")
    assert (data["subscription"]["tier"], data["subscription"]["status"]) == ("starter", "active")
    assert data["usage"]["sessions_remaining"] == 3
    data = client.get(f"/api/admin/users/{people['grace'].id}", headers=headers).json["data"]
    assert (data["tier"], data["subscription"]["tier"]) == ("starter", "starter")
    # a PATCH's answer too (a suspension changes no subscription, the detail is in force)
    res = _patch(client, headers, people["downgrade"].id, {"is_active": False})
    assert res.status_code == 200, res.json
    assert res.json["data"]["tier"] == "premium"
    assert res.json["data"]["subscription"]["tier"] == "premium"


def test_admin_user_list_filters_by_the_tier_and_status_each_row_shows(
        client, admin_auth, make_user):
    """``?tier=`` and ``?status=`` matched the stored row while the list showed the tier in
    force: a trial over (shown starter) was listed under premium and not under starter, a
    lapsed period, a grace over, a downgrade or a canceled grant fallen due alike. Every
    filter lists exactly the rows showing that tier and status, and its total says so."""
    from sonicus.models.subscription import STATUSES
    from sonicus.tiers import TIERS

    _lagging_people(make_user)
    past = clock.now() - timedelta(hours=1)
    make_user("lapsed@example.com", tier="pro", status="active", provider="stripe",
              current_period_start=past - timedelta(days=34),
              current_period_end=past - timedelta(days=4))
    make_user("cancel.due@example.com", tier="premium", status="active", provider="sandbox",
              payment_method_on_file=True, cancel_at_period_end=True,
              current_period_start=past - timedelta(days=30), current_period_end=past)
    make_user("cancel.later@example.com", tier="premium", status="active", provider="sandbox",
              payment_method_on_file=True, cancel_at_period_end=True,
              current_period_start=past, current_period_end=past + timedelta(days=29))
    make_user("grant.over@example.com", tier="pro", status="active", complimentary=True,
              cancel_at_period_end=True, current_period_start=past - timedelta(days=30),
              current_period_end=past)
    make_user("granted@example.com", tier="premium", status="active", complimentary=True)
    make_user("trial.on@example.com", tier="premium", status="trialing", trial_used=True,
              trial_ends_at=past + timedelta(days=3))
    make_user("bare@example.com", with_subscription=False)
    headers = admin_auth()
    shown = {row["email"]: (row["tier"], row["subscription_status"])
             for row in _list(client, headers, per_page=100)["data"]}
    for tier in TIERS:
        for status in (*STATUSES, None):
            query = {"tier": tier, **({"status": status} if status else {})}
            body = _list(client, headers, per_page=100, **query)
            expected = sorted(email for email, (t, s) in shown.items()
                              if t == tier and status in (None, s))
            assert sorted(_emails(body)) == expected, query
            assert body["pagination"]["total"] == len(expected), query
    for status in STATUSES:
        expected = sorted(email for email, (_, s) in shown.items() if s == status)
        assert sorted(_emails(_list(client, headers, per_page=100, status=status))) \
            == expected, status
