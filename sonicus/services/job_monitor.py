"""What the background jobs are doing: queue depth, failed jobs, workers seen (RQ registries).

Every RQ call gets the connection explicitly. Without REDIS_URL jobs run inline in the
process that asks for them: there is nothing queued, nothing failed in a queue, no worker.
"""

from __future__ import annotations

from datetime import UTC, datetime

from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result

from ..api_errors import ApiError
from ..extensions import get_redis
from ..tasks.queue import QUEUES

TRACEBACK_CHARS = 4000


def _timestamp(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _failure_text(job: Job) -> str | None:
    result = job.latest_result()
    if result is not None and result.type == Result.Type.FAILED:
        return result.exc_string
    return None


def _failed_job(job: Job, queue_name: str) -> dict:
    text = _failure_text(job)
    try:
        func_name, args = job.func_name, list(job.args or [])
    except Exception:  # an undecodable payload: still list the job
        func_name, args = None, []
    return {
        "id": job.id, "queue": queue_name, "func_name": func_name,
        "args": [a if isinstance(a, (int, float, str, bool, type(None))) else repr(a)
                 for a in args],
        "enqueued_at": job.enqueued_at, "ended_at": job.ended_at,
        "error": _last_line(text),
        "traceback": text[-TRACEBACK_CHARS:] if text else None,
    }


def _worker(worker: Worker) -> dict:
    return {
        "name": worker.name, "state": worker.get_state(),
        "queues": worker.queue_names(), "current_job_id": worker.get_current_job_id(),
        "birth_date": worker.birth_date, "last_heartbeat": worker.last_heartbeat,
        "successful_job_count": worker.successful_job_count,
        "failed_job_count": worker.failed_job_count,
    }


def jobs_overview(failed_limit: int = 50) -> dict:
    client = get_redis()
    if client is None:
        return {"backend": "inline",
                "queues": [{"name": name, "queued": 0, "started": 0, "scheduled": 0,
                            "deferred": 0, "failed": 0} for name in QUEUES],
                "failed_jobs": [], "workers": []}
    try:
        queues, failed_jobs = [], []
        for name in QUEUES:
            queue = Queue(name, connection=client)
            failed = FailedJobRegistry(queue=queue)
            queues.append({
                "name": name, "queued": queue.count,
                "started": StartedJobRegistry(queue=queue).count,
                "scheduled": ScheduledJobRegistry(queue=queue).count,
                "deferred": DeferredJobRegistry(queue=queue).count,
                "failed": failed.count,
            })
            ids = failed.get_job_ids(0, failed_limit - 1, desc=True)
            for job in Job.fetch_many(ids, connection=client):
                if job is not None:
                    failed_jobs.append(_failed_job(job, name))
        workers = [_worker(w) for w in Worker.all(connection=client)]
    except RedisError as exc:
        raise ApiError(503, "service_unavailable",
                       "The job queue (Redis) is unreachable.") from exc
    failed_jobs.sort(key=lambda j: _timestamp(j["ended_at"] or j["enqueued_at"]), reverse=True)
    workers.sort(key=lambda w: w["name"])
    return {"backend": "redis", "queues": queues, "failed_jobs": failed_jobs, "workers": workers}
