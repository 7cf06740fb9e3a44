"""Helpers for tests that start real server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, proc, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 2xx; fail when ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def stop_group(proc, timeout: float = 20.0) -> int | None:
    """Stop ``proc``, started with ``start_new_session=True``: SIGTERM, up to ``timeout``
    seconds to exit, then SIGKILL to its whole process group, also after a clean exit. What
    it forked goes with it even when it would outlive it: an RQ worker's scheduler process
    keeps running when its parent is killed, and a stray one took the next tests' retries
    over. Returns the exit code, or None when it had to be killed."""
    code = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass
    if code is None:
        proc.wait(10)
    return code


def start_gunicorn(root, idp, database_url: str, redis_url: str, metrics_dir,
                   threads: int) -> tuple[subprocess.Popen, int]:
    """One web process served as production serves it (``gunicorn -c gunicorn.conf.py``, one
    worker of ``threads`` threads) on a free port, signing in with ``idp``; waits until it
    answers. Returns the process and its port; the caller stops it."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "SONICUS_ENV": "testing",
           "DATABASE_URL": database_url, "REDIS_URL": redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", str(threads)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return proc, port
