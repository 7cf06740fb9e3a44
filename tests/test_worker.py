"""Real RQ workers against the real Redis: refresh jobs, retries, the sweep, the schedule."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import redis as redis_lib
from flask import current_app
from rq import Queue
from rq.job import Job, JobStatus

from sonicus import clock
from sonicus.tasks.queue import QUEUE_ANALYTICS, QUEUE_MAINTENANCE
from sonicus.tasks.worker import make_worker


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def work(app):
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)


def flaky_job(key: str) -> str:
    """Fails on its first two runs, succeeds on the third."""
    attempts = redis_lib.Redis.from_url(current_app.config["REDIS_URL"]).incr(key)
    if attempts <= 2:
        raise RuntimeError(f"attempt {attempts} fails")
    return f"succeeded on attempt {attempts}"


def test_completion_refresh_runs_on_a_worker(app, client, auth, db_session, redis_client, make_user,
                                             make_package, make_session):
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import mark_stale, request_refresh

    me = make_user("w@example.com").id
    pkg = make_package("hum").id
    make_session(me, pkg, _today(), minutes=9)
    with app.app_context():  # what completing a session does: mark in its commit, then ask
        mark_stale(me)
        db.session.commit()
        request_refresh(me)
    assert Queue(QUEUE_ANALYTICS, connection=redis_client).count == 1
    work(app)
    with app.app_context():
        row = db.session.get(UserAnalytics, me)
        assert row.stale_since is None
        assert row.data["total_minutes"] == 9.0
    cached = client.get("/api/user/analytics", headers=auth("w@example.com")).json["data"]
    assert cached["computed_at"] == row.data["computed_at"]  # served from the job's cache entry


def test_refresh_is_idempotent(app, client, auth, db_session, make_user, make_package,
                               make_session):
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import refresh_user_analytics
    from sonicus.tasks.queue import enqueue

    me = make_user("i@example.com").id
    pkg = make_package("hum").id
    make_session(me, pkg, _today(), minutes=5)
    with app.app_context():
        for _ in range(3):
            enqueue(refresh_user_analytics, me, queue=QUEUE_ANALYTICS)
    work(app)
    with app.app_context():
        rows = db.session.query(UserAnalytics).all()
        assert len(rows) == 1 and rows[0].data["total_sessions"] == 1


def test_refresh_of_an_erased_user_is_a_no_op(app):
    from sonicus.services.analytics import refresh_user_analytics

    with app.app_context():
        assert refresh_user_analytics(424242) is None


def test_a_job_that_fails_twice_then_succeeds(app, redis_client):
    from sonicus.tasks.queue import enqueue

    key = "test:flaky:attempts"
    with app.app_context():
        job = enqueue(flaky_job, key, queue=QUEUE_ANALYTICS)
    deadline = time.time() + 30
    while time.time() < deadline:
        work(app)
        job.refresh()
        if job.get_status() == JobStatus.FINISHED:
            break
        time.sleep(0.3)
    assert job.get_status() == JobStatus.FINISHED
    assert int(redis_client.get(key)) == 3
    assert job.return_value() == "succeeded on attempt 3"


def test_sweep_re_enqueues_only_refreshes_left_stale(app, client, auth, redis_client, make_user):
    from sqlalchemy import update

    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import STALE_GRACE_SECONDS, mark_stale, sweep_stale_analytics

    lost = make_user("lost@example.com").id
    recent = make_user("recent@example.com").id
    fine = make_user("fine@example.com").id
    with app.app_context():
        mark_stale(lost)
        mark_stale(recent)
        db.session.execute(update(UserAnalytics).where(UserAnalytics.user_id == lost).values(
            stale_since=clock.now() - timedelta(seconds=STALE_GRACE_SECONDS + 5)))
        db.session.commit()
        from sonicus.services.analytics import refresh_user_analytics

        refresh_user_analytics(fine)
        assert sweep_stale_analytics() == 1
        assert sweep_stale_analytics() == 0  # already waiting for a worker: not twice
    queue = Queue(QUEUE_ANALYTICS, connection=redis_client)
    assert queue.count == 1
    work(app)
    with app.app_context():
        assert db.session.get(UserAnalytics, lost).stale_since is None
        assert db.session.get(UserAnalytics, recent).stale_since is not None
        assert sweep_stale_analytics() == 0


def test_a_refresh_taken_off_its_queue_by_a_worker_that_died_is_queued_again_by_the_sweep(
        app, redis_client, make_user):
    """A worker killed (SIGKILL, out of memory) the instant its dequeue took the sweep's
    refresh off the queue, before RQ registered it as started: the job is in no queue and no
    registry but still says ``queued``. The next sweeps queue it again; before, they took it
    for one waiting for a worker and skipped the user for good: the analytics stayed stale."""
    from sqlalchemy import update

    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import STALE_GRACE_SECONDS, mark_stale, sweep_stale_analytics

    stuck = make_user("stuck@example.com").id
    with app.app_context():
        mark_stale(stuck)
        db.session.execute(update(UserAnalytics).where(UserAnalytics.user_id == stuck).values(
            stale_since=clock.now() - timedelta(seconds=STALE_GRACE_SECONDS + 5)))
        db.session.commit()
        assert sweep_stale_analytics() == 1
    queue = Queue(QUEUE_ANALYTICS, connection=redis_client)
    # what the dying worker's dequeue did (a BLPOP over its queues), and nothing after it
    assert redis_client.lpop(queue.key) is not None
    assert Job.fetch(f"analytics-refresh-{stuck}", connection=redis_client).get_status() \
        == JobStatus.QUEUED
    with app.app_context():
        assert sweep_stale_analytics() == 1
    assert queue.count == 1
    work(app)
    with app.app_context():
        assert db.session.get(UserAnalytics, stuck).stale_since is None


def test_schedule_fires_each_job_once_per_slot_with_two_workers(app, redis_client, make_config):
    """Two worker processes' schedulers ticking at the same moment enqueue each job once."""
    from sonicus import create_app
    from sonicus.tasks import schedule

    other = create_app(make_config())
    now = 1_800_000_000.0
    barrier = threading.Barrier(2)
    fired: list[list[str]] = []

    def tick(flask_app):
        with flask_app.app_context():
            barrier.wait()
            fired.append(schedule.tick(now))

    threads = [threading.Thread(target=tick, args=(a,)) for a in (app, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(name for batch in fired for name in batch)
    assert names == sorted(job.name for job in schedule.PERIODIC_JOBS)
    maintenance = Queue(QUEUE_MAINTENANCE, connection=redis_client)
    assert maintenance.count == 8
    assert Queue(QUEUE_ANALYTICS, connection=redis_client).count == 1

    with app.app_context():
        assert schedule.tick(now + 1) == []  # same slots: nothing
        later = schedule.tick(now + 60)  # the next slot of the 30 s and 60 s jobs
    assert sorted(later) == ["close_stale_sessions", "process_due_subscriptions",
                             "process_owed_cancellations", "send_due_reminders",
                             "sweep_stale_analytics"]
    job_ids = set(maintenance.job_ids)
    slot = int(now // 60)
    assert f"periodic-close_stale_sessions-{slot}" in job_ids


def test_every_periodic_job_runs_its_function_on_a_worker(app, redis_client):
    """A tick enqueues every periodic job; a worker runs each one's function (none is skipped
    for want of one) and each returns what that function gives on an empty platform."""
    from sonicus.tasks import schedule

    now = 1_800_000_000.0
    with app.app_context():
        assert sorted(schedule.tick(now)) == sorted(job.name for job in schedule.PERIODIC_JOBS)
    work(app)
    for queue_name in (QUEUE_ANALYTICS, QUEUE_MAINTENANCE):
        assert Queue(queue_name, connection=redis_client).failed_job_registry.count == 0
    results = {}
    for periodic in schedule.PERIODIC_JOBS:
        job_id = schedule.JOB_ID.format(name=periodic.name, slot=int(now // periodic.interval))
        job = Job.fetch(job_id, connection=redis_client)
        assert job.get_status() == JobStatus.FINISHED, periodic.name
        results[periodic.name] = job.return_value()
    due = results["process_due_subscriptions"]
    assert (due["processed"], due["outcomes"]) == (0, {})
    assert results["close_stale_sessions"] == 0
    assert results["sweep_stale_analytics"] == 0
    assert results["sweep_expired_idempotency_keys"] == 0
    assert results["sweep_unclaimed_held_reversals"] == 0
    assert results["precompute_year_recaps"] == 0  # 15 January: not the week of year recaps
    assert results["process_owed_cancellations"]["attempted"] == 0
    computed_at = results["refresh_platform_stats"]["computed_at"]
    assert clock.now() - timedelta(minutes=1) < computed_at <= clock.now()


def test_a_completion_during_a_refresh_leaves_the_row_stale(app, client, auth, db_session,
                                                            monkeypatch, make_user, make_package,
                                                            make_session):
    """A session that completes while a refresh is computing is never silently dropped:
    the refresh stores what it saw, and the row stays stale for the next refresh."""
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services import analytics
    from sonicus.services.analytics import mark_stale, refresh_user_analytics

    me = make_user("race@example.com").id
    pkg = make_package("tide").id
    make_session(me, pkg, _today(), minutes=3)
    with app.app_context():
        mark_stale(me)
        db.session.commit()

    compute = analytics.compute_user_analytics
    completion_done = threading.Event()

    def complete_a_session():  # another request, its own app context and transaction
        with app.app_context():
            make_session(me, pkg, _today(), minutes=4, status="open", completed=False)
            from sonicus.models import ListeningSession

            row = db.session.query(ListeningSession).filter_by(status="open").one()
            row.status, row.completed = "ended", True
            mark_stale(me)
            db.session.commit()
        completion_done.set()

    completer = threading.Thread(target=complete_a_session)

    def compute_while_a_session_completes(user, now=None):
        data = compute(user, now)
        completer.start()
        # The completion's mark waits for the refresh's row lock; it cannot slip in.
        assert not completion_done.wait(0.5)
        return data

    monkeypatch.setattr(analytics, "compute_user_analytics", compute_while_a_session_completes)
    with app.app_context():
        stored = refresh_user_analytics(me)
    completer.join(10)
    assert completion_done.is_set()
    assert stored["total_minutes"] == 3.0
    with app.app_context():
        row = db.session.get(UserAnalytics, me)
        assert row.stale_since is not None  # still owed a refresh (the sweep guarantees it)
    monkeypatch.undo()
    with app.app_context():
        assert refresh_user_analytics(me)["total_minutes"] == 7.0
        assert db.session.get(UserAnalytics, me).stale_since is None


def test_concurrent_refreshes_of_one_user_store_the_newest_figures(
        app, client, auth, db_session, make_user, make_package, make_session):
    from sonicus.extensions import db
    from sonicus.models import UserAnalytics
    from sonicus.services.analytics import refresh_user_analytics

    me = make_user("many@example.com").id
    pkg = make_package("tide").id
    errors = []

    def refresh():
        try:
            with app.app_context():
                refresh_user_analytics(me)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    for n in range(5):
        make_session(me, pkg, _today(), minutes=1)
        threads = [threading.Thread(target=refresh) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert not errors
        with app.app_context():
            assert db.session.get(UserAnalytics, me).data["total_sessions"] == n + 1


def test_every_periodic_job_is_enqueued_by_reference():
    """The schedule lists the services' own functions; a worker imports each by its path."""
    from rq.utils import import_attribute

    from sonicus.tasks.schedule import PERIODIC_JOBS

    assert {job.name for job in PERIODIC_JOBS} == {
        "process_due_subscriptions", "process_owed_cancellations", "close_stale_sessions",
        "refresh_platform_stats", "sweep_stale_analytics", "sweep_expired_idempotency_keys",
        "send_due_reminders", "precompute_year_recaps", "rebuild_recommendation_model",
        "sweep_unclaimed_held_reversals"}
    for job in PERIODIC_JOBS:
        assert job.func.__module__.startswith("sonicus.services.")
        assert import_attribute(f"{job.func.__module__}.{job.func.__qualname__}") is job.func
