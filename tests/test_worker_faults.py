"""Workers and their faults: a work horse or a whole worker killed in the middle of a job
(nothing half-written, the job runs again elsewhere), Redis going away under a worker (the
worker waits it out and carries on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from processes import stop_group
from rq import Queue, Retry, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry

from sonicus.tasks.queue import QUEUE_DEFAULT, enqueue

ROOT = Path(__file__).resolve().parent.parent
# Fast heartbeats so that an abandoned job is noticed in seconds, not the default 40.
FAST = {"WORKER_HEARTBEAT_SECONDS": "1", "WORKER_ABANDONED_JOB_SECONDS": "3",
        "WORKER_RECONNECT_MAX_SECONDS": "1"}


def _worker_process(database_url, redis_url, *args, log=None, **settings) -> subprocess.Popen:
    """``python worker.py`` in a process group of its own (to kill it with its children);
    its output goes to ``log`` (a path) when given, so that a failing test can show it."""
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "DEV_TOKEN_ISSUER": "1", "LOG_LEVEL": "WARNING",
           **settings}
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115  (the child keeps it)
    try:
        return subprocess.Popen([sys.executable, "worker.py", "--no-schedule", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=out,
                                start_new_session=True)
    finally:
        if log:
            out.close()


def _stop(worker: subprocess.Popen) -> int | None:
    return stop_group(worker)


def _finished(job_id, connection):
    def check():
        return Job.fetch(job_id, connection=connection).get_status(refresh=True) == "finished"
    return check


def test_killed_work_horse_leaves_nothing_half_written_and_is_retried(
        app, redis_client, db_session, test_database_url, test_redis_url, wait_for):
    from sonicus.models import AuditLog

    with app.app_context():
        # by import path: the worker process loads the job from tests/fault_jobs.py
        job = enqueue("tests.fault_jobs.slow_audited_write", "crash-1", 30,
                      queue=QUEUE_DEFAULT)
    worker = _worker_process(test_database_url, test_redis_url)
    try:
        # announced after the row is flushed, inside the transaction the job holds open
        pid = int(wait_for(lambda: redis_client.get("fault-test:crash-1:pid"), 30))
        assert pid != worker.pid  # the work horse, forked for this job
        os.kill(pid, signal.SIGKILL)

        # Retried by the same worker (RQ's retry, through its scheduler), and finished.
        def finished():
            status = Job.fetch(job.id, connection=redis_client).get_status(refresh=True)
            return status == "finished"

        wait_for(finished, 45)
    finally:
        _stop(worker)

    assert int(redis_client.get("fault-test:crash-1:attempts")) == 2
    rows = db_session.query(AuditLog).filter_by(action="fault.test").all()
    assert [row.after for row in rows] == [{"attempt": 2}]  # the killed attempt left nothing


@pytest.mark.parametrize("simple", [False, True], ids=["forking", "simple"])
def test_a_killed_workers_job_is_requeued(app, redis_client, db_session, test_database_url,
                                         test_redis_url, wait_for, simple, tmp_path):
    """The whole worker dies (SIGKILL to its processes: worker, work horse, scheduler, as when
    its container or machine is lost): another worker runs the job it left started, within
    seconds here (the heartbeat and the abandonment window are configurable; by default
    within 40 s)."""
    from sonicus.models import AuditLog

    marker = f"killed-{'simple' if simple else 'forking'}"
    with app.app_context():
        job = enqueue("tests.fault_jobs.slow_audited_write", marker, 60, queue=QUEUE_DEFAULT)
    log = tmp_path / "first-worker.log"
    first = _worker_process(test_database_url, test_redis_url,
                            *(["--simple"] if simple else []), log=log, **FAST)
    second = None
    try:
        try:
            running = int(wait_for(lambda: redis_client.get(f"fault-test:{marker}:pid"), 60))
        except AssertionError as exc:  # say what the worker said
            raise AssertionError(f"{exc}\nworker output:\n{log.read_text()[-4000:]}") from exc
        os.killpg(first.pid, signal.SIGKILL)
        if running != first.pid:  # the work horse, in a session of its own
            os.kill(running, signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        assert Job.fetch(job.id, connection=redis_client).get_status() == "started"

        second = _worker_process(test_database_url, test_redis_url, **FAST)
        wait_for(_finished(job.id, redis_client), 60)
        assert time.monotonic() - killed_at < 60
    finally:
        for worker in (first, second):
            if worker is not None:
                _stop(worker)

    assert int(redis_client.get(f"fault-test:{marker}:attempts")) == 2
    rows = db_session.query(AuditLog).filter_by(action="fault.test").all()
    assert [row.after for row in rows] == [{"attempt": 2}]  # the killed attempt left nothing
    assert Job.fetch(job.id, connection=redis_client).retries_left == 3  # no retry used up


def test_the_worker_survives_a_redis_outage(own_redis, test_database_url, wait_for, tmp_path):
    """Redis goes away for a few seconds, with a job running and then idle: the same worker
    process carries on once it is back and runs a job enqueued then."""
    log = tmp_path / "worker.log"
    worker = _worker_process(test_database_url, own_redis.url, log=log, **FAST)
    try:
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: Worker.all(connection=client), 30)
        Queue(QUEUE_DEFAULT, connection=client).enqueue(
            "tests.fault_jobs.announce_and_wait", "during", 2)
        wait_for(lambda: client.get("fault-test:during:pid"), 30)

        own_redis.stop()  # the job finishes while Redis is away; the worker idles without it
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            assert worker.poll() is None, "the worker process ended with Redis"
            time.sleep(0.2)
        own_redis.start()  # the same port, empty

        client = redis.Redis.from_url(own_redis.url)
        job = Queue(QUEUE_DEFAULT, connection=client).enqueue(
            "tests.fault_jobs.announce_and_wait", "after", 0)
        wait_for(_finished(job.id, client), 60)
        assert worker.poll() is None
        assert int(client.get("fault-test:after:pid")) != 0
    finally:
        code = _stop(worker)  # and a shutdown signal still ends it cleanly
        assert code == 0, f"worker output:\n{log.read_text()[-4000:]}"


def test_a_worker_stopped_while_it_sweeps_abandoned_entries_ends_promptly(
        own_redis, test_database_url, wait_for, tmp_path):
    """SIGTERM while a worker sweeps expired started entries whose jobs are gone (a long
    sweep, so that the signal lands in it): the worker ends cleanly within 10 s (Docker's
    default grace). Three workers in turn."""
    client = redis.Redis.from_url(own_redis.url)
    registry = StartedJobRegistry(QUEUE_DEFAULT, connection=client)
    for attempt in range(3):
        client.zadd(registry.key, {f"gone-{attempt}-{n}:run": 1 for n in range(20000)})
        log = tmp_path / f"worker-{attempt}.log"
        worker = _worker_process(test_database_url, own_redis.url, log=log, **FAST)
        try:
            wait_for(lambda: client.zcard(registry.key) < 19000, 30)  # sweeping
        finally:
            signalled = time.monotonic()
            code = stop_group(worker, timeout=10)
        took = time.monotonic() - signalled
        assert code == 0 and took < 10, (
            f"exit code {code} after {took:.1f} s; worker output:\n{log.read_text()[-4000:]}")
        assert client.zcard(registry.key) > 0  # stopped in the middle of it
        client.delete(registry.key)


def test_a_shutdown_signal_just_after_a_dequeue_took_a_job_loses_no_job(app, redis_client):
    """SIGTERM the instant the worker's dequeue has taken a job off its queue, before the job
    is registered as started (a deploy stopping a busy worker can land there): the job runs,
    then the worker ends. Raised into the worker at that point, RQ's StopRequested left the job
    in no queue and no registry."""
    from sonicus.tasks.worker import make_worker

    class SignalledAfterTheDequeue(Queue):
        @classmethod
        def dequeue_any(cls, *args, **kwargs):
            result = super().dequeue_any(*args, **kwargs)
            if result is not None:
                os.kill(os.getpid(), signal.SIGTERM)  # handled before this returns
            return result

    job = Queue(QUEUE_DEFAULT, connection=redis_client).enqueue(
        "tests.fault_jobs.announce_and_wait", "taken", 0)
    worker = make_worker(app, simple=True)
    worker.queue_class = SignalledAfterTheDequeue
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    try:
        worker.work(with_scheduler=False)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert job.get_status(refresh=True) == "finished"
    assert redis_client.get("fault-test:taken:pid") is not None
    assert time.monotonic() - started < 10  # and the worker ended on the signal


def test_a_worker_is_seen_alive_again_after_redis_restarts_empty(
        own_redis, test_database_url, wait_for, tmp_path):
    """Redis restarted without persistence forgets the worker's registration: the worker
    registers again by itself, so the health check (a liveness probe: failing, it restarts
    every worker pod) and the admins' jobs page see it within seconds, and a failed job is
    still retried by its scheduler."""
    from sonicus.healthcheck import worker_is_healthy

    log = tmp_path / "worker.log"
    worker = _worker_process(test_database_url, own_redis.url, log=log, **FAST)
    try:
        client = redis.Redis.from_url(own_redis.url)
        wait_for(lambda: worker_is_healthy(own_redis.url), 30)
        # Redis loses everything in an instant (restarted empty behind a proxy that keeps
        # the clients' connections, a failover to an empty replica, a flush): whether the
        # worker's own connections drop or not, it must be listed again
        client.flushall()
        try:
            wait_for(lambda: worker_is_healthy(own_redis.url), 15)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nworker output:\n{log.read_text()[-4000:]}") from exc

        job = Queue(QUEUE_DEFAULT, connection=client).enqueue(
            "tests.fault_jobs.fails_once", "after-restart", retry=Retry(max=2, interval=1))
        wait_for(_finished(job.id, client), 30)
        assert int(client.get("fault-test:after-restart:attempts")) == 2
    finally:
        code = _stop(worker)
        assert code == 0, f"worker output:\n{log.read_text()[-4000:]}"


def _terminate_backends(database_url) -> int:
    """pg_terminate_backend on every other connection to this test's database (an operator's
    or a failover's kill; the server keeps running)."""
    import psycopg2

    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_job_after_the_database_dropped_the_workers_connections_runs_at_once(
        redis_client, db_session, test_database_url, test_redis_url, wait_for, tmp_path):
    """PostgreSQL drops the worker's idle connections (a restart, a failover, an operator's
    pg_terminate_backend): the next job still runs on its first attempt, on a fresh
    connection. A periodic job has no retry (its next period is minutes to an hour away), so a
    job failing on a dead pooled connection was lost for that period."""
    from sonicus.models import AuditLog

    log = tmp_path / "worker.log"
    worker = _worker_process(test_database_url, test_redis_url, "--simple", log=log, **FAST)
    try:
        queue = Queue(QUEUE_DEFAULT, connection=redis_client)
        first = queue.enqueue("tests.fault_jobs.slow_audited_write", "before", 0)
        wait_for(_finished(first.id, redis_client), 30)
        assert _terminate_backends(test_database_url) >= 1

        job = queue.enqueue("tests.fault_jobs.slow_audited_write", "after", 0)  # no retry
        wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), 30)
        assert job.get_status() == "finished", f"worker output:\n{log.read_text()[-4000:]}"
    finally:
        _stop(worker)
    from sonicus.extensions import db

    db_session.remove()
    db.engine.dispose()  # this test's own connections were dropped too
    assert db_session.query(AuditLog).filter_by(action="fault.test").count() == 2
