"""The socket process type (``SONICUS_PROCESS=ws``): the same app under gunicorn's gevent
worker, started the production way. Sockets get their snapshot (the database through
psycogreen) and their updates; unfinished requests hold nothing; SIGTERM closes with 1001."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from processes import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


def test_the_socket_process_serves_sockets_under_gevent(
        app, idp, test_database_url, test_redis_url, tmp_path, token_for, make_user,
        connect_ws, wait_for):
    from sonicus.realtime.publish import publish_to_user

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "SONICUS_PROCESS": "ws", "SONICUS_WS_BIND": f"127.0.0.1:{port}",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow = []
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
        user = make_user("gevent@example.com").id
        token = token_for("gevent@example.com")
        sockets = [connect_ws(f"ws://127.0.0.1:{port}/ws/analytics", token) for _ in range(2)]
        for ws in sockets:
            assert ws.receive_json()["type"] == "analytics.snapshot"

        with app.app_context():
            publish_to_user(user, {"type": "analytics.updated", "data": {"n": "x" * 300}})
        for ws in sockets:
            message = ws.receive_json()
            assert message == {"type": "analytics.updated", "data": {"n": "x" * 300}}

        # Clients that never finish their headers hold a greenlet each, nothing more.
        for _ in range(100):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")
            slow.append(conn)
        started = time.monotonic()
        assert requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).ok
        assert time.monotonic() - started < 1

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for ws in sockets:
            ws.settimeout(2)
            assert ws.close_code() == 1001
        assert time.monotonic() - sent < 2
        for ws in sockets:
            ws.shutdown()
        for conn in slow:
            conn.close()
        assert proc.wait(20) == 0
    finally:
        for conn in slow:
            conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_socket_process_closes_sockets_of_an_account_suspended_without_telling_it(
        app, idp, test_database_url, test_redis_url, tmp_path, token_for, make_user,
        connect_ws):
    """Under gevent, the socket process's account check (every WS_ACCOUNT_CHECK_SECONDS, the
    database through psycogreen) closes the socket of an account suspended with no close
    published (4403), and the other sockets go on receiving their updates."""
    from sqlalchemy import update

    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.realtime.publish import publish_to_user

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "SONICUS_PROCESS": "ws", "SONICUS_WS_BIND": f"127.0.0.1:{port}",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "WS_ACCOUNT_CHECK_SECONDS": "1", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "m")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
        suspended = make_user("suspended-quietly@example.com").id
        staying = make_user("still-listening@example.com").id
        url = f"ws://127.0.0.1:{port}/ws/analytics"
        closing = connect_ws(url, token_for("suspended-quietly@example.com"))
        kept = connect_ws(url, token_for("still-listening@example.com"))
        for ws in (closing, kept):
            assert ws.receive_json()["type"] == "analytics.snapshot"

        with app.app_context():  # suspended behind the socket process's back: no close sent
            db.session.execute(update(User).where(User.id == suspended).values(is_active=False))
            db.session.commit()
        closing.settimeout(10)
        assert closing.close_code() == 4403

        with app.app_context():
            publish_to_user(staying, {"type": "analytics.updated", "data": {"still": True}})
        assert kept.receive_json() == {"type": "analytics.updated", "data": {"still": True}}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
