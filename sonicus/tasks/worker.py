"""RQ workers that run every job inside the app's context."""

from __future__ import annotations

from rq import SimpleWorker, Worker

from ..extensions import db, get_redis
from ..metrics import JobMetricsMixin
from .queue import QUEUES
from .schedule import start_scheduler_thread


class _AppContextMixin:
    flask_app = None

    def perform_job(self, job, queue):
        with self.flask_app.app_context():
            try:
                return super().perform_job(job, queue)
            finally:
                db.session.remove()


class AppWorker(JobMetricsMixin, _AppContextMixin, Worker):
    """Forks a work horse per job; the horse drops inherited database connections."""

    def perform_job(self, job, queue):
        with self.flask_app.app_context():
            db.engine.dispose(close=False)
        return super().perform_job(job, queue)


class AppSimpleWorker(JobMetricsMixin, _AppContextMixin, SimpleWorker):
    """Runs jobs in its own process (tests, benchmarks)."""


def make_worker(app, *, simple: bool = False, queues=QUEUES, name: str | None = None):
    with app.app_context():
        connection = get_redis()
    if connection is None:
        raise RuntimeError("REDIS_URL is not set: jobs run inline, no worker is needed.")
    cls = AppSimpleWorker if simple else AppWorker
    worker = cls(list(queues), connection=connection, name=name)
    worker.flask_app = app
    return worker


def run_worker(app, *, simple: bool = False, schedule: bool = True) -> int:
    """A worker with RQ's scheduler (retries) and the periodic schedule thread."""
    worker = make_worker(app, simple=simple)
    stop = None
    if schedule:
        _thread, stop = start_scheduler_thread(app)
    try:
        worker.work(with_scheduler=True)
    finally:
        if stop is not None:
            stop.set()
    return 0
