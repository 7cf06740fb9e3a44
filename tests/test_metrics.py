"""Prometheus metrics: ``GET /metrics`` per the contract, and every process of a host adding up
into one scrape (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from processes import stop_group
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent


def _sample(text: str, name: str, **labels) -> float | None:
    """The value of one sample in Prometheus text format (labels in any order)."""
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:]+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


@pytest.fixture
def metrics_app(make_config):
    from sonicus import create_app

    return create_app(make_config(METRICS_TOKEN="scrape-secret"))


def test_metrics_are_only_for_the_metrics_token(metrics_app, make_config):
    from sonicus import create_app

    client = metrics_app.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    res = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert res.status_code == 200
    assert res.headers["Content-Type"].startswith("text/plain")
    # Without a token the route is not there: the metrics are then only on METRICS_BIND.
    assert create_app(make_config()).test_client().get("/metrics").status_code == 404


def test_requests_are_counted_by_route_template_not_by_path(metrics_app, auth):
    client = metrics_app.test_client()
    headers = auth("metrics@example.com")
    for session_id in (101, 102, 103):
        client.get(f"/api/user/sessions/{session_id}", headers=headers)
    text = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"}).text
    assert "/api/user/sessions/101" not in text
    assert _sample(text, "sonicus_http_requests_total", route="/api/user/sessions/<int:session_id>",
                   method="GET", status="404") >= 3
    assert _sample(text, "sonicus_http_request_duration_seconds_count",
                   route="/api/user/sessions/<int:session_id>", method="GET") >= 3


def test_quota_denials_and_webhook_outcomes_are_counted(metrics_app, billing, make_user,
                                                        make_package, auth):
    client = metrics_app.test_client()
    scrape = {"Authorization": "Bearer scrape-secret"}

    def value(name, **labels):
        return _sample(client.get("/metrics", headers=scrape).text, name, **labels) or 0

    denied = value("sonicus_quota_denials_total", code="package_locked")
    make_user("starter@example.com")
    locked = make_package("deep", minimum_tier="pro_exclusive").id
    res = client.post("/api/user/sessions", json={"package_id": locked},
                      headers=auth("starter@example.com"))
    assert res.status_code == 403
    assert value("sonicus_quota_denials_total", code="package_locked") == denied + 1

    rejected = value("sonicus_webhook_events_total", outcome="rejected")
    assert client.post("/api/billing/webhook", data=b"{}",
                       headers={"Stripe-Signature": "t=1,v1=00"}).status_code == 400
    assert value("sonicus_webhook_events_total", outcome="rejected") == rejected + 1


def _start(args, env):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


def test_two_web_processes_and_a_worker_add_up_in_one_scrape(tmp_path, idp, test_database_url,
                                                            test_redis_url, redis_client,
                                                            wait_for):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": "scrape-secret"}
    procs = []
    try:
        ports = []
        for _ in range(2):
            proc = _start(["-m", "tests.live_server"], env)
            procs.append(proc)
            ports.append(int(proc.stdout.readline().split()[1]))
        worker = _start(["worker.py", "--simple", "--no-schedule"], env)
        procs.append(worker)
        for port, times in zip(ports, (3, 5), strict=True):
            for _ in range(times):
                assert requests.get(f"http://127.0.0.1:{port}/api/tiers", timeout=5).ok
        Queue("sonicus-default", connection=redis_client).enqueue("os.getpid")
        # a queued job nobody takes: the depth is read at scrape time
        Queue("sonicus-idle", connection=redis_client).enqueue("os.getpid")

        def scrape():
            return requests.get(f"http://127.0.0.1:{ports[0]}/metrics", timeout=5,
                                headers={"Authorization": "Bearer scrape-secret"}).text

        assert wait_for(lambda: _sample(scrape(), "sonicus_jobs_succeeded_total",
                                        job="getpid") == 1.0, timeout=20)
        text = scrape()
        assert _sample(text, "sonicus_http_requests_total", route="/api/tiers", method="GET",
                       status="200") == 8.0
        assert _sample(text, "sonicus_http_request_duration_seconds_count",
                       route="/api/tiers", method="GET") == 8.0
        assert _sample(text, "sonicus_queue_depth", queue="sonicus-idle") == 1.0
        assert len({p.name.rsplit("_", 1)[-1] for p in tmp_path.glob("counter_*.db")}) >= 3
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            stop_group(proc, 15)


def test_a_request_adds_to_the_same_samples_as_the_public_methods_would():
    """The request hook adds to a labelled child's values directly (``metrics._direct``):
    the same samples as ``Counter.inc`` and ``Histogram.observe``, bucket edges included."""
    from bisect import bisect_left

    from prometheus_client import CollectorRegistry, Counter, Histogram

    from sonicus.metrics import LATENCY_BUCKETS, _direct

    registry = CollectorRegistry()
    counter = Counter("probe_requests", "", ("route",), registry=registry)
    histogram = Histogram("probe_seconds", "", ("route",), buckets=LATENCY_BUCKETS,
                          registry=registry)
    count_inc, seconds = _direct(counter.labels("direct"), histogram.labels("direct"))
    assert isinstance(seconds, tuple)  # the internals this client version has
    for took in (0.0, 0.001, 0.005, 0.0050001, 0.1, 0.3, 10.0, 11.0):
        counter.labels("public").inc()
        histogram.labels("public").observe(took)
        count_inc(1)
        total, bounds, buckets = seconds
        total.inc(took)
        buckets[bisect_left(bounds, took)].inc(1)

    def samples(route):
        return sorted((s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "route")),
                       s.value) for metric in registry.collect() for s in metric.samples
                      if s.labels.get("route") == route and not s.name.endswith("_created"))

    assert samples("direct") == samples("public")


def test_starting_a_gunicorn_keeps_the_metrics_of_the_hosts_other_running_processes(
        tmp_path, idp, test_database_url, test_redis_url, redis_client, wait_for):
    """One directory per host: a web (or socket) process type started or restarted there
    drops what this host's dead processes left, never the files of a worker (or of the other
    process type) still running, whose counts would vanish from every scrape until it
    restarts."""
    import shutil
    import socket

    from processes import free_port, wait_until_up

    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "METRICS_TOKEN": "scrape-secret"}
    worker = _start(["worker.py", "--simple", "--no-schedule"], env)
    procs = [worker]
    try:
        Queue("sonicus-default", connection=redis_client).enqueue("os.getpid")
        host = socket.gethostname()
        counts = tmp_path / f"counter_{host}-{worker.pid}.db"
        wait_for(lambda: counts.exists() and not redis_client.llen("rq:queue:sonicus-default"),
                 timeout=20)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        # what a process of an earlier run left: its counts must not be added to this run's
        shutil.copy(counts, tmp_path / f"counter_{host}-{int(dead.stdout)}.db")

        port = free_port()
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        procs.append(web)
        wait_until_up(f"http://127.0.0.1:{port}/api/health", web)

        def jobs_done():
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5,
                                headers={"Authorization": "Bearer scrape-secret"}).text
            return _sample(text, "sonicus_jobs_succeeded_total", job="getpid")

        assert wait_for(lambda: jobs_done() is not None, timeout=10) == 1.0
        Queue("sonicus-default", connection=redis_client).enqueue("os.getpid")
        assert wait_for(lambda: jobs_done() == 2.0, timeout=20)  # the worker still counts
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            stop_group(proc, 15)
