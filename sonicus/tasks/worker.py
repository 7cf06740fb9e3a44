"""RQ workers that run every job inside the app's context, and outlive Redis outages.

- ``run_worker`` keeps a worker process serving across Redis outages. RQ's work loop ends
  (or raises) when Redis goes away under it; the process then waits, with capped exponential
  backoff (``WORKER_RECONNECT_MAX_SECONDS``), and starts a fresh RQ worker. Only a shutdown
  signal (SIGTERM, SIGINT) ends the process.
- A job left ``started`` by a worker that died (SIGKILL, out of memory, a lost machine) is
  requeued by the others: each running job's entry in RQ's StartedJobRegistry lives
  ``WORKER_ABANDONED_JOB_SECONDS`` and is renewed every ``WORKER_HEARTBEAT_SECONDS`` while
  the job runs (by the work horse's monitor, or by a heartbeat thread in a simple worker).
  Every worker sweeps the registries every ``WORKER_HEARTBEAT_SECONDS``
  (``requeue_abandoned_jobs``): an expired entry is claimed by removing it (one worker
  wins) and its job goes back to the front of its queue at once, without using up a retry
  (a job that takes its worker down ``ABANDONED_REQUEUES`` times is left to RQ's cleanup,
  which fails it). A dead worker's job runs again within about abandoned + heartbeat seconds
  (40 by default), even when the dead worker's RQ scheduler still holds its lock.
- The worker talks to Redis on a connection of its own (RQ stretches its socket timeout to
  cover a blocking dequeue); jobs keep the app's client with its short timeouts and back-off.
- A shutdown signal ends the process within seconds and loses no job. A running job ends
  first (RQ's warm shutdown). An idle worker is not interrupted: RQ raises ``StopRequested``
  from the signal handler into whatever runs at that moment, which lost a job the dequeue had
  just taken (in no queue and no registry), and an ``except Exception`` on the way swallowed
  the request (the worker served on). The request is a flag: the dequeue waits at most
  ``STOP_CHECK_SECONDS`` at a time and the registry sweep stops between two entries. A
  stopping worker does not start its RQ scheduler again (RQ's maintenance restarted it, then
  signalled the new process before it had its own handlers and waited for it without limit);
  the scheduler is signalled until it ends, killed after ``SCHEDULER_STOP_SECONDS``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import redis
from rq import SimpleWorker, Worker, worker_registration
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.utils import now as rq_now
from rq.worker import WorkerStatus

from ..extensions import db, pay_owed_redis_calls
from ..metrics import JobMetricsMixin
from .queue import QUEUES
from .schedule import start_scheduler_thread

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10
ABANDONED_JOB_SECONDS = 30
RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0
STEADY_SECONDS = 60  # a worker that served this long starts the backoff afresh when it ends
ABANDONED_REQUEUES = 3
SCHEDULER_STOP_SECONDS = 10.0  # past this, a scheduler that did not stop is killed
STOP_CHECK_SECONDS = 1  # an idle worker looks for a shutdown request this often
_DONE = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED)


def requeue_abandoned_jobs(queue, stopping=lambda: False) -> list[str]:
    """Jobs of ``queue`` whose worker stopped renewing their started entry: back to the front
    of the queue; the ids requeued. Safe with any number of workers sweeping at once. Ends
    early once ``stopping()`` (the rest is left to the next sweep, by any worker)."""
    connection = queue.connection
    registry = StartedJobRegistry(queue.name, connection=connection)
    requeued = []
    for entry in connection.zrangebyscore(registry.key, 0, time.time()):
        if stopping():
            break
        if not connection.zrem(registry.key, entry):
            continue  # another worker claimed it
        try:
            job = Job.fetch(registry.parse_job_id(entry), connection=connection)
        except NoSuchJobError:
            continue
        except redis.exceptions.RedisError:
            raise
        except Exception as exc:  # a job that cannot be read back: never requeued
            log.error("abandoned job %r could not be read: %s", entry, type(exc).__name__)
            continue
        if job.get_status() in _DONE:
            continue
        abandoned = int(job.meta.get("sonicus_abandoned", 0)) + 1
        if abandoned > ABANDONED_REQUEUES:
            connection.zadd(registry.key, {entry: 0})  # RQ's cleanup fails it
            continue
        job.meta["sonicus_abandoned"] = abandoned
        job.save_meta()
        queue.enqueue_job(job, at_front=True)
        requeued.append(job.id)
        log.warning("job %s was left started by a worker that stopped; requeued", job.id)
    return requeued


class _AppWorkerMixin:
    flask_app = None
    abandoned_after = ABANDONED_JOB_SECONDS
    stop_event: threading.Event | None = None  # shared by the workers of one process

    def perform_job(self, job, queue):
        with self.flask_app.app_context():
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()

    def get_heartbeat_ttl(self, job) -> int:
        """How long a running job's entry in the StartedJobRegistry lives unrenewed."""
        return self.abandoned_after

    def clean_registries(self):
        for queue in self.queues:
            requeue_abandoned_jobs(queue, stopping=lambda: self._stop_requested)
        if not self._stop_requested:
            super().clean_registries()

    @property
    def dequeue_timeout(self) -> int:
        # an idle worker wakes up for its heartbeat and the registry cleanup
        return max(1, min(self.worker_ttl - 15, int(self.maintenance_interval)))

    def request_stop(self, signum, frame):
        """Warm shutdown. A running job ends first (RQ's own). An idle worker is not
        interrupted: RQ raises ``StopRequested`` into whatever it runs at that moment, and
        raised just after a dequeue took a job off its queue (and before the job is
        registered as started) it lost that job, in no queue and no registry. The request is
        a flag instead: the dequeue waits at most ``STOP_CHECK_SECONDS`` at a time, and a job
        it took runs before the worker ends."""
        if self._forked_child():
            return
        if self.stop_event is not None:
            self.stop_event.set()
        self._stop_requested = True
        if self.get_state() == WorkerStatus.BUSY:
            return super().request_stop(signum, frame)
        self._shutdown_requested_date = rq_now()
        signal.signal(signal.SIGINT, self.request_force_stop)  # a second signal: cold
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self.handle_warm_shutdown_request()
        if self.scheduler:
            self.stop_scheduler()
        return None

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """RQ's blocking dequeue, in waits of at most ``STOP_CHECK_SECONDS``, so that a
        shutdown request (a flag, see ``request_stop``) ends an idle worker within that. A
        burst (no timeout: nothing is waited for) is RQ's own."""
        if timeout is None or max_idle_time is not None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while True:
            wait = min(timeout, STOP_CHECK_SECONDS)
            result = super().dequeue_job_and_maintain_ttl(wait, max_idle_time=wait)
            if result is not None or self._stop_requested:
                return result

    def request_force_stop(self, signum, frame):
        if self._forked_child():
            return
        return super().request_force_stop(signum, frame)

    def _forked_child(self) -> bool:
        """True in a process forked from the worker (RQ's scheduler, a work horse) that still
        has the worker's signal handlers: a signal then is for that process, not the worker.
        A scheduler stops as it would with its own handler (they come a moment later)."""
        if os.getpid() == self.pid:
            return False
        if self.scheduler is not None:
            self.scheduler.request_stop()
        return True

    def run_maintenance_tasks(self):
        # RQ's maintenance starts the scheduler again when its process is not running, which
        # is the case once a warm shutdown stopped it
        if not self._stop_requested:
            self.register_again_if_forgotten()
            super().run_maintenance_tasks()

    def register_again_if_forgotten(self) -> bool:
        """Redis restarted empty (or flushed) under a running worker forgets its registration,
        and RQ registers a worker only when it starts: its heartbeat alone leaves a bare hash
        that no listing shows, so the health check (a liveness probe) failed until every
        worker was restarted, and the admins' jobs page showed none. Registered again here,
        every maintenance interval; True when it was."""
        connection = self.connection
        with connection.pipeline(transaction=False) as pipe:
            pipe.sismember(self.redis_workers_keys, self.key)
            pipe.hexists(self.key, "birth")
            listed, born = pipe.execute()
        if listed and born:
            return False
        self.last_heartbeat = rq_now()
        with connection.pipeline() as pipe:
            pipe.hset(self.key, mapping={**self.serialize(), "state": self.get_state()})
            worker_registration.register(self, pipe)
            pipe.expire(self.key, self.worker_ttl + 60)
            pipe.execute()
        log.warning("Redis had forgotten worker %s; registered it again", self.name)
        return True

    def stop_scheduler(self):
        """RQ's stop, bounded: SIGTERM until the scheduler process ends (the handler a process
        forked a moment ago still has may not end it; its own comes within milliseconds), and
        SIGKILL after ``SCHEDULER_STOP_SECONDS`` (its locks then expire by themselves)."""
        process = self.scheduler._process if self.scheduler is not None else None
        if process is None or not process.pid:
            return
        deadline = time.monotonic() + SCHEDULER_STOP_SECONDS
        while process.exitcode is None:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("the RQ scheduler (pid %s) did not stop; killing it", process.pid)
                process.kill()
                process.join(5)
                return
            try:
                os.kill(process.pid, signal.SIGTERM)
            except OSError:
                pass
            process.join(min(0.5, left))

    def _install_signal_handlers(self):
        super()._install_signal_handlers()
        if self.stop_event is not None and self.stop_event.is_set():
            self._stop_requested = True  # a signal came while this worker was starting


