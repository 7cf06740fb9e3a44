"""An erasure while the account's other requests are under way (real threads, real row
locks): an offline upload, a second erasure, an export. Each answers without a 5xx, and
nothing personal of the account is left, or shown, once it is gone."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

from races import in_thread, lock_waiters
from sqlalchemy import func, select, update

from sonicus import clock
from sonicus.models import ErasureTombstone, ListeningSession, SoundPackage, User
from sonicus.services import erasure, offline_sync, users

WAIT = 10


def _wait_until_waiting(db_session, thread) -> None:
    """Until ``thread`` waits on a row lock (or has finished)."""
    deadline = time.monotonic() + WAIT
    while thread.is_alive() and lock_waiters(db_session) == 0:
        assert time.monotonic() < deadline, "nothing waited on a lock"
        time.sleep(0.01)


def _paused(monkeypatch, module, name):
    """Pause ``module.name`` on entry until ``go`` is set; ``reached`` says it was entered."""
    reached, go = threading.Event(), threading.Event()
    real = getattr(module, name)

    def paused(*args, **kwargs):
        reached.set()
        assert go.wait(WAIT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, paused)
    return reached, go


def _old_package(make_package, db_session) -> int:
    """A package in the catalog since long before the uploaded listening."""
    package = make_package("rain").id
    db_session.execute(update(SoundPackage).values(
        created_at=clock.now() - timedelta(days=60)))
    db_session.commit()
    return package


def _upload(package_id: int) -> dict:
    started = clock.now() - timedelta(hours=3)
    return {"sessions": [{
        "client_id": str(uuid.uuid4()), "package_id": package_id,
        "started_at": started.isoformat(), "ended_at": (started + timedelta(minutes=10))
        .isoformat(), "listened_seconds": 600, "mood_before": 3, "mood_after": 8,
        "note": "a private note"}]}


def _personal_sessions(db_session) -> int:
    """Stored sessions that still carry something of a person."""
    count = db_session.execute(select(func.count()).select_from(ListeningSession).where(
        (ListeningSession.user_id.is_not(None)) | ListeningSession.note.is_not(None)
        | ListeningSession.client_id.is_not(None) | ListeningSession.mood_after.is_not(None))
    ).scalar_one()
    db_session.commit()
    return count


def test_an_offline_upload_under_way_when_the_account_is_erased_leaves_nothing_personal(
        app, make_user, make_package, auth, db_session, monkeypatch):
    """The upload holds the account's subscription row when the erasure comes: the erasure
    waits for it, then anonymises what it stored (no note, no mood, no client id)."""
    make_user("uploading@example.com")
    package = _old_package(make_package, db_session)
    headers = auth("uploading@example.com")
    reached, go = _paused(monkeypatch, offline_sync, "_load_context")
    upload, upload_answer = in_thread(lambda: app.test_client().post(
        "/api/user/sessions/sync", json=_upload(package), headers=headers))
    erase = None
    try:
        assert reached.wait(WAIT)
        erase, erase_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        _wait_until_waiting(db_session, erase)
    finally:
        go.set()
        upload.join(WAIT)
        if erase is not None:
            erase.join(WAIT)
    assert upload_answer[0].status_code == 200, upload_answer[0].get_json()
    assert upload_answer[0].get_json()["data"]["results"][0]["status"] == "created"
    assert erase_answer[0].status_code == 200, erase_answer[0].get_json()
    assert db_session.execute(select(func.count()).select_from(ListeningSession)) \
        .scalar_one() == 1
    assert _personal_sessions(db_session) == 0


def test_an_offline_upload_arriving_during_the_erasure_stores_nothing_and_is_no_5xx(
        app, make_user, make_package, auth, db_session, monkeypatch):
    """The erasure holds the account when an upload arrives: the upload waits, then finds the
    account gone (404), and stores nothing."""
    make_user("erasing@example.com")
    package = _old_package(make_package, db_session)
    headers = auth("erasing@example.com")
    app.test_client().get("/api/user/profile", headers=headers)  # signed in, cached
    reached, go = _paused(monkeypatch, erasure, "add_tombstone")
    erase, erase_answer = in_thread(lambda: app.test_client().delete(
        "/api/user/profile", headers=headers))
    upload = None
    try:
        assert reached.wait(WAIT)
        upload, upload_answer = in_thread(lambda: app.test_client().post(
            "/api/user/sessions/sync", json=_upload(package), headers=headers))
        _wait_until_waiting(db_session, upload)
    finally:
        go.set()
        erase.join(WAIT)
        if upload is not None:
            upload.join(WAIT)
    assert erase_answer[0].status_code == 200, erase_answer[0].get_json()
    assert upload_answer[0].status_code < 500, upload_answer[0].get_json()
    assert _personal_sessions(db_session) == 0


def test_two_erasures_of_one_account_at_once_answer_without_a_5xx_and_leave_no_account(
        app, make_user, auth, db_session):
    """Two tabs erase the same account at the same moment (real threads): no 5xx, one
    tombstone of the account, and no account of that sign-in left behind."""
    make_user("twice@example.com", trial_used=True)
    headers = auth("twice@example.com")
    app.test_client().get("/api/user/profile", headers=headers)  # signed in, cached
    barrier = threading.Barrier(2)
    answers = []

    def erase():
        client = app.test_client()
        barrier.wait(WAIT)
        answers.append(client.delete("/api/user/profile", headers=headers))

    threads = [threading.Thread(target=erase) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses in ([200, 200], [200, 404]), [a.get_json() for a in answers]
    assert db_session.execute(select(func.count()).select_from(User).where(
        User.email == "twice@example.com")).scalar_one() == 0
    tombstones = db_session.execute(select(ErasureTombstone)).scalars().all()
    assert tombstones and all(t.trial_used for t in tombstones)


def test_an_export_under_way_when_the_account_is_erased_shows_one_moment(
        app, make_user, auth, db_session, monkeypatch):
    """The export has read part of the account when the erasure commits: what it answers is
    the account as it stood at one moment (not half erased: no devices gone and the erasure
    of this very account listed as an earlier one), or 404."""
    make_user("exporting@example.com")
    headers = auth("exporting@example.com")
    client = app.test_client()
    res = client.post("/api/user/push-subscriptions", headers=headers, json={
        "endpoint": "https://fcm.googleapis.com/fcm/send/exporting",
        "keys": {"p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1X"
                           "bjhazAkj7I99e8QcYP7DkM", "auth": "tBHItJI5svbpez7KI4CCXg"}})
    assert res.status_code in (200, 201), res.get_json()
    reached, go = _paused(monkeypatch, users, "get_reminder_preferences")
    export, export_answer = in_thread(lambda: app.test_client().get(
        "/api/user/export", headers=headers))
    try:
        assert reached.wait(WAIT)
        assert app.test_client().delete("/api/user/profile", headers=headers) \
            .status_code == 200
    finally:
        go.set()
        export.join(WAIT)
    answer = export_answer[0]
    if answer.status_code == 404:
        return
    assert answer.status_code == 200, answer.get_json()
    data = answer.get_json()["data"]
    assert data["earlier_erasures"] == []
    assert len(data["push_subscriptions"]) == 1


def test_a_checkout_under_way_when_the_account_is_erased_cannot_be_paid_after(
        stripe_app, auth, db_session, monkeypatch):
    """The checkout is being created at Stripe when the erasure comes (real threads): the
    erasure waits for it, then expires the checkout page it made, so nobody can pay it."""
    from sonicus.billing.stripe_provider import StripeProvider

    app, stripe = stripe_app
    headers = auth()
    app.test_client().get("/api/user/profile", headers=headers)  # signed in, cached
    reached, go = _paused(monkeypatch, StripeProvider, "create_checkout")
    checkout, checkout_answer = in_thread(lambda: app.test_client().post(
        "/api/user/subscription", json={"tier": "premium"}, headers=headers))
    erase = None
    try:
        assert reached.wait(WAIT)
        erase, erase_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        _wait_until_waiting(db_session, erase)
    finally:
        go.set()
        checkout.join(WAIT)
        if erase is not None:
            erase.join(WAIT)
    assert checkout_answer[0].status_code == 200, checkout_answer[0].get_json()
    assert erase_answer[0].status_code == 200, erase_answer[0].get_json()
    assert [s["status"] for s in stripe.sessions.values()] == ["expired"]


def test_a_checkout_asked_for_during_the_erasure_makes_no_checkout_page(
        stripe_app, auth, db_session, monkeypatch):
    """The erasure holds the account when the checkout is asked for: it waits, finds the
    account gone (no 5xx), and no checkout page is made at Stripe for it."""
    app, stripe = stripe_app
    headers = auth()
    app.test_client().get("/api/user/profile", headers=headers)  # signed in, cached
    reached, go = _paused(monkeypatch, erasure, "add_tombstone")
    erase, erase_answer = in_thread(lambda: app.test_client().delete(
        "/api/user/profile", headers=headers))
    checkout = None
    try:
        assert reached.wait(WAIT)
        checkout, checkout_answer = in_thread(lambda: app.test_client().post(
            "/api/user/subscription", json={"tier": "premium"}, headers=headers))
        _wait_until_waiting(db_session, checkout)
    finally:
        go.set()
        erase.join(WAIT)
        if checkout is not None:
            checkout.join(WAIT)
    assert erase_answer[0].status_code == 200, erase_answer[0].get_json()
    assert checkout_answer[0].status_code < 500, checkout_answer[0].get_json()
    assert stripe.sessions == {}


def test_every_open_socket_of_an_erased_account_closes_at_once_on_every_process(
        make_config, make_user, token_for, connect_ws, serve_in_process):
    """Sockets open on two processes when the account is erased through a third: each
    closes with 4401 within moments, and nothing more reaches them."""
    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.realtime.broker import get_broker

    config = make_config()
    apps = [create_app(config) for _ in range(3)]
    email = "socket-erased@example.com"
    make_user(email)
    token = token_for(email)
    try:
        sockets = []
        for app in apps[:2]:
            ws = connect_ws(serve_in_process(app).url(), token)
            assert ws.receive_json()["type"] == "analytics.snapshot"
            sockets.append(ws)
        erased = time.monotonic()
        assert apps[2].test_client().delete(
            "/api/user/profile", headers={"Authorization": f"Bearer {token}"}) \
            .status_code == 200
        for ws in sockets:
            ws.settimeout(5)
            assert ws.close_code() == 4401
        assert time.monotonic() - erased < 5
        # the close reaches the client as the server's handler ends: its socket leaves the
        # process's count moments after, not before
        deadline = time.monotonic() + 2
        while any(get_broker(app).local_socket_count() for app in apps[:2]):
            assert time.monotonic() < deadline, [get_broker(a).local_socket_count()
                                                 for a in apps[:2]]
            time.sleep(0.01)
    finally:
        for app in apps:
            get_broker(app).stop()
            with app.app_context():
                db.session.remove()
                db.engine.dispose()


def test_a_socket_signing_in_as_its_account_is_erased_is_closed_with_4401(
        make_config, make_user, token_for, connect_ws, serve_in_process):
    """The account is erased after the socket's handshake read it, before the socket was
    registered: the published close found nothing to close there; the socket is still
    refused with 4401 and gets no snapshot."""
    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.realtime.broker import get_broker

    racing, other = create_app(make_config()), create_app(make_config())
    broker = get_broker(racing)
    email = "erased-mid-handshake@example.com"
    user_id = make_user(email).id
    token = token_for(email)
    admit = broker.admit

    def erased_just_before(conn, per_process, per_user):  # the race, made certain
        answer = other.test_client().delete("/api/user/profile",
                                            headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200
        deadline = time.monotonic() + 5
        while broker.accounts.closed_since(user_id, 0.0) is None:
            assert time.monotonic() < deadline, "the close never came"
            time.sleep(0.01)
        return admit(conn, per_process, per_user)

    broker.admit = erased_just_before
    try:
        server = serve_in_process(racing)
        ws = connect_ws(server.url(), token)
        ws.settimeout(5)
        assert ws.close_code() == 4401
        assert broker.local_socket_count() == 0
    finally:
        for app in (racing, other):
            get_broker(app).stop()
            with app.app_context():
                db.session.remove()
                db.engine.dispose()


def test_a_heartbeat_under_way_when_the_account_is_erased_answers_and_the_session_is_anonymised(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """A session plays in one tab while the account is erased in another, the heartbeat
    holding the session's row (real threads): both answer at once, no 5xx, and the session
    is kept without its account; the next heartbeat of that tab finds no session of theirs."""
    from sonicus.services import listening

    user_id = make_user("playing@example.com").id
    package = make_package("rain")
    session_id = make_session(db_session.get(User, user_id), package, started_at=clock.now()
                              - timedelta(minutes=5), status="open", minutes=0).id
    headers = auth("playing@example.com")
    reached, go = _paused(monkeypatch, listening, "_note_progress")
    beat, beat_answer = in_thread(lambda: app.test_client().patch(
        f"/api/user/sessions/{session_id}", json={"listened_seconds": 120}, headers=headers))
    erase = None
    try:
        assert reached.wait(WAIT)
        erase, erase_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        _wait_until_waiting(db_session, erase)
    finally:
        go.set()
        beat.join(WAIT)
        if erase is not None:
            erase.join(WAIT)
    assert beat_answer[0].status_code == 200, beat_answer[0].get_json()
    assert erase_answer[0].status_code == 200, erase_answer[0].get_json()
    assert db_session.execute(select(ListeningSession.user_id).where(
        ListeningSession.id == session_id)).scalar_one() is None
    db_session.commit()
    monkeypatch.undo()
    again = app.test_client().patch(f"/api/user/sessions/{session_id}",
                                    json={"listened_seconds": 180}, headers=headers)
    assert again.status_code == 404, again.get_json()


def _refresh_in_thread(app, user_id: int):
    from sonicus.extensions import db
    from sonicus.services import analytics

    def refresh():
        with app.app_context():
            try:
                return ("returned", analytics.refresh_user_analytics(user_id))
            except Exception as exc:
                return ("raised", repr(exc))
            finally:
                db.session.remove()

    return in_thread(refresh)


def test_an_analytics_refresh_that_read_the_account_before_its_erasure_ends_quietly(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """The refresh job read the account, then the account is erased before it stores the
    figures: the job ends without an error (the account is gone, nothing to refresh), not a
    failed job of a foreign-key violation, and caches nothing of the account."""
    from sonicus.cache import cache_get_raw
    from sonicus.services import analytics

    user_id = make_user("refreshed@example.com").id
    make_session(user_id, make_package("rain"), started_at=clock.now() - timedelta(hours=2),
                 minutes=20)
    headers = auth("refreshed@example.com")
    reached, go = _paused(monkeypatch, analytics, "dialect_insert")
    refresh, outcome = _refresh_in_thread(app, user_id)
    try:
        assert reached.wait(WAIT)
        assert app.test_client().delete("/api/user/profile", headers=headers) \
            .status_code == 200
    finally:
        go.set()
        refresh.join(WAIT)
    assert outcome == [("returned", None)]
    with app.app_context():
        assert cache_get_raw(analytics.cache_key(user_id)) is None


def test_an_analytics_refresh_caching_as_the_account_is_erased_leaves_no_figures_cached(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """The refresh stored the figures and is about to cache them when the erasure commits
    and forgets the cache: the figures of the erased account are not cached after it."""
    from sonicus.cache import cache_get_raw
    from sonicus.services import analytics

    user_id = make_user("cached-late@example.com").id
    make_session(user_id, make_package("rain"), started_at=clock.now() - timedelta(hours=2),
                 minutes=20)
    headers = auth("cached-late@example.com")
    reached, go = _paused(monkeypatch, analytics, "_cache_figures")
    refresh, outcome = _refresh_in_thread(app, user_id)
    try:
        assert reached.wait(WAIT)
        assert app.test_client().delete("/api/user/profile", headers=headers) \
            .status_code == 200
    finally:
        go.set()
        refresh.join(WAIT)
    assert outcome and outcome[0][0] == "returned", outcome
    with app.app_context():
        assert cache_get_raw(analytics.cache_key(user_id)) is None


def test_analytics_read_as_the_account_is_erased_leave_no_figures_cached(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """A listener opens their analytics (nothing cached: computed for the answer) and, while
    the figures are being cached, the account is erased on another device (real threads):
    the answer comes, but the erased account's figures are not left in the cache until it
    expires (the erasure forgot the cache before this read wrote it)."""
    from sonicus.cache import cache_get_raw
    from sonicus.services import analytics

    user_id = make_user("read-late@example.com").id
    make_session(user_id, make_package("rain"), started_at=clock.now() - timedelta(hours=2),
                 minutes=20)
    headers = auth("read-late@example.com")
    reached, go = _paused(monkeypatch, analytics, "cache_replace")
    read, answer = in_thread(lambda: app.test_client().get("/api/user/analytics",
                                                           headers=headers))
    try:
        assert reached.wait(WAIT)
        assert app.test_client().delete("/api/user/profile", headers=headers) \
            .status_code == 200
    finally:
        go.set()
        read.join(WAIT)
    assert answer[0].status_code in (200, 404), answer[0].get_json()
    with app.app_context():
        assert cache_get_raw(analytics.cache_key(user_id)) is None


def test_an_admin_reading_an_account_as_it_is_erased_gets_it_or_404_never_a_5xx(
        app, make_user, auth, admin_auth, db_session, monkeypatch):
    """An operator opens a user's detail while the user erases the account (real threads):
    the detail read half before and half after the erasure answers the account as it was,
    or 404, never a 5xx."""
    from sonicus.services import admin_users

    user_id = make_user("watched@example.com", tier="premium").id
    make_user("operator@example.com", admin=True)
    admin = admin_auth("operator@example.com")
    headers = auth("watched@example.com")
    reached, go = _paused(monkeypatch, admin_users, "get_subscription")
    detail, detail_answer = in_thread(lambda: app.test_client().get(
        f"/api/admin/users/{user_id}", headers=admin))
    try:
        assert reached.wait(WAIT)
        assert app.test_client().delete("/api/user/profile", headers=headers) \
            .status_code == 200
    finally:
        go.set()
        detail.join(WAIT)
    assert detail_answer[0].status_code in (200, 404), detail_answer[0].get_json()
