"""/ws/analytics with real sockets: across two web processes, per user, auth, no leaks."""

from __future__ import annotations

import json
import logging
import struct
import threading
import time

import pytest
import requests
import websocket
from werkzeug.serving import make_server

from sonicus import clock
from tests.analytics_helpers import add_package, add_session, sign_in


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def connect(url, token=None, *, subprotocol=False, timeout=10):
    ws = websocket.WebSocket()
    ws.settimeout(timeout)
    if token and subprotocol:
        ws.connect(url, subprotocols=["bearer", token])
    elif token:
        ws.connect(f"{url}?access_token={token}")
    else:
        ws.connect(url)
    return ws


def receive_json(ws):
    opcode, data = ws.recv_data(control_frame=False)
    return json.loads(data)


def close_code(ws) -> int:
    """Read until the server's close frame; its status code."""
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", data[:2])[0]


def nothing_arrives(ws, seconds=1.0) -> bool:
    ws.settimeout(seconds)
    try:
        ws.recv()
    except websocket.WebSocketTimeoutException:
        return True
    finally:
        ws.settimeout(10)
    return False


def test_update_from_process_b_reaches_a_socket_on_process_a(
        app, two_web_processes, token_for, client, auth, db_session):
    from sonicus.tasks.worker import make_worker

    server_a, server_b = two_web_processes
    alice = sign_in(client, auth, "alice@example.com")
    bob = sign_in(client, auth, "bob@example.com")
    pkg = add_package(db_session, "lullaby")
    alice_token, bob_token = token_for("alice@example.com"), token_for("bob@example.com")

    alice_ws = connect(server_a.ws_url(), alice_token)
    bob_ws = connect(server_a.ws_url(), bob_token, subprotocol=True)
    assert bob_ws.subprotocol == "bearer"
    snapshot = receive_json(alice_ws)
    assert snapshot["type"] == "analytics.snapshot"
    assert snapshot["data"]["total_sessions"] == 0
    assert receive_json(bob_ws)["type"] == "analytics.snapshot"

    # Alice listens; her refresh is requested on process B and computed by a worker.
    add_session(db_session, alice, pkg, _today(), minutes=11)
    res = requests.post(server_b.http_url("/api/user/analytics/refresh"),
                        headers={"Authorization": f"Bearer {alice_token}"}, timeout=10)
    assert res.status_code == 202
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)

    update = receive_json(alice_ws)
    assert update["type"] == "analytics.updated"
    assert update["data"]["total_sessions"] == 1
    assert update["data"]["total_minutes"] == 11.0
    assert nothing_arrives(bob_ws)  # never someone else's update

    add_session(db_session, bob, pkg, _today(), minutes=4)
    requests.post(server_b.http_url("/api/user/analytics/refresh"),
                  headers={"Authorization": f"Bearer {bob_token}"}, timeout=10)
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    bob_update = receive_json(bob_ws)
    assert bob_update["type"] == "analytics.updated"
    assert bob_update["data"]["total_minutes"] == 4.0
    assert nothing_arrives(alice_ws)
    alice_ws.close()
    bob_ws.close()


