"""Redis stops mid-test and comes back (our own throwaway redis-server, not the shared one).

While it is down the API keeps serving, a finished session still saves and its refresh is
recorded in the database; /api/ready says 200 with degraded: redis. Once it is back, the
periodic sweep finds the stale rows, a worker refreshes them, and the open socket gets the
update (its process's subscriber also re-sends current figures after reconnecting): nothing is lost.
"""

from __future__ import annotations

import time
from datetime import timedelta

import redis
from rq import Queue

from sonicus import clock
from sonicus.tasks.queue import QUEUE_ANALYTICS


def test_api_survives_redis_outage_and_catches_up(own_redis, token_for, make_config, make_package,
                                                  make_session, connect_ws, serve_in_process):
    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.realtime.broker import get_broker
    from sonicus.services.analytics import mark_stale, request_refresh
    from sonicus.tasks.schedule import start_scheduler_thread
    from sonicus.tasks.worker import make_worker

    app = create_app(make_config(REDIS_URL=own_redis.url, ANALYTICS_STALE_GRACE_SECONDS=0,
                                 REDIS_RETRY_SECONDS=0.2))
    client = app.test_client()
    token = token_for("outage@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    me = client.get("/api/user/profile", headers=headers).json["data"]["id"]
    # A second listener with no socket open: only the sweep can bring their figures back.
    away_headers = {"Authorization": f"Bearer {token_for('away@example.com')}"}
    away = client.get("/api/user/profile", headers=away_headers).json["data"]["id"]
    today = clock.local_day(clock.now(), "UTC", 0)
    with app.app_context():
        pkg = make_package("storm").id
        make_session(me, pkg, today, minutes=5)

    server = serve_in_process(app)
    scheduler = None
    try:
        ws = connect_ws(server.url(), token)
        assert ws.receive_json()["data"]["total_minutes"] == 5.0

        own_redis.stop()
        # The API keeps serving.
        assert client.get("/api/user/profile", headers=headers).status_code == 200
        res = client.get("/api/user/analytics", headers=headers)
        assert res.status_code == 200 and res.json["data"]["total_minutes"] == 5.0
        assert client.get("/api/user/dashboard", headers=headers).status_code == 200
        ready = client.get("/api/ready")
        assert ready.status_code == 200 and ready.json["data"]["degraded"] == ["redis"]

        # A session completes: it saves, and the refresh it needs is recorded in the database.
        with app.app_context():
            for user_id in (me, away):
                make_session(user_id, pkg, today, minutes=7)
                mark_stale(user_id)
                db.session.commit()
                request_refresh(user_id)  # Redis is down: logged, not raised
                assert db.session.get(UserAnalytics, user_id).stale_since is not None
        assert client.post("/api/user/analytics/refresh", headers=headers).status_code == 202

        # The worker's scheduler keeps ticking through the outage.
        scheduler, stop = start_scheduler_thread(app, poll=0.2)
        time.sleep(0.5)
        assert scheduler.is_alive()

        own_redis.start()  # same port, empty: the queued work of before is gone
        assert get_broker(app).wait_ready(20), "the socket's subscriber did not reconnect"
        assert client.get("/api/ready").status_code == 200

        worker = make_worker(app, simple=True)
        deadline = time.time() + 20
        ws.settimeout(0.5)
        message = None
        while time.time() < deadline and message is None:
            worker.work(burst=True, with_scheduler=True)
            try:
                message = ws.receive_json()
            except Exception:
                message = None
        assert message is not None, "the refresh never reached the socket"
        assert message["type"] == "analytics.updated"
        assert message["data"]["total_minutes"] == 12.0
        with app.app_context():
            assert db.session.get(UserAnalytics, me).stale_since is None
        # The sweep found the other listener's stale row; a worker refreshed it.
        deadline = time.time() + 20
        while time.time() < deadline:
            worker.work(burst=True, with_scheduler=True)
            with app.app_context():
                row = db.session.get(UserAnalytics, away)
                if row.stale_since is None:
                    break
                db.session.remove()
            time.sleep(0.2)
        with app.app_context():
            row = db.session.get(UserAnalytics, away)
            assert row.stale_since is None and row.data["total_minutes"] == 7.0
        finished = Queue(QUEUE_ANALYTICS, connection=redis.Redis.from_url(own_redis.url)) \
            .finished_job_registry.get_job_ids()
        assert f"analytics-refresh-{away}" in finished
        ws.close()
        stop.set()
    finally:
        server.stop()
        get_broker(app).stop()


def test_a_hung_redis_costs_one_timeout_not_one_per_call(own_redis, make_config, auth,
                                                        make_user, make_package):
    """Redis stops answering (SIGSTOP: connections open, nothing read): completions still
    save, and N of them cost about one Redis timeout in all, since the cache, the enqueue,
    the rate limits and publishing share one back-off."""
    import os
    import signal

    from sonicus import create_app
    from sonicus.extensions import db, redis_gate
    from sonicus.models import ListeningSession, UserAnalytics

    timeout = 1.0
    app = create_app(make_config(REDIS_URL=own_redis.url, RATELIMIT_ENABLED=True,
                                 REDIS_SOCKET_TIMEOUT_SECONDS=timeout))
    client = app.test_client()
    user = make_user("patient@example.com")
    package = make_package("drizzle")
    headers = auth("patient@example.com")
    started = [client.post("/api/user/sessions", json={"package_id": package.id},
                           headers=headers).json["data"]["id"] for _ in range(2)]
    count = 6
    with app.app_context():  # earlier sessions of the day, opened elsewhere
        for _ in range(count - len(started)):
            db.session.add(ListeningSession(
                user_id=user.id, package_id=package.id, tier="starter", status="open",
                started_at=clock.now(), local_day=clock.now().date(), listened_seconds=0))
        db.session.commit()
        session_ids = started + [s.id for s in db.session.query(ListeningSession).filter(
            ListeningSession.id.not_in(started)).all()]
        db.session.remove()

    os.kill(own_redis.proc.pid, signal.SIGSTOP)
    try:
        began = time.monotonic()
        for session_id in session_ids:
            res = client.post(f"/api/user/sessions/{session_id}/complete", headers=headers,
                              json={"listened_seconds": 1, "completed": False})
            assert res.status_code == 200, res.json
        elapsed = time.monotonic() - began
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)

    assert elapsed < 2 * timeout, f"{count} completions took {elapsed:.1f} s"
    assert redis_gate(app).trips == 1
    with app.app_context():  # every completion saved, and its refresh is owed (the sweep's)
        assert db.session.query(ListeningSession).filter_by(status="ended").count() == count
        assert db.session.get(UserAnalytics, user.id).stale_since is not None


