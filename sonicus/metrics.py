"""Prometheus metrics, one set for every web and worker process of a host (or pod).

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn.conf.py sets it; compose and Kubernetes pass
it to workers too) every process writes its counts to files there and a scrape adds them up
(prometheus_client's multiprocess mode). File names carry the host name as well as the pid, so
containers sharing one directory never collide. Without it (development, tests) the counts
live in this process.

Recorded:
- ``sonicus_http_requests_total`` / ``sonicus_http_request_duration_seconds``: by route
  template (``/api/user/sessions/<int:session_id>``, never the raw path), method and status;
- ``sonicus_websockets_open``: analytics sockets open, summed over live processes;
- ``sonicus_jobs_enqueued_total``, ``..._succeeded_total``, ``..._failed_total``,
  ``..._retried_total`` and ``sonicus_job_duration_seconds``, by job function;
- ``sonicus_queue_depth``: jobs waiting per queue, read from Redis at scrape time;
- ``sonicus_quota_denials_total`` by code; ``sonicus_webhook_events_total`` by outcome.

``GET /metrics`` (contract, "Operations"): only with ``Authorization: Bearer <METRICS_TOKEN>``;
or, with ``METRICS_BIND`` (``host:port``), on that address by a small server of its own.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import threading
import time
from bisect import bisect_left
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from flask import g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily

from .api_errors import DEFAULT_CODES, DEFAULT_MESSAGES, ApiError, error_body
from .extensions import get_redis

log = logging.getLogger(__name__)
job_log = logging.getLogger("sonicus.jobs")

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")


_HOST = socket.gethostname()
_identity = [f"{_HOST}-{os.getpid()}"]
# a forked child (gunicorn's workers) names itself by its own pid from its first increment
os.register_at_fork(after_in_child=lambda: _identity.__setitem__(0, f"{_HOST}-{os.getpid()}"))


def process_identifier() -> str:
    """Unique among every process writing to a shared directory: host name and pid.

    prometheus_client asks on every increment (to notice a fork): the answer is kept and
    renewed in a child after a fork, so neither the host name nor the pid is a system call
    per increment (three per request otherwise)."""
    return _identity[0]


if MULTIPROC_DIR:
    os.makedirs(MULTIPROC_DIR, exist_ok=True)
    values.ValueClass = values.MultiProcessValue(process_identifier)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 120.0, 300.0)
QUOTA_CODES = frozenset(("daily_session_limit_reached", "package_locked"))

REQUESTS = Counter("sonicus_http_requests", "HTTP requests answered",
                   ("route", "method", "status"))
REQUEST_SECONDS = Histogram("sonicus_http_request_duration_seconds",
                            "Time to answer an HTTP request", ("route", "method"),
                            buckets=LATENCY_BUCKETS)
SOCKETS_OPEN = Gauge("sonicus_websockets_open", "Analytics sockets open",
                     multiprocess_mode="livesum")
JOBS_ENQUEUED = Counter("sonicus_jobs_enqueued", "Jobs enqueued", ("job", "queue"))
JOBS_SUCCEEDED = Counter("sonicus_jobs_succeeded", "Jobs that finished", ("job",))
JOBS_FAILED = Counter("sonicus_jobs_failed", "Jobs that failed for good", ("job",))
JOBS_RETRIED = Counter("sonicus_jobs_retried", "Job attempts that failed and will retry",
                       ("job",))
JOB_SECONDS = Histogram("sonicus_job_duration_seconds", "Time a job attempt ran",
                        ("job", "outcome"), buckets=JOB_BUCKETS)
QUOTA_DENIALS = Counter("sonicus_quota_denials", "Requests refused by the tier rules",
                        ("code",))
WEBHOOK_EVENTS = Counter("sonicus_webhook_events", "Billing webhooks by outcome",
                         ("outcome",))


# ---- recording -----------------------------------------------------------------------------

def job_name(func_or_name) -> str:
    name = func_or_name if isinstance(func_or_name, str) else (
        f"{getattr(func_or_name, '__module__', '')}.{getattr(func_or_name, '__name__', '')}")
    return name.rsplit(".", 1)[-1] or "unknown"


def record_enqueued(func, queue: str) -> None:
    JOBS_ENQUEUED.labels(job_name(func), queue).inc()


def record_job(func_name: str, outcome: str, seconds: float) -> None:
    """``outcome``: ``succeeded``, ``failed`` (for good) or ``retried``."""
    name = job_name(func_name or "unknown")
    {"succeeded": JOBS_SUCCEEDED, "failed": JOBS_FAILED,
     "retried": JOBS_RETRIED}[outcome].labels(name).inc()
    JOB_SECONDS.labels(name, outcome).observe(seconds)


def record_webhook(outcome: str | None) -> None:
    WEBHOOK_EVENTS.labels(outcome or "handled").inc()


def socket_opened() -> None:
    SOCKETS_OPEN.inc()


def socket_closed() -> None:
    SOCKETS_OPEN.dec()


class JobMetricsMixin:
    """For RQ workers: each job attempt's outcome and duration, recorded (and logged, with
    the request id that enqueued it) by the worker process itself once the attempt is over
    (a forked work horse records nothing)."""

    def execute_job(self, job, queue):
        started = time.perf_counter()
        try:
            return super().execute_job(job, queue)
        finally:
            try:
                seconds = time.perf_counter() - started
                status = job.get_status(refresh=True)
                status = getattr(status, "value", status)
                outcome = {"finished": "succeeded", "failed": "failed"}.get(status, "retried")
                record_job(job.func_name, outcome, seconds)
                job_log.log(logging.WARNING if outcome == "failed" else logging.INFO,
                            "job %s", outcome, extra={
                                "job": job_name(job.func_name or "unknown"), "job_id": job.id,
                                "queue": queue.name, "outcome": outcome,
                                "duration_ms": round(seconds * 1000, 2),
                                "request_id": (job.meta or {}).get("request_id")})
            except Exception as exc:  # metrics never fail a job
                log.warning("job metrics not recorded: %s", type(exc).__name__)


# ---- the web hooks -------------------------------------------------------------------------

# What a request adds to, by (route, method, status): ``labels()`` checks and joins its
# arguments on every call. Routes, methods and statuses are few, so this stays small.
_children: dict[tuple, tuple] = {}


def _direct(count, seconds) -> tuple:
    """(the counter's value, (the histogram's sum, upper bounds, buckets) or None): what
    ``Counter.inc`` and ``Histogram.observe`` add to, added to without their checks (they
    check that a metric with labels is not used without them, and take exemplars; neither
    applies to a labelled child). The public methods where the client's internals differ."""
    value = getattr(count, "_value", None)
    count_inc = value.inc if value is not None and hasattr(value, "inc") else count.inc
    if seconds is None:
        return count_inc, None
    parts = (getattr(seconds, "_sum", None), getattr(seconds, "_upper_bounds", None),
             getattr(seconds, "_buckets", None))
    if None in parts or len(parts[1]) != len(parts[2]) or parts[1][-1] != float("inf"):
        return count_inc, seconds.observe
    return count_inc, parts


