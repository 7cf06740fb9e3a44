"""One log format for every process: JSON lines (``web.JsonFormatter``), tokens and email
addresses scrubbed.

- The app (any server): ``web.configure_logging`` puts its lines on the ``sonicus`` logger.
- gunicorn: ``gunicorn.conf.py`` hands ``gunicorn_logconfig()`` to ``logconfig_dict``: the error
  log, the access log (``AccessJsonFormatter``: fields, not a text line) and the root logger
  (the app, rq, werkzeug, SQLAlchemy) all write JSON to stderr.
- RQ workers: ``configure_process_logging()`` before the app is created; RQ then adds no text
  handlers of its own. Lines written while a job runs carry ``job``, ``job_id`` and the
  ``request_id`` of the request that enqueued it (``job_meta()``, kept in the job's meta).
- The development server (``web.configure_logging``): werkzeug's own per-request line is
  dropped (the app's access line is the one), so each request is logged once.
"""

from __future__ import annotations

import logging
import sys

from flask import g, has_request_context
from rq import job as rq_job
from rq.job import get_current_job

from .web import JsonFormatter

REQUEST_ID_META = "request_id"

# RQ's per-thread stack of running jobs keeps an entry per thread that runs one: when it is
# empty no job runs in this process (a web process, always), and the lookup of the current
# job, which raises and catches three exceptions to answer None, is skipped.
_RUNNING_JOBS = getattr(getattr(getattr(rq_job, "_job_stack", None), "_local", None),
                        "__storage__", None)
if not isinstance(_RUNNING_JOBS, dict):
    _RUNNING_JOBS = None


def current_request_id() -> str | None:
    """The id of the request being served, if any (for the jobs it enqueues)."""
    if has_request_context():
        return g.get("request_id")
    return None


def job_meta() -> dict:
    """Meta for a job enqueued now: the request id travels with it into the worker."""
    request_id = current_request_id()
    return {REQUEST_ID_META: request_id} if request_id else {}


class JobContextFilter(logging.Filter):
    """Adds the running job (name, id, the enqueuing request's id) to a worker's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _RUNNING_JOBS is not None and not _RUNNING_JOBS:
            return True
        try:
            job = get_current_job()
        except Exception:  # outside a worker, or a job that cannot be read
            job = None
        if job is not None:
            if getattr(record, "job_id", None) is None:
                record.job_id = job.id
            if getattr(record, "job", None) is None:
                record.job = (job.func_name or "").rsplit(".", 1)[-1] or None
            if getattr(record, "request_id", None) is None:
                record.request_id = (job.meta or {}).get(REQUEST_ID_META)
        return True


class AccessJsonFormatter(JsonFormatter):
    """gunicorn's access records (their args are gunicorn's atoms) as JSON fields."""

    def format(self, record: logging.LogRecord) -> str:
        atoms = record.args if isinstance(record.args, dict) else {}
        if atoms:
            record.method = atoms.get("m")
            record.path = atoms.get("U")  # the path only: never the query string
            record.status = _int(atoms.get("s"))
            record.duration_ms = _int(atoms.get("M"))
            record.client = atoms.get("h")
            request_id = atoms.get("{x-request-id}o")
            record.request_id = request_id if request_id not in (None, "-") else None
            record.msg, record.args = "access", None
        return super().format(record)


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def json_handler(stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobContextFilter())
    return handler


def configure_process_logging(level: str = "INFO") -> None:
    """JSON lines on stderr for everything this process logs (a worker, a script)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        root.addHandler(json_handler())
    root.setLevel(level)


def gunicorn_logconfig(*, access: bool = False, level: str = "INFO") -> dict:
    """``logconfig_dict`` for gunicorn; its access line only when ``access``."""
    config = {**GUNICORN_LOGCONFIG, "root": {"level": level, "handlers": ["stderr"]}}
    config["loggers"] = {**GUNICORN_LOGCONFIG["loggers"], "gunicorn.access": {
        "level": "INFO" if access else "CRITICAL", "handlers": ["access"],
        "propagate": False}}
    return config


GUNICORN_LOGCONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "sonicus.web.JsonFormatter"},
        "access": {"()": "sonicus.logs.AccessJsonFormatter"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json",
                   "stream": "ext://sys.stderr"},
        "access": {"class": "logging.StreamHandler", "formatter": "access",
                   "stream": "ext://sys.stderr"},
    },
    "root": {"level": "INFO", "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["access"], "propagate": False},
    },
}