def test_sockets_of_accounts_suspended_or_erased_while_redis_was_down_close_when_it_is_back(
        own_redis, token_for, admin_auth, make_config, make_user, connect_ws, serve_in_process):
    """The close another process publishes never arrives while Redis is down: once this
    process's subscriber is back, it closes the sockets of accounts suspended (4403) or
    erased (4401) meanwhile, and sends no figures to them."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2)
    sockets_app, other = create_app(config), create_app(config).test_client()
    suspended = make_user("suspended-meanwhile@example.com").id
    make_user("erased-meanwhile@example.com")
    make_user("staying@example.com")
    server = serve_in_process(sockets_app)
    try:
        sockets = {email: connect_ws(server.url(), token_for(email)) for email in (
            "suspended-meanwhile@example.com", "erased-meanwhile@example.com",
            "staying@example.com")}
        for ws in sockets.values():
            assert ws.receive_json()["type"] == "analytics.snapshot"

        own_redis.stop()
        res = other.patch(f"/api/admin/users/{suspended}", json={"is_active": False},
                          headers=admin_auth("moderator@example.com"))
        assert res.status_code == 200
        res = other.delete("/api/user/profile", headers={
            "Authorization": f"Bearer {token_for('erased-meanwhile@example.com')}"})
        assert res.status_code == 200

        own_redis.start()
        assert get_broker(sockets_app).wait_ready(20), "the subscriber did not reconnect"
        for email, code in (("suspended-meanwhile@example.com", 4403),
                            ("erased-meanwhile@example.com", 4401)):
            sockets[email].settimeout(10)
            assert sockets[email].close_code() == code, email
        staying = sockets["staying@example.com"]
        staying.settimeout(10)
        assert staying.receive_json()["type"] == "analytics.updated"  # figures re-sent
    finally:
        server.stop()
        get_broker(sockets_app).stop()


# ---- a process backing off from a Redis the others have back ---------------------------------
# After its own failed call a process skips Redis for REDIS_RETRY_SECONDS, though Redis may be
# back (and the other processes subscribed again) at once: what it should have told them then
# (a cache delete, a caller invalidation, a socket close) must still reach them, late.

def _trip_backoff_while_redis_is_down(own_redis, app, *subscribers) -> None:
    """Stop Redis, have ``app`` fail one real call (its back-off closes), start Redis again
    and wait until the ``subscribers`` (apps) are subscribed again."""
    from sonicus.cache import cache_get
    from sonicus.extensions import redis_gate
    from sonicus.realtime.broker import get_broker

    before = [get_broker(other).reconnects for other in subscribers]
    own_redis.stop()
    with app.app_context():
        assert cache_get("anything") is None
    assert not redis_gate(app).healthy, "the failed call did not close the back-off"
    deadline = time.monotonic() + 10  # the subscribers noticed the gap
    while any(get_broker(other).reconnects == count
              for other, count in zip(subscribers, before, strict=True)):
        assert time.monotonic() < deadline, "a subscriber did not notice Redis was gone"
        time.sleep(0.02)
    own_redis.start()
    for other in subscribers:
        assert get_broker(other).wait_ready(20), "a subscriber did not reconnect"


def _stop_apps(*apps) -> None:
    """Stop the apps' subscribers and close their database connections (the server's
    connections are shared with every other test run on the machine)."""
    from sonicus.extensions import db
    from sonicus.realtime.broker import get_broker

    for app in apps:
        broker = get_broker(app)
        broker.stop()
        if broker._listener is not None:  # no account check after the pool is closed
            broker._listener.join(5)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def _goal_minutes(client, headers):
    res = client.get("/api/user/analytics", headers=headers)
    assert res.status_code == 200, res.json
    goal = res.json["data"]["goal"]
    return None if goal is None else goal["goal_minutes"]


def test_a_goal_changed_through_a_process_backing_off_from_redis_shows_on_every_process_soon(
        own_redis, token_for, make_config, make_user):
    """A daily goal changed through a process that skips Redis (its own call failed a moment
    ago) while the other processes have it back: their cached analytics, with the old goal,
    are deleted once that process reaches Redis again (the delete was owed), not served for
    the cache's 10 minutes."""
    from sonicus import create_app

    retry = 5.0  # the default REDIS_RETRY_SECONDS
    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=retry)
    backing_off_app, other_app = create_app(config), create_app(config)
    backing_off, other = backing_off_app.test_client(), other_app.test_client()
    make_user("goal-setter@example.com")
    headers = {"Authorization": f"Bearer {token_for('goal-setter@example.com')}"}
    try:
        res = other.put("/api/user/profile", json={"preferences": {"daily_goal_minutes": 10}},
                        headers=headers)
        assert res.status_code == 200, res.json
        assert backing_off.get("/api/user/profile", headers=headers).status_code == 200

        _trip_backoff_while_redis_is_down(own_redis, backing_off_app, other_app)
        assert _goal_minutes(other, headers) == 10  # cached by the other process
        changed = time.monotonic()
        res = backing_off.put("/api/user/profile",
                              json={"preferences": {"daily_goal_minutes": 25}}, headers=headers)
        assert res.status_code == 200, res.json

        while _goal_minutes(other, headers) != 25:
            assert time.monotonic() - changed < retry + 10, \
                "the other process still serves the old goal from its cache"
            time.sleep(0.2)
    finally:
        _stop_apps(backing_off_app, other_app)


