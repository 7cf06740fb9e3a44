"""An erasure racing the account's own requests at the same moment: each finishes at once,
neither waits for the database to break a deadlock, and no 5xx is answered."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from races import in_thread, lock_waiters
from sqlalchemy import func, select

from sonicus import clock
from sonicus.models import ListeningSession, User, UserAnalytics
from sonicus.services import analytics

WAIT = 10


def _wait_for_a_lock_waiter(db_session) -> None:
    for _ in range(500):
        if lock_waiters(db_session) >= 1:
            return
        time.sleep(0.01)
    raise AssertionError("nothing waited on a lock")


def test_a_first_completion_while_the_account_is_erased_finishes_without_a_deadlock(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """A new listener ends their first session in one tab while erasing the account in
    another: the completion answers 200 (it came first) and the erasure 200, at once.
    Before, the completion held its session's row and then wrote the account's first
    analytics row (which waits on the erasure's lock of the account), while the erasure held
    the account and waited on that session to anonymise it: a deadlock, broken after a
    second by failing one of them with a 503."""
    user_id = make_user("leaving@example.com").id
    package = make_package("rain")
    session_id = make_session(db_session.get(User, user_id), package,
                              started_at=clock.now(), status="open", minutes=0).id
    headers = auth("leaving@example.com")
    holds_session, go = threading.Event(), threading.Event()
    real_mark = analytics.mark_stale

    def paused_mark(*args):
        holds_session.set()
        assert go.wait(WAIT)
        return real_mark(*args)

    monkeypatch.setattr(analytics, "mark_stale", paused_mark)
    complete, complete_answer = in_thread(lambda: app.test_client().post(
        f"/api/user/sessions/{session_id}/complete",
        json={"listened_seconds": 0, "completed": False}, headers=headers))
    erasure = None
    try:
        assert holds_session.wait(WAIT)
        erasure, erasure_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        _wait_for_a_lock_waiter(db_session)
        started = time.monotonic()
    finally:
        go.set()
        complete.join(WAIT)
        if erasure is not None:
            erasure.join(WAIT)
    assert time.monotonic() - started < 0.9  # no deadlock waited out (deadlock_timeout: 1 s)
    assert complete_answer[0].status_code == 200, complete_answer[0].get_json()
    assert erasure_answer[0].status_code == 200, erasure_answer[0].get_json()
    assert db_session.execute(select(func.count()).select_from(User)
                              .where(User.id == user_id)).scalar_one() == 0
    assert db_session.execute(select(ListeningSession.user_id)
                              .where(ListeningSession.id == session_id)).scalar_one() is None


def test_an_admin_change_made_as_the_admin_erases_their_account_keeps_no_email(
        app, make_user, make_package, admin_auth, db_session, monkeypatch):
    """An administrator erases their account while an edit of theirs is sent from another
    tab: the audit log keeps no trace of their email (the edit is refused with 404, or
    anonymised as their earlier entries are). Before, an edit committed while the erasure
    ran kept the administrator's email as its author once the account was gone."""
    from sonicus.models import AuditLog
    from sonicus.services import users

    make_user("boss@example.com", admin=True)
    package_id = make_package("rain").id
    headers = admin_auth("boss@example.com")
    client = app.test_client()
    assert client.patch(f"/api/admin/packages/{package_id}", json={"title": "Rain I"},
                        headers=headers).status_code == 200
    erasure_at_its_end, go = threading.Event(), threading.Event()
    real_keep = users.erasure_keys.keep_past_erasure

    def paused_keep(*args):
        erasure_at_its_end.set()
        assert go.wait(WAIT)
        return real_keep(*args)

    monkeypatch.setattr(users.erasure_keys, "keep_past_erasure", paused_keep)
    erasure, erasure_answer = in_thread(lambda: app.test_client().delete(
        "/api/user/profile", headers=headers))
    edit = None
    try:
        assert erasure_at_its_end.wait(WAIT)
        edit, edit_answer = in_thread(lambda: app.test_client().patch(
            f"/api/admin/packages/{package_id}", json={"title": "Rain II"}, headers=headers))
        for _ in range(300):  # the edit commits, or waits on the erasure
            if not edit.is_alive() or lock_waiters(db_session):
                break
            time.sleep(0.01)
    finally:
        go.set()
        erasure.join(WAIT)
        if edit is not None:
            edit.join(WAIT)
    assert erasure_answer[0].status_code == 200, erasure_answer[0].get_json()
    assert edit_answer[0].status_code in (200, 404), edit_answer[0].get_json()
    labels = db_session.execute(select(AuditLog.actor_label, AuditLog.actor_id)).all()
    assert labels and all(row == ("erased user", None) for row in labels), labels




def test_an_analytics_refresh_while_the_account_is_erased_finishes_without_an_error(
        app, make_user, make_package, make_session, auth, db_session, monkeypatch):
    """The first refresh of a listener's analytics (queued by their first completion) runs
    as they erase the account: both finish (the refresh came first; the erasure then removes
    what it stored). Before, the refresh found the account, the erasure removed it, and the
    refresh's analytics row was then refused by the foreign key: the job failed and landed
    among the failed jobs an operator sees (the sweep's retries found nothing to do)."""
    user = make_user("leaving@example.com")
    user_id = user.id
    make_session(user, make_package("rain"), started_at=clock.now() - timedelta(hours=1),
                 minutes=10, mood_before=3, mood_after=7)
    headers = auth("leaving@example.com")
    paused, go = threading.Event(), threading.Event()
    real_insert = analytics.dialect_insert

    def paused_insert():  # the account has been read, its analytics row not yet written
        if threading.current_thread() is refresh and not paused.is_set():
            paused.set()
            assert go.wait(WAIT)
        return real_insert()

    def run_refresh():
        with app.app_context():
            try:
                return analytics.refresh_user_analytics(user_id, publish=False)
            except Exception as exc:  # what the worker records as a failed job
                return exc

    monkeypatch.setattr(analytics, "dialect_insert", paused_insert)
    refresh, refreshed = in_thread(run_refresh)
    erasure = None
    try:
        assert paused.wait(WAIT)
        erasure, erasure_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        for _ in range(300):  # the erasure finishes, or waits for the refresh
            if not erasure.is_alive() or lock_waiters(db_session):
                break
            time.sleep(0.01)
    finally:
        go.set()
        refresh.join(WAIT)
        if erasure is not None:
            erasure.join(WAIT)
    assert not isinstance(refreshed[0], Exception), refreshed[0]
    assert erasure_answer[0].status_code == 200, erasure_answer[0].get_json()
    assert db_session.execute(select(func.count()).select_from(User)
                              .where(User.id == user_id)).scalar_one() == 0
    assert db_session.execute(select(func.count()).select_from(UserAnalytics)).scalar_one() == 0