def test_sockets_on_both_processes_get_the_users_update(
        app, two_web_processes, token_for, client, auth, db_session):
    from sonicus.tasks.worker import make_worker

    alice = sign_in(client, auth, "alice@example.com")
    token = token_for("alice@example.com")
    sockets = [connect(server.ws_url(), token) for server in two_web_processes]
    for ws in sockets:
        assert receive_json(ws)["type"] == "analytics.snapshot"
    add_session(db_session, alice, add_package(db_session, "drift"), _today(), minutes=2)
    res = requests.post(two_web_processes[1].http_url("/api/user/analytics/refresh"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert res.status_code == 202
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    for ws in sockets:
        message = receive_json(ws)
        assert message["type"] == "analytics.updated"
        assert message["data"]["total_sessions"] == 1
        ws.close()


@pytest.mark.parametrize("kind", ["garbage", "expired", "wrong_audience", "none",
                                  "garbage_subprotocol"])
def test_a_bad_token_closes_with_4401(two_web_processes, idp, kind):
    url = two_web_processes[0].ws_url()
    if kind == "none":
        ws = connect(url)
    elif kind == "garbage_subprotocol":
        ws = connect(url, "not-a-jwt", subprotocol=True)
    else:
        token = {"garbage": "abc.def.ghi",
                 "expired": idp.token(email="late@example.com", lifetime=-3600),
                 "wrong_audience": idp.token(email="x@example.com", aud="someone-else")}[kind]
        ws = connect(url, token)
    assert close_code(ws) == 4401
    ws.close()


def test_a_listener_outside_the_required_group_is_refused(two_web_processes, token_for):
    ws = connect(two_web_processes[0].ws_url(), token_for("outsider@example.com", groups=()))
    assert close_code(ws) == 4403
    ws.close()


class InProcessServer:
    """The test's own app served on a thread (to look inside its socket registry)."""

    def __init__(self, flask_app):
        self.app = flask_app
        self.server = make_server("127.0.0.1", 0, flask_app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/ws/analytics"):
        return f"ws://127.0.0.1:{self.server.server_port}{path}"

    def stop(self):
        self.server.shutdown()


def wait_for(predicate, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_a_closed_socket_leaves_nothing_behind(app, token_for, client, auth):
    from sonicus.realtime.broker import get_broker

    sign_in(client, auth, "leak@example.com")
    broker = get_broker(app)
    server = InProcessServer(app)
    try:
        sockets = [connect(server.url(), token_for("leak@example.com")) for _ in range(5)]
        for ws in sockets:
            assert receive_json(ws)["type"] == "analytics.snapshot"
        assert broker.local_socket_count() == 5 and broker.local_user_count() == 1
        assert broker.listener_starts == 1  # one subscriber for the whole process
        for ws in sockets[:3]:
            ws.close()
        assert wait_for(lambda: broker.local_socket_count() == 2)
        sockets[3].sock.close()  # a client that vanishes without a close frame
        sockets[4].close()
        assert wait_for(lambda: broker.local_socket_count() == 0)
        assert broker.local_user_count() == 0
        assert broker._sockets == {}
    finally:
        server.stop()


def test_in_process_fan_out_without_redis(token_for, client, auth, db_session, make_config):
    """The embedded default: no Redis, the refresh runs inline and reaches the socket."""
    from sonicus import create_app

    lite = create_app(make_config(REDIS_URL=None))
    user = sign_in(client, auth, "solo@example.com")
    pkg = add_package(db_session, "hearth")
    server = InProcessServer(lite)
    try:
        token = token_for("solo@example.com")
        ws = connect(server.url(), token)
        assert receive_json(ws)["type"] == "analytics.snapshot"
        add_session(db_session, user, pkg, _today(), minutes=8)
        res = lite.test_client().post("/api/user/analytics/refresh",
                                      headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 202
        message = receive_json(ws)
        assert message["type"] == "analytics.updated"
        assert message["data"]["total_minutes"] == 8.0
        ws.close()
    finally:
        server.stop()


def test_keep_alive_pings(token_for, client, auth, make_config):
    from sonicus import create_app

    pinging = create_app(make_config())
    pinging.config["SOCK_SERVER_OPTIONS"] = {**pinging.config["SOCK_SERVER_OPTIONS"],
                                             "ping_interval": 0.3}
    sign_in(client, auth, "ping@example.com")
    server = InProcessServer(pinging)
    try:
        ws = connect(server.url(), token_for("ping@example.com"))
        assert receive_json(ws)["type"] == "analytics.snapshot"
        opcode, _ = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_PING
        ws.close()
    finally:
        server.stop()


def test_tokens_in_socket_query_strings_stay_out_of_logs(app, token_for, client, auth, caplog,
                                                        monkeypatch):
    # The migration's logging setup disables loggers that existed before it ran.
    monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", False)
    sign_in(client, auth, "quiet@example.com")
    token = token_for("quiet@example.com")
    server = InProcessServer(app)
    try:
        with caplog.at_level(logging.INFO, logger="werkzeug"):
            ws = connect(server.url(), token)
            receive_json(ws)
            ws.close()
            bad = connect(server.url(), "abc.def.ghi")
            close_code(bad)
            bad.close()
            time.sleep(0.3)
        text = "\n".join(r.getMessage() for r in caplog.records)
        assert "/ws/analytics" in text
        assert token not in text and "abc.def.ghi" not in text
        assert "access_token=[redacted]" in text
    finally:
        server.stop()


def test_sockets_past_the_cap_are_refused_and_http_keeps_working(token_for, client, auth,
                                                                 make_config):
    """Each socket holds a server thread: past the cap a new one is told to come back later."""
    from sonicus import create_app

    capped = create_app(make_config(WS_MAX_SOCKETS_PER_PROCESS=2))
    sign_in(client, auth, "many@example.com")
    server = InProcessServer(capped)
    token = token_for("many@example.com")
    try:
        held = [connect(server.url(), token) for _ in range(2)]
        for ws in held:
            assert receive_json(ws)["type"] == "analytics.snapshot"
        refused = connect(server.url(), token)
        assert close_code(refused) == 1013
        res = requests.get(f"http://127.0.0.1:{server.server.server_port}/api/health",
                           timeout=5)
        assert res.status_code == 200
        held[0].close()
        assert wait_for(lambda: _count(capped) == 1)
        again = connect(server.url(), token)
        assert receive_json(again)["type"] == "analytics.snapshot"
        for ws in (held[1], again):
            ws.close()
    finally:
        server.stop()


def _count(flask_app):
    from sonicus.realtime.broker import get_broker

    return get_broker(flask_app).local_socket_count()