def test_a_session_saved_through_a_process_backing_off_from_redis_shows_in_the_recap_soon(
        own_redis, token_for, make_config, make_user, make_package, make_session):
    """A session saved through a process that skips Redis while the others have it back: the
    week's recap another process cached before it is forgotten once that process reaches
    Redis again (forgetting the recent recaps was owed), not served for its 5 minutes."""
    from sonicus import create_app
    from sonicus.services.analytics import request_refresh

    retry = 5.0
    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=retry)
    backing_off_app, other_app = create_app(config), create_app(config)
    other = other_app.test_client()
    listener = make_user("recap-listener@example.com").id
    rain = make_package("rain").id
    # listening the week before: this week's recap (zeros) is one that is cached
    make_session(listener, rain, clock.local_day(clock.now(), "UTC", 0) - timedelta(days=7))
    headers = {"Authorization": f"Bearer {token_for('recap-listener@example.com')}"}

    def week_sessions():
        res = other.get("/api/user/recap", query_string={"period": "week"}, headers=headers)
        assert res.status_code == 200, res.json
        return res.json["data"]["sessions"]

    try:
        for app in (backing_off_app, other_app):
            assert app.test_client().get("/api/user/profile", headers=headers).status_code == 200
        _trip_backoff_while_redis_is_down(own_redis, backing_off_app, other_app)
        assert week_sessions() == 0  # cached by the other process (Redis came back empty)
        with backing_off_app.app_context():
            make_session(listener, rain, clock.local_day(clock.now(), "UTC", 0), minutes=5)
            request_refresh(listener)  # the enqueue is skipped too: the sweep's, not this
        saved = time.monotonic()
        while week_sessions() != 1:
            assert time.monotonic() - saved < retry + 10, \
                "the other process still serves the week's recap from before the session"
            time.sleep(0.2)
    finally:
        _stop_apps(backing_off_app, other_app)


