"""The periodic jobs, fired once per period slot however many workers run.

Each worker process runs a small scheduler thread (``run_scheduler``) that, every few
seconds, tries ``SET sonicus:schedule:<name>:<slot> NX EX`` for each periodic job, where
``slot = floor(unix time / interval)``. Only the process that wins the key enqueues, with
the deterministic job id ``periodic-<name>-<slot>``. The job resolves
``sonicus.tasks.jobs.<name>`` when it runs: a job whose function does not exist (yet) is
skipped with a log line, never an error.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass

from ..extensions import get_redis
from .queue import QUEUE_ANALYTICS, QUEUE_MAINTENANCE, enqueue

log = logging.getLogger(__name__)

JOBS_MODULE = "sonicus.tasks.jobs"
LOCK_KEY = "sonicus:schedule:{name}:{slot}"
JOB_ID = "periodic-{name}-{slot}"
POLL_SECONDS = 5.0


@dataclass(frozen=True)
class Periodic:
    name: str          # a function of sonicus.tasks.jobs
    interval: int      # seconds
    queue: str


PERIODIC_JOBS = (
    Periodic("process_due_subscriptions", 60, QUEUE_MAINTENANCE),  # trials and periods
    Periodic("close_stale_sessions", 60, QUEUE_MAINTENANCE),
    Periodic("refresh_platform_stats", 300, QUEUE_MAINTENANCE),
    Periodic("sweep_stale_analytics", 30, QUEUE_ANALYTICS),
)
PERIODIC_NAMES = frozenset(job.name for job in PERIODIC_JOBS)


def run_periodic(name: str):
    """The job body: call ``sonicus.tasks.jobs.<name>`` if it exists, else log and skip."""
    if name not in PERIODIC_NAMES:
        raise ValueError(f"not a periodic job: {name}")
    func = getattr(importlib.import_module(JOBS_MODULE), name, None)
    if not callable(func):
        log.info("periodic job %s skipped: %s.%s is not available", name, JOBS_MODULE, name)
        return "skipped"
    return func()


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
            enqueue(run_periodic, job.name, queue=job.queue,
                    job_id=JOB_ID.format(name=job.name, slot=slot), retries=0,
                    timeout=max(60, job.interval * 2))
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
        stop.wait(poll)


def start_scheduler_thread(app, poll: float = POLL_SECONDS):
    stop = threading.Event()
    thread = threading.Thread(target=run_scheduler, args=(app, stop, poll),
                              name="sonicus-schedule", daemon=True)
    thread.start()
    return thread, stop
