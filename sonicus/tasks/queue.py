"""Queue names and the one enqueue helper.

With REDIS_URL the job goes to RQ (explicit connection, retries with backoff, timeouts set
on purpose). Without it (the embedded default) the job runs inline, right now, in this
app context. Jobs take ids and reload what they need, so both paths behave the same.
"""

from __future__ import annotations

import logging

from rq import Queue, Retry
from rq.job import Job

from ..extensions import get_redis
from ..logs import job_meta
from ..metrics import record_enqueued

log = logging.getLogger(__name__)

QUEUE_ANALYTICS = "sonicus-analytics"
QUEUE_DEFAULT = "sonicus-default"
QUEUE_MAINTENANCE = "sonicus-maintenance"
QUEUES = (QUEUE_ANALYTICS, QUEUE_DEFAULT, QUEUE_MAINTENANCE)

_PENDING = ("queued", "scheduled", "deferred")
DEFAULT_RETRY_INTERVALS = (1, 4, 16)  # seconds: exponential backoff
JOB_TIMEOUT_SECONDS = 120
RESULT_TTL_SECONDS = 300
FAILURE_TTL_SECONDS = 7 * 24 * 3600


def get_queue(name: str = QUEUE_DEFAULT) -> Queue | None:
    client = get_redis()
    return None if client is None else Queue(name, connection=client)


def enqueue(func, *args, queue: str = QUEUE_DEFAULT, job_id: str | None = None,
            retries: int = 3, timeout: int = JOB_TIMEOUT_SECONDS, best_effort: bool = False):
    """Run ``func(*args)`` in the background (RQ) or inline (no Redis).

    ``best_effort=True`` logs and returns None when Redis is unreachable instead of raising:
    for callers whose work is already committed and recorded for a later retry.
    """
    q = get_queue(queue)
    if q is None:
        return func(*args)
    retry = Retry(max=retries, interval=list(DEFAULT_RETRY_INTERVALS[:retries]) or [1]) \
        if retries else None
    try:
        job = q.enqueue(func, args=args, job_id=job_id, retry=retry, job_timeout=timeout,
                        result_ttl=RESULT_TTL_SECONDS, failure_ttl=FAILURE_TTL_SECONDS,
                        meta=job_meta())  # the request id, for the job's log lines
        record_enqueued(func, queue)
        return job
    except Exception as exc:
        if not best_effort:
            raise
        log.warning("enqueue of %s failed: %s", getattr(func, "__name__", func),
                    type(exc).__name__)
        return None


def job_is_pending(job_id: str) -> bool:
    """True when a job with this id waits for a worker (False without Redis, or unknown)."""
    client = get_redis()
    if client is None:
        return False
    try:
        return Job.fetch(job_id, connection=client).get_status(refresh=False) in _PENDING
    except Exception:  # no such job (or expired), or Redis unreachable: not pending
        return False
