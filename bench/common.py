"""Shared bench tooling: a gunicorn launcher and a keep-alive HTTP load generator."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ensure_database(url: str) -> str:
    """Create the PostgreSQL database of ``url`` when it is missing; returns ``url``."""
    from sqlalchemy import create_engine, text

    from config import normalise_database_url

    base, name = normalise_database_url(url).rsplit("/", 1)
    engine = create_engine(base + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"),
                              {"n": name}).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


class Server:
    """gunicorn serving ``app`` on a free port, stopped on exit."""

    def __init__(self, app: str, env: dict, *, workers=2, threads=8, worker_class="gthread",
                 cwd: Path = ROOT):
        self.port = free_port()
        cmd = [sys.executable, "-m", "gunicorn", app, "--config", "python:bench.no_config",
               "--bind", f"127.0.0.1:{self.port}",
               "--workers", str(workers), "--worker-class", worker_class,
               "--threads", str(threads), "--no-control-socket", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env})

    def wait(self, path="/api/health", timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", path)
                if conn.getresponse().status < 500:
                    return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server on {self.port} did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self.wait()

    def __exit__(self, *exc):
        self.stop()


def run_load(port: int, method: str, path_or_fn, *, headers=None, body_fn=None,
             concurrency=20, duration=10.0, warmup=1.0) -> dict:
    """Drive ``concurrency`` keep-alive clients for ``duration`` seconds.

    ``path_or_fn`` is a path, or ``fn(worker_index, i) -> (method, path, body, headers)``.
    Returns requests/s, latency percentiles in ms, and the count of non-2xx answers.
    """
    latencies: list[float] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup

    def worker(index: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        local, local_err, i = [], {}, 0
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                break
            if callable(path_or_fn):
                m, p, b, h = path_or_fn(index, i)
            else:
                m, p, b, h = method, path_or_fn, body_fn(index, i) if body_fn else None, headers
            i += 1
            start = time.perf_counter()
            try:
                conn.request(m, p, body=b, headers=h or {})
                res = conn.getresponse()
                res.read()
                status = res.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                status = 599
            end = time.perf_counter()
            if start >= measure_from:
                local.append((end - start) * 1000)
                if status >= 300:
                    local_err[status] = local_err.get(status, 0) + 1
        with lock:
            latencies.extend(local)
            for k, v in local_err.items():
                errors[k] = errors.get(k, 0) + v

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "requests": len(latencies), "rps": round(len(latencies) / duration, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "non_2xx": errors,
    }
