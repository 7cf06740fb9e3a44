"""One log format for every process: JSON lines (``log_format.JsonFormatter``), tokens and
email addresses scrubbed.

- The app (any server): ``configure_logging`` puts its lines on the ``sonicus`` logger;
  ``install_log_redaction`` keeps ``access_token=`` values out of werkzeug's and gunicorn's
  access lines.
- gunicorn: ``gunicorn.conf.py`` hands ``gunicorn_logconfig()`` to ``logconfig_dict``: the error
  log, the access log (``AccessJsonFormatter``: fields, not a text line) and the root logger
  (the app, rq, werkzeug, SQLAlchemy) all write JSON to stderr.
- RQ workers: ``configure_process_logging()`` before the app is created; RQ then adds no text
  handlers of its own. Lines written while a job runs carry ``job``, ``job_id`` and the
  ``request_id`` of the request that enqueued it (``job_meta()``, kept in the job's meta).
- The development server (``configure_logging``): werkzeug's own per-request line is
  dropped (the app's access line is the one), so each request is logged once.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref

from flask import g, has_request_context
from flask.logging import default_handler
from rq import job as rq_job
from rq.job import get_current_job

from .log_format import JsonFormatter, RedactTokensFilter

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


class BatchedStreamHandler(logging.StreamHandler):
    """A stream handler that writes its lines in batches: a line below WARNING is kept in
    memory and written with the others by a thread of the handler every ``FLUSH_SECONDS`` (or
    as soon as ``FLUSH_BYTES`` are waiting); a WARNING or above is written at once, after
    every line before it, so the lines keep their order. Pending lines are written at exit
    (``logging.shutdown``, which gunicorn's workers reach) and before a fork (a child never
    repeats its parent's lines). A process killed outright loses at most the last
    ``FLUSH_SECONDS`` of lines below WARNING.

    For gunicorn's threaded web processes: one ``write`` per access line meant one system call
    per request holding the handler's lock, during which the thread gave up the interpreter
    lock; the other request threads then queued on both locks behind it."""

    FLUSH_SECONDS = 0.1
    FLUSH_BYTES = 64 * 1024

    def __init__(self, stream=None):
        super().__init__(stream)
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._flusher: threading.Thread | None = None
        _batched_handlers.add(self)

    def handle(self, record: logging.LogRecord) -> bool:
        """``Handler.handle``: the record through the filters (when there are any) and
        emitted with the handler's lock held, without a call for each of those steps."""
        if self.filters and not self.filter(record):
            return False
        with self.lock:
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        # called with the handler's lock held (handle)
        try:
            formatter = self.formatter
            line = (formatter.format(record) if formatter is not None
                    else self.format(record)) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._pending.append(line)
        self._pending_bytes += len(line)
        if record.levelno >= logging.WARNING or self._pending_bytes >= self.FLUSH_BYTES:
            self._write_pending()
        elif self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_every, daemon=True,
                                             name="sonicus-log-flush")
            self._flusher.start()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # the stream is gone (closed at exit): nothing to tell it to
            pass

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()
        super().flush()

    def _flush_every(self) -> None:
        me = threading.current_thread()
        while self._flusher is me:  # another after a fork or a close
            time.sleep(self.FLUSH_SECONDS)
            if self._pending:
                self.flush()

    def close(self) -> None:
        self.flush()
        self._flusher = None
        super().close()


_batched_handlers: weakref.WeakSet = weakref.WeakSet()


def _flush_before_fork() -> None:
    for handler in list(_batched_handlers):
        handler.flush()


def _forget_in_child() -> None:
    # the parent writes what it still holds; the child starts its own flusher when it logs
    for handler in list(_batched_handlers):
        handler._pending.clear()
        handler._pending_bytes = 0
        handler._flusher = None


os.register_at_fork(before=_flush_before_fork, after_in_child=_forget_in_child)


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


def configure_logging(app) -> None:
    """JSON lines from the ``sonicus`` loggers. Where the process has configured logging
    already (gunicorn's ``logconfig_dict``, a worker: ``configure_process_logging``) the
    lines go to its root handler; otherwise (``flask run``, scripts) to Flask's stream handler."""
    default_handler.setFormatter(JsonFormatter())
    logging.Formatter.converter = time.gmtime
    logger = logging.getLogger("sonicus")
    logger.setLevel(app.config["LOG_LEVEL"])
    root_configured = any(isinstance(h.formatter, JsonFormatter)
                          for h in logging.getLogger().handlers)
    if root_configured:
        if default_handler in logger.handlers:
            logger.removeHandler(default_handler)
    elif default_handler not in logger.handlers:
        logger.addHandler(default_handler)
    if (app.config["SONICUS_ENV"] == "development" and not root_configured
            and os.environ.get("FLASK_RUN_FROM_CLI") == "true"):
        # The development server (`flask run`): its own lines in JSON too, minus its
        # per-request line (the app's access line is the one: each request logged once).
        werkzeug_log = logging.getLogger("werkzeug")
        if default_handler not in werkzeug_log.handlers:
            werkzeug_log.addHandler(default_handler)
        if not any(isinstance(f, _DropRequestLines) for f in werkzeug_log.filters):
            werkzeug_log.addFilter(_DropRequestLines())


class _DropRequestLines(logging.Filter):
    """werkzeug's ``"GET /path HTTP/1.1" 200 -`` line (the app logs each request already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.rstrip().endswith('"%s" %s %s'))


def install_log_redaction() -> None:
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokensFilter) for f in logger.filters):
            logger.addFilter(RedactTokensFilter())


def gunicorn_logconfig(*, access: bool = False, level: str = "INFO",
                       batched: bool = False) -> dict:
    """``logconfig_dict`` for gunicorn; its access line only when ``access``; lines written
    in batches (``BatchedStreamHandler``) when ``batched``."""
    config = {**GUNICORN_LOGCONFIG, "root": {"level": level, "handlers": ["stderr"]}}
    if batched:
        config["handlers"] = {name: {**handler, "class": "sonicus.logs.BatchedStreamHandler"}
                              for name, handler in GUNICORN_LOGCONFIG["handlers"].items()}
    config["loggers"] = {**GUNICORN_LOGCONFIG["loggers"], "gunicorn.access": {
        "level": "INFO" if access else "CRITICAL", "handlers": ["access"],
        "propagate": False}}
    return config


GUNICORN_LOGCONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "sonicus.log_format.JsonFormatter"},
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