def _request_metrics(route: str, method: str, status: int) -> tuple:
    key = (route, method, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = _direct(
            REQUESTS.labels(route, method, str(status)),
            None if route.startswith("/ws/") else REQUEST_SECONDS.labels(route, method))
    return found


def _after_request(response):
    req = request._get_current_object()
    rule = req.url_rule
    route = rule.rule if rule is not None else "unmatched"
    status = response.status_code
    count_inc, seconds = _request_metrics(route, req.method, status)
    count_inc(1)
    started = g._get_current_object().__dict__.get("request_started")
    if started is not None and seconds is not None:
        took = time.perf_counter() - started
        if type(seconds) is tuple:
            total, bounds, buckets = seconds
            total.inc(took)
            buckets[bisect_left(bounds, took)].inc(1)  # the first bucket it is within
        else:
            seconds(took)
    if status in (403, 429) and response.is_json:
        code = (response.get_json(silent=True) or {}).get("code")
        if code in QUOTA_CODES:
            QUOTA_DENIALS.labels(code).inc()
    return response


def _bearer_matches(header: str, token: str) -> bool:
    scheme, _, presented = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(),
                                                              token.encode())


def init_metrics(app) -> None:
    """Request metrics for every response, and ``GET /metrics`` when ``METRICS_TOKEN`` is set
    (without it the route answers 404: the metrics are then only on ``METRICS_BIND``)."""
    app.after_request(_after_request)

    def metrics_view():
        token = app.config.get("METRICS_TOKEN")
        if not token:
            raise ApiError(404, "not_found", "Not found.")
        if not _bearer_matches(request.headers.get("Authorization", ""), token):
            raise ApiError(401, "missing_token", "A metrics token is required.",
                           headers={"WWW-Authenticate": "Bearer"})
        body = metrics_text(get_redis())
        return app.response_class(body, mimetype=None, headers={
            "Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


# ---- exposition ----------------------------------------------------------------------------

class QueueDepthCollector:
    """Jobs waiting per queue (every queue RQ knows), read from Redis when scraped."""

    def __init__(self, redis_client):
        self.redis = redis_client

    def collect(self):
        family = GaugeMetricFamily("sonicus_queue_depth", "Jobs waiting per queue",
                                   labels=("queue",))
        if self.redis is not None:
            try:
                keys = sorted(k.decode() if isinstance(k, bytes) else k
                              for k in self.redis.smembers("rq:queues"))
                for key in keys:
                    family.add_metric((key.removeprefix("rq:queue:"),), self.redis.llen(key))
            except Exception as exc:  # Redis down: the rest of the scrape still answers
                log.warning("queue depth not read: %s", type(exc).__name__)
        yield family


def metrics_text(redis_client=None) -> bytes:
    """Every process's metrics (multiprocess mode) or this one's, plus the queue depths."""
    extra = CollectorRegistry()
    extra.register(QueueDepthCollector(redis_client))
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry) + generate_latest(extra)
    return generate_latest(REGISTRY) + generate_latest(extra)


def mark_process_dead(pid: int) -> None:
    """gunicorn's ``child_exit``: a dead worker's live gauges stop counting."""
    if MULTIPROC_DIR:
        multiprocess.mark_process_dead(f"{socket.gethostname()}-{pid}", MULTIPROC_DIR)


def serve_metrics(bind: str, redis_url: str | None = None) -> ThreadingHTTPServer:
    """``METRICS_BIND``: a small HTTP server on a thread answering ``GET /metrics``."""
    client = redis.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None
    host, _, port = bind.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = metrics_text(client)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_HEAD = do_GET  # noqa: N815

        def _not_allowed(self):
            self.send_error(405)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_allowed  # noqa: N815

        def send_error(self, code, message=None, explain=None):
            """Every refusal (the server's own too: a bad request line, headers too long)
            in the API's error envelope."""
            text = DEFAULT_MESSAGES.get(code) or HTTPStatus(code).phrase + "."
            body = json.dumps(error_body(code, DEFAULT_CODES.get(code, "error"), text,
                                         [text])).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code == 405:
                self.send_header("Allow", "GET, HEAD")
            self.send_header("Connection", "close")
            self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    threading.Thread(target=server.serve_forever, name="sonicus-metrics", daemon=True).start()
    return server
