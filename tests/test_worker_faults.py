"""A worker process killed in the middle of a job: nothing half-written, the job retried."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from rq.job import Job

from sonicus.tasks.queue import QUEUE_DEFAULT, enqueue

ROOT = Path(__file__).resolve().parent.parent


def test_killed_work_horse_leaves_nothing_half_written_and_is_retried(
        app, redis_client, db_session, test_database_url, test_redis_url, wait_for):
    from sonicus.models import AuditLog

    with app.app_context():
        # by import path: the worker process loads the job from tests/fault_jobs.py
        job = enqueue("tests.fault_jobs.slow_audited_write", "crash-1", 30,
                      queue=QUEUE_DEFAULT)
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": test_database_url,
           "REDIS_URL": test_redis_url, "DEV_TOKEN_ISSUER": "1", "LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "worker.py", "--no-schedule"], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()

    assert int(redis_client.get("fault-test:crash-1:attempts")) == 2
    rows = db_session.query(AuditLog).filter_by(action="fault.test").all()
    assert [row.after for row in rows] == [{"attempt": 2}]  # the killed attempt left nothing
