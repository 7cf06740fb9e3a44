"""The recommendation model's rebuild under rebuilds at the same moment (real threads, each
with its own connection): the hourly rebuild and the one an erasure asks for may run on two
workers at once; both finish, and the tables are those of the later one."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

from races import in_thread, lock_waiters
from sqlalchemy import func, select

from sonicus import clock
from sonicus.models import PackageOutcome, UserOutcomeProfile
from sonicus.services import analytics, recommendation_model

WAIT = 10


def _listeners_with_moods(make_user, make_package, make_session) -> list[int]:
    package = make_package("rain")
    day = clock.local_day(clock.now(), "UTC", 0) - timedelta(days=5)
    user_ids = []
    for n in range(3):
        user = make_user(f"listener{n}@example.com")
        user_ids.append(user.id)
        for i in range(3):
            make_session(user, package, day + timedelta(days=i), minutes=10, mood_before=3,
                         mood_after=6 + n)
    return user_ids


def _while_a_rebuild_fills_the_tables(app, db_session, monkeypatch, other):
    """Run the rebuild until it has emptied the tables and starts filling them again, then
    ``other`` (run with an app context of its own) until it finishes or waits on a lock,
    then let the rebuild go on; the two results (an exception is returned, as the worker
    records it for a failed job)."""
    paused, go = threading.Event(), threading.Event()
    real_sync = recommendation_model._sync_user_packages

    def paused_sync():
        if threading.current_thread() is first and not paused.is_set():
            paused.set()
            assert go.wait(WAIT)
        return real_sync()

    def run(action):
        def inner():
            with app.app_context():
                try:
                    return action()
                except Exception as exc:
                    return exc
        return inner

    monkeypatch.setattr(recommendation_model, "_sync_user_packages", paused_sync)
    first, first_result = in_thread(run(recommendation_model.rebuild_recommendation_model))
    second = None
    try:
        assert paused.wait(WAIT)
        second, second_result = in_thread(run(other))
        for _ in range(300):  # the other finishes, or waits for the rebuild
            if not second.is_alive() or lock_waiters(db_session):
                break
            time.sleep(0.01)
    finally:
        go.set()
        first.join(WAIT)
        if second is not None:
            second.join(WAIT)
    return first_result[0], second_result[0]


def test_two_rebuilds_of_the_model_at_once_both_finish(app, make_user, make_package,
                                                       make_session, db_session, monkeypatch):
    """The hourly rebuild runs on one worker while another takes the rebuild an erasure
    queued: both finish, one after the other, and the model holds one row per package.
    Before, each emptied the tables it had seen and filled them again, and the later one's
    rows collided with the earlier one's: it failed on the unique key, so the rebuild that
    was to take the erased listener's moods out of everyone's recommendations was lost
    until the next hour."""
    _listeners_with_moods(make_user, make_package, make_session)
    first, second = _while_a_rebuild_fills_the_tables(
        app, db_session, monkeypatch, recommendation_model.rebuild_recommendation_model)
    assert not isinstance(first, Exception), first
    assert not isinstance(second, Exception), second
    assert db_session.execute(select(func.count()).select_from(PackageOutcome)
                              ).scalar_one() == 1


def test_a_listeners_analytics_refresh_during_a_rebuild_finishes(
        app, make_user, make_package, make_session, db_session, monkeypatch):
    """A listener's analytics refresh (which rebuilds their own recommendation rows) runs
    while the hourly rebuild fills the tables: both finish, one after the other. Before, the
    refresh removed its own row only once the rebuild had committed a new one, then wrote
    its own: the unique key refused it and the refresh job failed (the listener's figures
    were not updated until the stale sweep tried again)."""
    user_id = _listeners_with_moods(make_user, make_package, make_session)[0]
    first, second = _while_a_rebuild_fills_the_tables(
        app, db_session, monkeypatch,
        lambda: analytics.refresh_user_analytics(user_id, publish=False))
    assert not isinstance(first, Exception), first
    assert isinstance(second, dict), second
    assert db_session.execute(select(func.count()).select_from(UserOutcomeProfile)
                              ).scalar_one() == 3
