"""Administrators' changes of a user racing what the user does at the same moment: each
finishes, neither waits for the database to break a deadlock, and no 5xx is answered."""

from __future__ import annotations

import threading
import time

from races import in_thread, lock_waiters
from sqlalchemy import func, select

from sonicus.models import User
from sonicus.services import admin_users

WAIT = 10


def test_a_tier_grant_while_the_user_erases_their_account_finishes_without_a_deadlock(
        app, make_user, admin_auth, auth, db_session, monkeypatch):
    """An administrator grants a tier to a user who erases their account at that moment:
    the erasure answers 200 and the grant answers 200 (it came first) or 404 (the account
    is gone), at once. Before, the grant locked the user's row and then the subscription
    row while the erasure locked them the other way round: the two deadlocked, and after a
    second's wait the database broke it by failing one of them with a 503."""
    make_user("admin@example.com", admin=True)
    user_id = make_user("leaving@example.com").id
    admin, headers = admin_auth("admin@example.com"), auth("leaving@example.com")
    assert app.test_client().get("/api/user/profile", headers=headers).status_code == 200
    grant_holds_its_locks, go = threading.Event(), threading.Event()
    real_check = admin_users._check_status_change

    def paused_check(*args):
        grant_holds_its_locks.set()
        assert go.wait(WAIT)
        return real_check(*args)

    monkeypatch.setattr(admin_users, "_check_status_change", paused_check)
    grant, grant_answer = in_thread(lambda: app.test_client().patch(
        f"/api/admin/users/{user_id}", json={"tier": "premium"}, headers=admin))
    erasure = erasure_answer = None
    try:
        assert grant_holds_its_locks.wait(WAIT)
        erasure, erasure_answer = in_thread(lambda: app.test_client().delete(
            "/api/user/profile", headers=headers))
        for _ in range(500):  # the erasure waits on a row the grant holds
            if lock_waiters(db_session) >= 1:
                break
            time.sleep(0.01)
        assert lock_waiters(db_session) >= 1
        started = time.monotonic()
    finally:
        go.set()
        grant.join(WAIT)
        if erasure is not None:
            erasure.join(WAIT)
    assert time.monotonic() - started < 0.9  # no deadlock waited out (deadlock_timeout: 1 s)
    assert grant_answer[0].status_code in (200, 404), grant_answer[0].get_json()
    assert erasure_answer[0].status_code == 200, erasure_answer[0].get_json()
    assert db_session.execute(select(func.count()).select_from(User)
                              .where(User.id == user_id)).scalar_one() == 0
