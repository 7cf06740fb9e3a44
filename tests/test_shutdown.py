"""Graceful shutdown: SIGTERM to a real gunicorn closes every open socket with 1001 (clients
reconnect elsewhere) within a second, gives back their leases on the user's cap, and the
process exits well inside Kubernetes' 30 s."""

from __future__ import annotations

import signal
import socket
import struct
import time
from pathlib import Path

import redis as redis_lib
from processes import start_gunicorn

from sonicus.extensions import channel_prefix

ROOT = Path(__file__).resolve().parent.parent


def test_sigterm_closes_open_sockets_with_1001_at_once(idp, test_database_url, test_redis_url,
                                                      tmp_path, token_for, make_user,
                                                      connect_ws):
    proc, port = start_gunicorn(ROOT, idp, test_database_url, test_redis_url,
                                tmp_path / "metrics", threads=8)
    try:
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


class _ServerSide:
    """What a ``Connection`` needs of a flask-sock socket: the server's end of a socket pair,
    and close frames as wsproto writes them."""

    def __init__(self, sock):
        self.sock = sock
        self.connected = True
        self.ws = self

    def send(self, event) -> bytes:
        reason = event.reason.encode()
        return struct.pack("!BBH", 0x88, 2 + len(reason), event.code) + reason


def test_a_shutdown_closes_every_socket_within_a_second_however_many_peers_read_nothing(
        make_config):
    """Shutting down with many clients that stopped reading (their buffers full): the clients
    that read get their 1001 and the whole close is over within about a second. Before, the
    closes were written one after the other, each stuck peer waited for a second: 8 of them
    held the shutdown 8 s (a thousand, minutes) and the readers' 1001 behind them."""
    from sonicus import create_app
    from sonicus.realtime.broker import ADMITTED, get_broker
    from sonicus.realtime.connection import Connection

    broker = get_broker(create_app(make_config(REDIS_URL=None)))
    pairs, conns = [], []
    for n in range(10):
        server, client = socket.socketpair()
        pairs.append((server, client))
        if n < 8:  # a peer that reads nothing: what the server writes has nowhere to go
            server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            try:
                while True:
                    server.send(b"\x81\x7e\xff\xff" + b"x" * 65535, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        conn = Connection(_ServerSide(server), 4200 + n)
        assert broker.admit(conn, per_process=100, per_user=10) == ADMITTED
        conns.append(conn)
    try:
        started = time.monotonic()
        assert broker.close_all(1001, "server shutting down") == 10
        took = time.monotonic() - started
        for _server, client in pairs[8:]:  # the peers that read get their close
            client.settimeout(2)
            assert client.recv(64)[:4] == b"\x88\x16\x03\xe9"
        assert took < 3, f"the closes took {took:.1f} s"
        assert broker.local_socket_count() == 0
        assert all(conn.closed for conn in conns)
    finally:
        for server, client in pairs:
            server.close()
            client.close()
