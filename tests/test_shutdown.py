"""Graceful shutdown: SIGTERM to a real gunicorn closes every open socket with 1001 (clients
reconnect elsewhere) within a second, gives back their leases on the user's cap, and the
process exits well inside Kubernetes' 30 s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis as redis_lib
from processes import free_port, wait_until_up

from sonicus.extensions import channel_prefix

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_closes_open_sockets_with_1001_at_once(idp, test_database_url, test_redis_url,
                                                      tmp_path, token_for, make_user,
                                                      connect_ws):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py",
         "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
        user_id = make_user("closing@example.com").id
        sockets = [connect_ws(f"ws://127.0.0.1:{port}/ws/analytics",
                              token_for("closing@example.com")) for _ in range(2)]
        for ws in sockets:
            assert ws.receive_json()["type"] == "analytics.snapshot"

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # what Kubernetes and docker stop send
        for ws in sockets:
            ws.settimeout(2)
            assert ws.close_code() == 1001
        assert time.monotonic() - sent < 2
        for ws in sockets:
            ws.shutdown()
        assert proc.wait(20) == 0  # exits well inside the 30 s grace period
        # and every socket's lease was given back: the user reconnects elsewhere at once
        leases = redis_lib.Redis.from_url(test_redis_url)
        assert leases.zcard(f"{channel_prefix({'REDIS_URL': test_redis_url})}ws-sockets:"
                            f"{user_id}") == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