class AppWorker(JobMetricsMixin, _AppWorkerMixin, Worker):
    """Forks a work horse per job; the horse drops inherited database connections."""

    def perform_job(self, job, queue):
        with self.flask_app.app_context():
            db.engine.dispose(close=False)
        try:
            return super().perform_job(job, queue)
        finally:
            # The horse ends with this job: what it owes Redis (a caller invalidation, a cache
            # delete skipped while it backed off, ``extensions``) would end with it.
            pay_owed_redis_calls(self.flask_app, last_chance=True)


class AppSimpleWorker(JobMetricsMixin, _AppWorkerMixin, SimpleWorker):
    """Runs jobs in its own process; a thread renews the running job's registry entry (the
    forking worker's monitor does it for the horse)."""

    def perform_job(self, job, queue):
        done = threading.Event()
        beat = threading.Thread(target=self._renew_while_running, args=(job, done),
                                name="sonicus-job-heartbeat", daemon=True)
        beat.start()
        try:
            return super().perform_job(job, queue)
        finally:
            done.set()
            beat.join(5)

    def _renew_while_running(self, job, done: threading.Event) -> None:
        while not done.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job)
            except Exception as exc:  # Redis away: the entry may expire; the job goes on
                log.warning("job heartbeat failed: %s", type(exc).__name__)