def test_a_suspension_through_a_process_backing_off_from_redis_ends_cached_sign_ins_elsewhere(
        own_redis, token_for, admin_auth, make_config, make_user):
    """A suspension made through a process that skips Redis while the others have it back:
    the caller invalidation it could not publish then is published once it reaches Redis
    again, so another process stops answering the suspended account from its caller cache
    (kept for a minute here) a few seconds later."""
    from sonicus import create_app

    retry = 5.0
    backing_off_app = create_app(make_config(REDIS_URL=own_redis.url,
                                             REDIS_RETRY_SECONDS=retry))
    other_app = create_app(make_config(REDIS_URL=own_redis.url, AUTH_USER_CACHE_SECONDS=60))
    backing_off, other = backing_off_app.test_client(), other_app.test_client()
    suspended = make_user("suspended-elsewhere@example.com").id
    headers = {"Authorization": f"Bearer {token_for('suspended-elsewhere@example.com')}"}
    admin = admin_auth("moderator@example.com")
    try:
        assert backing_off.get("/api/user/profile", headers=admin).status_code == 200
        assert other.get("/api/user/profile", headers=headers).status_code == 200

        _trip_backoff_while_redis_is_down(own_redis, backing_off_app, other_app)
        assert other.get("/api/user/profile", headers=headers).status_code == 200  # cached
        suspended_at = time.monotonic()
        res = backing_off.patch(f"/api/admin/users/{suspended}", json={"is_active": False},
                                headers=admin)
        assert res.status_code == 200, res.json

        while other.get("/api/user/profile", headers=headers).status_code != 403:
            assert time.monotonic() - suspended_at < retry + 10, \
                "the other process still signs the suspended account in from its cache"
            time.sleep(0.2)
    finally:
        _stop_apps(backing_off_app, other_app)


