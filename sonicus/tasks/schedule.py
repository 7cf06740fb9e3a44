"""The periodic jobs, fired once per period slot however many workers run.

Each worker process runs a small scheduler thread (``run_scheduler``) that, every few
seconds, tries ``SET sonicus:schedule:<name>:<slot> NX EX`` for each periodic job, where
``slot = floor(unix time / interval)``. Only the process that wins the key enqueues the job's
function, by reference, with the deterministic job id ``periodic-<name>-<slot>``.

The schedule is a list of the services' own functions: a job that does not exist cannot be
scheduled (the import fails at start, not at run time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..extensions import get_redis, pay_owed_redis_calls
from ..services.analytics import sweep_stale_analytics
from ..services.erasure import process_owed_cancellations
from ..services.idempotency import sweep_expired_idempotency_keys
from ..services.listening import close_stale_sessions
from ..services.recaps import precompute_year_recaps
from ..services.recommendation_model import rebuild_recommendation_model
from ..services.reminders import send_due_reminders
from ..services.stats import refresh_platform_stats
from ..services.subscriptions import process_due_subscriptions
from ..services.subscriptions.held_sweep import sweep_unclaimed_held_reversals
from .queue import QUEUE_ANALYTICS, QUEUE_DEFAULT, QUEUE_MAINTENANCE, enqueue

log = logging.getLogger(__name__)

LOCK_KEY = "sonicus:schedule:{name}:{slot}"
JOB_ID = "periodic-{name}-{slot}"
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Periodic:
    func: Callable      # a service function taking no arguments
    interval: int       # seconds
    queue: str

    @property
    def name(self) -> str:
        return self.func.__name__


PERIODIC_JOBS = (
    Periodic(process_due_subscriptions, 60, QUEUE_MAINTENANCE),  # trials and periods
    Periodic(process_owed_cancellations, 60, QUEUE_MAINTENANCE),  # erased accounts' billing
    Periodic(close_stale_sessions, 60, QUEUE_MAINTENANCE),
    Periodic(refresh_platform_stats, 300, QUEUE_MAINTENANCE),
    Periodic(sweep_stale_analytics, 30, QUEUE_ANALYTICS),
    Periodic(sweep_expired_idempotency_keys, 3600, QUEUE_MAINTENANCE),  # keys past 24 h
    Periodic(sweep_unclaimed_held_reversals, 3600, QUEUE_MAINTENANCE),  # held refunds, 90 d
    Periodic(send_due_reminders, 60, QUEUE_DEFAULT),  # Web Push reminders, due users in SQL
    Periodic(precompute_year_recaps, 3600, QUEUE_MAINTENANCE),  # January 1..7 only
    Periodic(rebuild_recommendation_model, 3600, QUEUE_MAINTENANCE),  # mood-outcome model
)


def tick(now: float | None = None, jobs=PERIODIC_JOBS) -> list[str]:
    """Enqueue every periodic job whose current slot nobody has claimed yet (app context)."""
    client = get_redis()
    if client is None:
        raise RuntimeError("REDIS_URL is not set: the schedule needs Redis.")
    now = time.time() if now is None else now
    fired = []
    for job in jobs:
        slot = int(now // job.interval)
        key = LOCK_KEY.format(name=job.name, slot=slot)
        if not client.set(key, "1", nx=True, ex=job.interval * 2):
            continue
        try:
            enqueue(job.func, queue=job.queue, job_id=JOB_ID.format(name=job.name, slot=slot),
                    retries=0, timeout=max(60, job.interval * 2))
        except Exception:
            client.delete(key)  # let the next tick (of any worker) try this slot again
            raise
        fired.append(job.name)
    return fired


def run_scheduler(app, stop: threading.Event, poll: float = POLL_SECONDS) -> None:
    """The scheduler loop of one worker process; survives Redis outages."""
    while not stop.is_set():
        try:
            with app.app_context():
                fired = tick()
            if fired:
                log.info("periodic jobs enqueued: %s", ", ".join(fired))
        except Exception as exc:
            log.warning("periodic schedule tick failed: %s", type(exc).__name__)
        # what a job of this process could not send while it skipped Redis (cache deletes,
        # caller invalidations): sent once the back-off lets a call through
        pay_owed_redis_calls(app)
        stop.wait(poll)


def start_scheduler_thread(app, poll: float = POLL_SECONDS):
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(app, stop, poll),
                              name="sonicus-schedule", daemon=True)
    thread.start()
    return thread, stop