def _worker_connection(app) -> redis.Redis:
    return redis.Redis.from_url(app.config["REDIS_URL"], socket_connect_timeout=5,
                                health_check_interval=30)


def make_worker(app, *, simple: bool = False, queues=QUEUES, name: str | None = None,
                stop_event: threading.Event | None = None):
    if not app.config.get("REDIS_URL"):
        raise RuntimeError("REDIS_URL is not set: jobs run inline, no worker is needed.")
    heartbeat = int(app.config.get("WORKER_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS))
    abandoned = int(app.config.get("WORKER_ABANDONED_JOB_SECONDS", ABANDONED_JOB_SECONDS))
    cls = AppSimpleWorker if simple else AppWorker
    worker = cls(list(queues), connection=_worker_connection(app), name=name,
                 job_monitoring_interval=heartbeat, maintenance_interval=heartbeat)
    worker.flask_app = app
    worker.abandoned_after = max(abandoned, heartbeat + 1)
    # RQ's own wait between reconnection attempts inside its dequeue loop
    worker.max_connection_wait_time = float(
        app.config.get("WORKER_RECONNECT_MAX_SECONDS", RECONNECT_MAX_SECONDS))
    worker.stop_event = stop_event
    return worker


def _discard(worker) -> None:
    """What a worker that lost Redis may leave running: its scheduler and its pubsub thread."""
    if worker is None:
        return
    try:
        if worker.scheduler is not None:
            worker.stop_scheduler()
    except Exception:
        pass
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        try:
            thread.stop()
            thread.join(timeout=1)
            worker.pubsub.close()
        except Exception:
            pass


def _stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (between workers; a worker installs RQ's handlers)."""
    def handler(signum, frame):
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def run_worker(app, *, simple: bool = False, schedule: bool = True) -> int:
    """Serve the queues with RQ's scheduler (retries) and the periodic schedule thread, until
    a shutdown signal; Redis outages are waited out."""
    stop = threading.Event()
    cap = float(app.config.get("WORKER_RECONNECT_MAX_SECONDS", RECONNECT_MAX_SECONDS))
    scheduler_stop = start_scheduler_thread(app)[1] if schedule else None
    failures = 0
    _stop_on_signals(stop)
    try:
        while not stop.is_set():
            worker, started = None, time.monotonic()
            try:
                worker = make_worker(app, simple=simple, stop_event=stop)
                worker.work(with_scheduler=True)
            except Exception as exc:  # Redis unreachable while starting or tearing down
                log.warning("worker ended: %s: %s", type(exc).__name__, exc)
            _stop_on_signals(stop)  # the ended worker's handlers are its own, not the wait's
            if stop.is_set():
                break
            _discard(worker)
            failures = 1 if time.monotonic() - started > STEADY_SECONDS else failures + 1
            delay = min(cap, RECONNECT_BASE_SECONDS * 2 ** (failures - 1))
            log.warning("worker lost Redis; starting a new one in %.1f s", delay)
            stop.wait(delay)
    finally:
        if scheduler_stop is not None:
            scheduler_stop.set()
    return 0
