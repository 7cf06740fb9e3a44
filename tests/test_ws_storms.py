"""The socket process (``SONICUS_PROCESS=ws``, gevent, started the production way) when many
sockets end at once: their clients drop them together (every lease on the users' caps is
given back, so each user gets new sockets, not 4429), or the process is told to stop (every
socket closes with 1001 and the process exits cleanly)."""

from __future__ import annotations

import signal
import time

import pytest
import redis as redis_lib

from sonicus.extensions import channel_prefix

USERS = 10
PER_USER = 10  # each user at the cap


@pytest.fixture
def ws_process(socket_process):
    """``ws_process()`` → (process, port, path of its output): one socket process, each user
    capped at ``PER_USER`` sockets."""
    return lambda: socket_process(WS_MAX_SOCKETS_PER_USER=str(PER_USER))


def _listeners(make_user, token_for, tag: str) -> list[tuple[int, str]]:
    """``USERS`` users: (id, token) each."""
    emails = [f"{tag}-{n}@example.com" for n in range(USERS)]
    return [(make_user(email).id, token_for(email)) for email in emails]


def _open_all(connect_ws, url: str, listeners) -> list:
    sockets = [connect_ws(url, token) for _uid, token in listeners for _ in range(PER_USER)]
    for ws in sockets:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    return sockets


def test_sockets_dropped_at_once_give_back_every_lease(
        app, ws_process, make_user, token_for, connect_ws, wait_for, test_redis_url):
    """A client network drop: every socket of ten users at their cap ends in one burst.
    Every lease is released within a couple of seconds, and each user can open as many
    sockets as before (a lease left behind would refuse one with 4429 for 90 s)."""
    _proc, port, output = ws_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    listeners = _listeners(make_user, token_for, "storm")
    leases = redis_lib.Redis.from_url(test_redis_url)
    keys = [f"{channel_prefix(app.config)}ws-sockets:{uid}" for uid, _token in listeners]

    for _round in range(2):  # a second storm, from the sockets opened after the first
        sockets = _open_all(connect_ws, url, listeners)
        assert [leases.zcard(key) for key in keys] == [PER_USER] * USERS

        for ws in sockets:  # the connections drop, no closing handshake
            ws.shutdown()
        assert wait_for(lambda: sum(leases.zcard(key) for key in keys) == 0, timeout=3)
    _open_all(connect_ws, url, listeners)  # each user at the cap again: none refused
    assert "Traceback" not in output.read_text()  # no error logged for a closed socket


def test_sigterm_closes_every_socket_with_1001_and_exits_cleanly(
        ws_process, make_user, token_for, connect_ws):
    proc, port, output = ws_process()
    sockets = _open_all(connect_ws, f"ws://127.0.0.1:{port}/ws/analytics",
                        _listeners(make_user, token_for, "sigterm"))

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    codes = []
    for ws in sockets:
        ws.settimeout(3)
        codes.append(ws.close_code())
    assert codes == [1001] * len(sockets)
    assert time.monotonic() - sent < 3
    for ws in sockets:
        ws.shutdown()
    assert proc.wait(20) == 0
    log = output.read_text()
    assert "Traceback" not in log, log