def test_sockets_of_accounts_suspended_or_erased_through_a_process_backing_off_from_redis_close(
        own_redis, token_for, admin_auth, make_config, make_user, connect_ws, serve_in_process,
        wait_for):
    """An account suspended, another erased, through a process that skips Redis (for a minute
    here) while the socket process has it back: that process never publishes their close,
    yet the socket process closes their sockets (4403, 4401) within its account check
    (WS_ACCOUNT_CHECK_SECONDS), and keeps the others'."""
    from sonicus import create_app
    from sonicus.extensions import redis_gate
    from sonicus.realtime.broker import get_broker

    sockets_app = create_app(make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2,
                                         WS_ACCOUNT_CHECK_SECONDS=1))
    backing_off_app = create_app(make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=60))
    backing_off = backing_off_app.test_client()
    suspended = make_user("suspended-by-a-quiet-process@example.com").id
    make_user("erased-by-a-quiet-process@example.com")
    make_user("staying-on@example.com")
    admin = admin_auth("moderator@example.com")
    server = serve_in_process(sockets_app)
    try:
        assert backing_off.get("/api/user/profile", headers=admin).status_code == 200
        sockets = {email: connect_ws(server.url(), token_for(email)) for email in (
            "suspended-by-a-quiet-process@example.com", "erased-by-a-quiet-process@example.com",
            "staying-on@example.com")}
        for ws in sockets.values():
            assert ws.receive_json()["type"] == "analytics.snapshot"

        _trip_backoff_while_redis_is_down(own_redis, backing_off_app, sockets_app)
        res = backing_off.patch(f"/api/admin/users/{suspended}", json={"is_active": False},
                                headers=admin)
        assert res.status_code == 200, res.json
        res = backing_off.delete("/api/user/profile", headers={
            "Authorization": f"Bearer {token_for('erased-by-a-quiet-process@example.com')}"})
        assert res.status_code == 200, res.json
        assert not redis_gate(backing_off_app).healthy  # it published nothing: still backing off

        for email, code in (("suspended-by-a-quiet-process@example.com", 4403),
                            ("erased-by-a-quiet-process@example.com", 4401)):
            sockets[email].settimeout(10)
            assert sockets[email].close_code() == code, email
        broker = get_broker(sockets_app)  # the staying account's socket is kept
        assert wait_for(lambda: broker.local_user_count() == 1)
        assert broker.local_socket_count() == 1
    finally:
        server.stop()
        _stop_apps(sockets_app, backing_off_app)


