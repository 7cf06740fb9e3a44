"""RQ worker for the app's queues, with RQ's scheduler and the periodic schedule.

    python worker.py            # forks a work horse per job (isolation; the default)
    python worker.py --simple   # runs jobs in the worker process (lower latency per job)
    python worker.py --no-schedule   # jobs only; leave the periodic schedule to others

Any number of workers may run: each periodic job still fires once per period.
"""

from __future__ import annotations

import argparse
import os
import sys

from config import PROCESS_DATABASE_DEFAULTS, load_config, process_database_defaults
from sonicus import create_app
from sonicus.logs import configure_process_logging
from sonicus.metrics import serve_metrics
from sonicus.tasks.worker import run_worker


def worker_database_settings(env=None) -> dict:
    """A worker's database connections (README, "Database connections"): the environment's
    settings, with a worker's own defaults for those it leaves unset."""
    settings = load_config(process_database_defaults("worker", os.environ if env is None
                                                     else env))
    return {name: settings[name] for name in PROCESS_DATABASE_DEFAULTS["worker"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Sonicus background worker")
    parser.add_argument("--simple", action="store_true",
                        help="run jobs in this process instead of a forked horse per job")
    parser.add_argument("--no-schedule", action="store_true",
                        help="do not run the periodic schedule in this worker")
    args = parser.parse_args(argv)
    configure_process_logging(os.environ.get("LOG_LEVEL", "INFO").upper())  # JSON lines
    # A job checks its pooled connection before use: PostgreSQL may have dropped it while the
    # worker idled (a restart, a failover, pg_terminate_backend), and a periodic job has no
    # retry, so failing on it lost the job's period. A web request answers 503 instead (its
    # client retries) and spares the round trip.
    app = create_app({**worker_database_settings(),
                      "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True}})
    if app.config.get("METRICS_BIND"):  # this worker's (and its host's) metrics for Prometheus
        serve_metrics(app.config["METRICS_BIND"], app.config.get("REDIS_URL"))
    return run_worker(app, simple=args.simple, schedule=not args.no_schedule)


if __name__ == "__main__":
    sys.exit(main())
