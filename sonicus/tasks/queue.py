"""Queue names and the one enqueue helper.

With REDIS_URL the job goes to RQ (explicit connection, retries with backoff, timeouts set
on purpose). Without it (the embedded default) the job runs inline, right now, in this
app context. Jobs take ids and reload what they need, so both paths behave the same.

Enqueues share the process's one Redis back-off (``extensions.RedisGate``): while Redis is
down or hung an enqueue fails at once instead of waiting for a timeout.
"""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from ..extensions import get_redis, guarded_redis_call, redis_gate
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
    gate = redis_gate()
    try:
        if not gate.allows():
            raise RedisConnectionError("Redis is unavailable (backing off)")
        # what was skipped while backing off goes first (``extensions``: owed commands)
        if gate.owes and not gate.pay_owed(q.connection):
            raise RedisConnectionError("Redis is unavailable (backing off)")
        try:
            job = q.enqueue(func, args=args, job_id=job_id, retry=retry, job_timeout=timeout,
                            result_ttl=RESULT_TTL_SECONDS, failure_ttl=FAILURE_TTL_SECONDS,
                            meta=job_meta())  # the request id, for the job's log lines
        except Exception as exc:
            gate.failed(exc, "enqueue")
            raise
        gate.succeeded()
        record_enqueued(func, queue)
        return job
    except Exception as exc:
        if not best_effort:
            raise
        log.warning("enqueue of %s failed: %s", getattr(func, "__name__", func),
                    type(exc).__name__)
        return None


def job_is_pending(job_id: str) -> bool:
    """True when a job with this id waits for a worker (False without Redis, or unknown).

    A job that says ``queued`` is waiting only if it is in its queue (or in RQ's list of jobs
    being taken): a worker killed the instant its dequeue had taken it off the queue left it
    in no queue and no registry, and a caller that took it for waiting (the analytics sweep)
    never queued it again. Likewise a ``scheduled`` one only in its queue's schedule."""
    def pending(client):
        try:
            job = Job.fetch(job_id, connection=client)
        except NoSuchJobError:  # never enqueued, or expired
            return False
        status = job.get_status(refresh=False)
        if status not in _PENDING:
            return False
        queue = Queue(job.origin, connection=client)
        if status == "queued":
            pipe = client.pipeline(transaction=False)
            pipe.lpos(queue.key, job_id)
            pipe.lpos(queue.intermediate_queue_key, job_id)
            return any(position is not None for position in pipe.execute())
        if status == "scheduled":
            return client.zscore(queue.scheduled_job_registry.key, job_id) is not None
        return True

    return bool(guarded_redis_call("job lookup", pending, False))