def test_sockets_of_an_account_suspended_while_redis_is_down_close_before_it_is_back(
        own_redis, token_for, admin_auth, make_config, make_user, connect_ws, serve_in_process,
        wait_for):
    """Redis is down and stays down: no close can be published, yet the socket process's
    account check closes the suspended account's socket (4403) instead of waiting for
    Redis."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    sockets_app = create_app(make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2,
                                         WS_ACCOUNT_CHECK_SECONDS=1))
    other_app = create_app(make_config(REDIS_URL=own_redis.url))
    other = other_app.test_client()
    suspended = make_user("suspended-in-the-dark@example.com").id
    make_user("staying-in-the-dark@example.com")
    server = serve_in_process(sockets_app)
    try:
        ws = connect_ws(server.url(), token_for("suspended-in-the-dark@example.com"))
        staying = connect_ws(server.url(), token_for("staying-in-the-dark@example.com"))
        for socket in (ws, staying):
            assert socket.receive_json()["type"] == "analytics.snapshot"

        own_redis.stop()
        res = other.patch(f"/api/admin/users/{suspended}", json={"is_active": False},
                          headers=admin_auth("moderator@example.com"))
        assert res.status_code == 200, res.json
        ws.settimeout(15)
        assert ws.close_code() == 4403
        assert wait_for(lambda: get_broker(sockets_app).local_socket_count() == 1)
    finally:
        server.stop()
        _stop_apps(sockets_app, other_app)


def test_the_account_check_of_ten_thousand_sockets_is_one_query(
        app, make_config, sql_statements):
    """A socket process holding 10,000 sockets of 1,000 users checks their accounts in one
    query, and closes exactly the sockets of the suspended and erased ones."""
    from sqlalchemy import insert, update

    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.realtime.broker import ADMITTED, get_broker
    from sonicus.realtime.connection import Connection

    local = create_app(make_config(REDIS_URL=None))  # no leases: the local count decides
    with local.app_context():
        ids = list(db.session.execute(insert(User).returning(User.id), [
            {"oidc_sub": f"sub-many-{n}", "email": f"many-{n}@example.com"}
            for n in range(998)]).scalars())
        suspended = ids[:7]
        db.session.execute(update(User).where(User.id.in_(suspended)).values(is_active=False))
        db.session.commit()
        db.session.remove()
    erased = [max(ids) + 1, max(ids) + 2]  # never were, or erased since
    broker = get_broker(local)
    conns = [Connection(None, user_id) for user_id in ids + erased for _ in range(10)]
    for conn in conns:
        assert broker.admit(conn, per_process=20_000, per_user=10) == ADMITTED
    try:
        closed = []
        statements = sql_statements(local, lambda: closed.append(broker.accounts.run()))
        assert len(statements) == 1, statements
        assert closed == [10 * (len(suspended) + len(erased))]
        assert broker.local_user_count() == len(ids) - len(suspended)
        assert {conn.user_id for conn in conns if conn.closed} == {*suspended, *erased}
    finally:
        for conn in conns:
            broker.unregister(conn)
        _stop_apps(local)


def test_a_tier_granted_by_a_forked_job_backing_off_from_redis_still_ends_cached_sign_ins(
        own_redis, make_config, make_user):
    """A job run in a forked work horse that backs off from Redis (the worker's own call failed
    a moment ago, Redis is back for everyone else) changes a user: the caller invalidation it
    owes is sent before the horse ends, not lost with it."""
    import json

    from sonicus import create_app
    from sonicus.caller_cache import callers_channel
    from sonicus.services.admin_users import grant_tier_from_cli
    from sonicus.tasks.queue import QUEUE_DEFAULT
    from sonicus.tasks.worker import make_worker

    worker_app = create_app(make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=60))
    user = make_user("granted-by-a-job@example.com").id
    try:
        _trip_backoff_while_redis_is_down(own_redis, worker_app)
        listener = redis.Redis.from_url(own_redis.url).pubsub(ignore_subscribe_messages=True)
        listener.subscribe(callers_channel(worker_app.config))
        assert listener.get_message(timeout=2) is None  # subscribed
        Queue(QUEUE_DEFAULT, connection=redis.Redis.from_url(own_redis.url)).enqueue(
            grant_tier_from_cli, user, "premium")

        make_worker(worker_app).work(burst=True)  # forks a work horse for the job

        deadline = time.monotonic() + 5
        message = None
        while message is None and time.monotonic() < deadline:
            message = listener.get_message(timeout=0.5)
        assert message is not None, "the job's caller invalidation was lost with its horse"
        assert json.loads(message["data"])["forget"] == [user]
    finally:
        _stop_apps(worker_app)


# ---- settings changes a process did not hear of ----------------------------------------------
# Figures computed under a user's settings before a change must not reach their sockets after
# it (a streak just hidden shown again): every process drops them once it knows of the change.

def _publish_figures(url: str, app, user_id: int, marker: str, settings_version: int) -> None:
    """A worker's ``analytics.updated`` computed under ``settings_version``, as it publishes."""
    import json

    from sonicus.realtime.publish import user_events_channel

    text = json.dumps({"type": "analytics.updated", "data": {"marker": marker}})
    redis.Redis.from_url(url).publish(user_events_channel(app.config), json.dumps(
        {"user_id": user_id, "text": text, "settings": settings_version}))


