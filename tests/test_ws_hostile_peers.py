"""The socket process (``SONICUS_PROCESS=ws``, gevent, started the production way) against
peers that misbehave: a client that never reads what it is sent, and the process told to stop
while such a client holds a socket. Other users' sockets go on receiving their updates, and
every socket's lease on its user's cap is given back."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_lib
from processes import free_port, wait_until_up

from sonicus.extensions import channel_prefix

ROOT = Path(__file__).resolve().parent.parent
BIG = "x" * 256 * 1024  # one update of 256 KiB


@pytest.fixture
def ws_process(idp, test_database_url, test_redis_url, tmp_path):
    """``ws_process(**env)`` → (process, port, path of its output): one socket process."""
    started = []

    def start(**extra):
        port = free_port()
        output = tmp_path / f"ws-{port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
               "SONICUS_PROCESS": "ws", "SONICUS_WS_BIND": f"127.0.0.1:{port}",
               "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
               "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
               "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false",
               "LOG_LEVEL": "WARNING", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
               **extra}
        with open(output, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
        return proc, port, output

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _leases(app, test_redis_url, user_id: int) -> int:
    key = f"{channel_prefix(app.config)}ws-sockets:{user_id}"
    return redis_lib.Redis.from_url(test_redis_url).zcard(key)


def _never_reading(connect_ws, url: str, token: str):
    """A socket whose client reads its snapshot, then nothing more (a small receive buffer,
    so that what the server writes to it soon has nowhere to go)."""
    ws = connect_ws(url, token)
    ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert ws.receive_json()["type"] == "analytics.snapshot"
    return ws


def _flood(app, user_id: int, count: int = 40) -> None:
    from sonicus.realtime.publish import publish_to_user

    with app.app_context():
        for _ in range(count):
            publish_to_user(user_id, {"type": "analytics.updated", "data": {"big": BIG}})


def test_a_client_that_never_reads_does_not_hold_up_other_users_updates(
        app, ws_process, make_user, token_for, connect_ws, wait_for, test_redis_url):
    """A client that stops reading (its buffers full) while updates keep coming for it: the
    next update of another user on the same process still arrives at once, not after the
    keep-alive gave up on the stuck one (up to two ping intervals, 50 s, during which the
    process delivered nothing to anyone). The stuck socket is dropped and its lease given
    back."""
    from sonicus.realtime.publish import publish_to_user

    _proc, port, output = ws_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    stuck_user = make_user("never-reads@example.com").id
    other_user = make_user("reads-fine@example.com").id
    stuck = _never_reading(connect_ws, url, token_for("never-reads@example.com"))
    other = connect_ws(url, token_for("reads-fine@example.com"))
    assert other.receive_json()["type"] == "analytics.snapshot"

    _flood(app, stuck_user)
    time.sleep(0.5)
    sent = time.monotonic()
    with app.app_context():
        publish_to_user(other_user, {"type": "analytics.updated", "data": {"n": 1}})
    other.settimeout(15)
    assert other.receive_json() == {"type": "analytics.updated", "data": {"n": 1}}
    assert time.monotonic() - sent < 5
    assert wait_for(lambda: _leases(app, test_redis_url, stuck_user) == 0, timeout=5)
    assert _leases(app, test_redis_url, other_user) == 1
    assert "Traceback" not in output.read_text()
    del stuck


def test_sigterm_closes_with_1001_and_gives_back_every_lease_despite_a_client_that_never_reads(
        app, ws_process, make_user, token_for, connect_ws, test_redis_url):
    """SIGTERM while one client has stopped reading: every other socket still gets its 1001
    at once, the process exits cleanly, and no lease is left behind (a lease left would
    refuse the user's sockets elsewhere with 4429 for 90 s)."""
    proc, port, output = ws_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    stuck_user = make_user("stuck-at-shutdown@example.com").id
    users = [make_user(f"leaving-{n}@example.com").id for n in range(3)]
    _never_reading(connect_ws, url, token_for("stuck-at-shutdown@example.com"))
    sockets = []
    for n in range(3):
        for _ in range(3):
            ws = connect_ws(url, token_for(f"leaving-{n}@example.com"))
            assert ws.receive_json()["type"] == "analytics.snapshot"
            sockets.append(ws)
    _flood(app, stuck_user, count=20)
    time.sleep(0.5)

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    codes = []
    for ws in sockets:
        ws.settimeout(5)
        codes.append(ws.close_code())
    assert codes == [1001] * len(sockets)
    assert time.monotonic() - sent < 5
    for ws in sockets:
        ws.shutdown()
    assert proc.wait(20) == 0
    assert [_leases(app, test_redis_url, uid) for uid in [stuck_user, *users]] == [0] * 4
    assert "Traceback" not in output.read_text()