def _versions(app, user_id: int) -> int:
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services.analytics import settings_version

    with app.app_context():
        version = settings_version(db.session.get(User, user_id))
        db.session.remove()
    return version


def test_figures_computed_before_a_settings_change_made_while_redis_was_down_are_dropped(
        own_redis, token_for, make_config, make_user, connect_ws, serve_in_process):
    """Streaks hidden through another process while Redis is down: the change's announcement
    never reaches this process's subscriber. Once Redis is back, figures a worker computed
    under the old settings and publishes late are dropped, not shown on the open socket."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2)
    sockets_app, other_app = create_app(config), create_app(config)
    email = "hides-streaks-offline@example.com"
    user_id = make_user(email).id
    headers = {"Authorization": f"Bearer {token_for(email)}"}
    old = _versions(sockets_app, user_id)
    server = serve_in_process(sockets_app)
    try:
        ws = connect_ws(server.url(), token_for(email))
        assert ws.receive_json()["type"] == "analytics.snapshot"
        own_redis.stop()
        res = other_app.test_client().put(
            "/api/user/profile", json={"preferences": {"show_streaks": False}}, headers=headers)
        assert res.status_code == 200, res.json
        own_redis.start()
        assert get_broker(sockets_app).wait_ready(20), "the subscriber did not reconnect"
        ws.settimeout(10)
        assert ws.receive_json()["type"] == "analytics.updated"  # figures re-sent

        _publish_figures(own_redis.url, sockets_app, user_id, "old settings", old)
        _publish_figures(own_redis.url, sockets_app, user_id, "new settings",
                         _versions(sockets_app, user_id))
        assert ws.receive_json()["data"] == {"marker": "new settings"}
    finally:
        server.stop()
        _stop_apps(sockets_app, other_app)


def test_figures_computed_before_a_settings_change_through_a_process_backing_off_are_dropped(
        own_redis, token_for, make_config, make_user, connect_ws, serve_in_process):
    """Streaks hidden through a process that skips Redis (its own call failed a moment ago)
    while the others have it back: the announcement reaches them once that process reaches
    Redis again, and figures computed under the old settings are dropped from then on."""
    from sonicus import create_app
    from sonicus.extensions import redis_gate
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=1.0)
    sockets_app, backing_off_app = create_app(config), create_app(config)
    backing_off = backing_off_app.test_client()
    email = "hides-streaks-backing-off@example.com"
    user_id = make_user(email).id
    headers = {"Authorization": f"Bearer {token_for(email)}"}
    old = _versions(sockets_app, user_id)
    server = serve_in_process(sockets_app)
    try:
        ws = connect_ws(server.url(), token_for(email))
        assert ws.receive_json()["type"] == "analytics.snapshot"
        assert backing_off.get("/api/user/profile", headers=headers).status_code == 200
        _trip_backoff_while_redis_is_down(own_redis, backing_off_app, sockets_app)
        ws.settimeout(10)
        assert ws.receive_json()["type"] == "analytics.updated"  # re-sent after the gap
        res = backing_off.put("/api/user/profile", json={"preferences": {"show_streaks": False}},
                              headers=headers)
        assert res.status_code == 200, res.json
        deadline = time.monotonic() + 15
        while redis_gate(backing_off_app).owes or not redis_gate(backing_off_app).healthy:
            assert time.monotonic() < deadline, "the backing-off process never reached Redis"
            time.sleep(0.1)
        time.sleep(0.3)  # what it sent reaches the other subscriber

        _publish_figures(own_redis.url, sockets_app, user_id, "old settings", old)
        _publish_figures(own_redis.url, sockets_app, user_id, "new settings",
                         _versions(sockets_app, user_id))
        assert ws.receive_json()["data"] == {"marker": "new settings"}
        assert get_broker(sockets_app).wait_ready(1)
    finally:
        server.stop()
        _stop_apps(sockets_app, backing_off_app)
