"""/ws/analytics with real sockets: across two web processes, per user, auth, no leaks."""

from __future__ import annotations

import logging
import struct
import time

import pytest
import requests
import websocket

from sonicus import clock


def _today():
    return clock.local_day(clock.now(), "UTC", 0)


def test_update_from_process_b_reaches_a_socket_on_process_a(
        app, two_web_processes, token_for, db_session, make_user, make_package, make_session,
        connect_ws):
    from sonicus.tasks.worker import make_worker

    server_a, server_b = two_web_processes
    alice = make_user("alice@example.com").id
    bob = make_user("bob@example.com").id
    pkg = make_package("lullaby").id
    alice_token, bob_token = token_for("alice@example.com"), token_for("bob@example.com")

    alice_ws = connect_ws(server_a.ws_url(), alice_token)
    bob_ws = connect_ws(server_a.ws_url(), bob_token, subprotocol=True)
    assert bob_ws.subprotocol == "bearer"
    snapshot = alice_ws.receive_json()
    assert snapshot["type"] == "analytics.snapshot"
    assert snapshot["data"]["total_sessions"] == 0
    assert bob_ws.receive_json()["type"] == "analytics.snapshot"

    # Alice listens; her refresh is requested on process B and computed by a worker.
    make_session(alice, pkg, _today(), minutes=11)
    res = requests.post(server_b.http_url("/api/user/analytics/refresh"),
                        headers={"Authorization": f"Bearer {alice_token}"}, timeout=10)
    assert res.status_code == 202
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)

    update = alice_ws.receive_json()
    assert update["type"] == "analytics.updated"
    assert update["data"]["total_sessions"] == 1
    assert update["data"]["total_minutes"] == 11.0
    assert bob_ws.nothing_arrives()  # never someone else's update

    make_session(bob, pkg, _today(), minutes=4)
    requests.post(server_b.http_url("/api/user/analytics/refresh"),
                  headers={"Authorization": f"Bearer {bob_token}"}, timeout=10)
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    bob_update = bob_ws.receive_json()
    assert bob_update["type"] == "analytics.updated"
    assert bob_update["data"]["total_minutes"] == 4.0
    assert alice_ws.nothing_arrives()
    alice_ws.close()
    bob_ws.close()


def test_sockets_on_both_processes_get_the_users_update(app, two_web_processes, token_for,
                                                        db_session, make_user, make_package,
                                                        make_session, connect_ws):
    from sonicus.tasks.worker import make_worker

    alice = make_user("alice@example.com").id
    token = token_for("alice@example.com")
    sockets = [connect_ws(server.ws_url(), token) for server in two_web_processes]
    for ws in sockets:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    make_session(alice, make_package("drift").id, _today(), minutes=2)
    res = requests.post(two_web_processes[1].http_url("/api/user/analytics/refresh"),
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert res.status_code == 202
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    for ws in sockets:
        message = ws.receive_json()
        assert message["type"] == "analytics.updated"
        assert message["data"]["total_sessions"] == 1
        ws.close()


@pytest.mark.parametrize("kind", ["garbage", "expired", "wrong_audience", "none",
                                  "garbage_subprotocol"])
def test_a_bad_token_closes_with_4401(two_web_processes, idp, kind, connect_ws):
    url = two_web_processes[0].ws_url()
    if kind == "none":
        ws = connect_ws(url)
    elif kind == "garbage_subprotocol":
        ws = connect_ws(url, "not-a-jwt", subprotocol=True)
    else:
        token = {"garbage": "abc.def.ghi",
                 "expired": idp.token(email="late@example.com", lifetime=-3600),
                 "wrong_audience": idp.token(email="x@example.com", aud="someone-else")}[kind]
        ws = connect_ws(url, token)
    assert ws.close_code() == 4401
    ws.close()


def test_the_socket_address_asked_without_a_handshake_names_the_upgrade(client):
    res = client.get("/ws/analytics")
    body = res.get_json()
    assert res.status_code == 400 and body["success"] is False, body
    assert body["errors"] == ["Upgrade: must be websocket (a WebSocket handshake)."], body


@pytest.mark.parametrize("header, value", [
    ("Sec-WebSocket-Version", None), ("Sec-WebSocket-Version", "8"),
    ("Sec-WebSocket-Key", None), ("Host", None)])
def test_a_handshake_with_a_missing_or_unsupported_header_is_a_400_naming_it(
        app, token_for, make_user, serve_in_process, header, value):
    """A malformed upgrade request is the client's error (400 in the envelope, naming the
    header), never a 500 on a real server."""
    import http.client
    import json

    make_user("handshake@example.com")
    server = serve_in_process(app)
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
               "Authorization": f"Bearer {token_for('handshake@example.com')}"}
    if value is not None:
        headers[header] = value
    conn = http.client.HTTPConnection("127.0.0.1", server.server.server_port, timeout=10)
    try:
        conn.putrequest("GET", "/ws/analytics", skip_host=True)
        if header != "Host":
            conn.putheader("Host", f"127.0.0.1:{server.server.server_port}")
        for name, text in headers.items():
            if not (name == header and value is None):
                conn.putheader(name, text)
        conn.endheaders()
        res = conn.getresponse()
        raw = res.read()
    finally:
        conn.close()
    assert res.status == 400, raw
    body = json.loads(raw)
    assert body["success"] is False and body["code"] == "validation_error"
    assert body["errors"][0].startswith(f"{header}: "), body
    if header == "Sec-WebSocket-Version":
        assert res.getheader("Sec-WebSocket-Version") == "13"


def test_a_listener_outside_the_required_group_is_refused(two_web_processes, token_for, connect_ws):
    ws = connect_ws(two_web_processes[0].ws_url(), token_for("outsider@example.com", groups=()))
    assert ws.close_code() == 4403
    ws.close()


def test_a_closed_socket_leaves_nothing_behind(app, token_for, make_user, connect_ws,
                                               serve_in_process, wait_for):
    from sonicus.realtime.broker import get_broker

    make_user("leak@example.com")
    broker = get_broker(app)
    server = serve_in_process(app)
    sockets = [connect_ws(server.url(), token_for("leak@example.com")) for _ in range(5)]
    for ws in sockets:
        assert ws.receive_json()["type"] == "analytics.snapshot"
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


def test_in_process_fan_out_without_redis(token_for, db_session, make_config, make_user,
                                          make_package, make_session, connect_ws, serve_in_process):
    """The embedded default: no Redis, the refresh runs inline and reaches the socket."""
    from sonicus import create_app

    lite = create_app(make_config(REDIS_URL=None))
    user = make_user("solo@example.com").id
    pkg = make_package("hearth").id
    server = serve_in_process(lite)
    token = token_for("solo@example.com")
    ws = connect_ws(server.url(), token)
    assert ws.receive_json()["type"] == "analytics.snapshot"
    make_session(user, pkg, _today(), minutes=8)
    res = lite.test_client().post("/api/user/analytics/refresh",
                                  headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 202
    message = ws.receive_json()
    assert message["type"] == "analytics.updated"
    assert message["data"]["total_minutes"] == 8.0
    ws.close()


@pytest.fixture
def pinging_app(make_config):
    """``pinging_app()``: an app whose sockets are pinged after 0.3 s of silence."""

    def make():
        from sonicus import create_app

        app = create_app(make_config())
        app.config["SOCK_SERVER_OPTIONS"] = {**app.config["SOCK_SERVER_OPTIONS"],
                                             "ping_interval": 0.3}
        return app

    return make


def test_keep_alive_pings(token_for, pinging_app, make_user, connect_ws, serve_in_process):
    pinging = pinging_app()
    make_user("ping@example.com")
    server = serve_in_process(pinging)
    ws = connect_ws(server.url(), token_for("ping@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    opcode, _ = ws.recv_data(control_frame=True)
    assert opcode == websocket.ABNF.OPCODE_PING
    ws.close()


def test_a_peer_that_stops_answering_pings_is_closed(token_for, pinging_app, make_user,
                                                     connect_ws, serve_in_process, wait_for):
    from sonicus.realtime.broker import get_broker

    pinging = pinging_app()
    make_user("mute@example.com")
    server = serve_in_process(pinging)
    ws = connect_ws(server.url(), token_for("mute@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    time.sleep(1.2)  # read nothing: the ping goes unanswered
    opcodes = []
    while not opcodes or opcodes[-1] != websocket.ABNF.OPCODE_CLOSE:
        frame = ws.recv_frame()  # no automatic pong
        opcodes.append(frame.opcode)
    assert opcodes == [websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_CLOSE]
    assert struct.unpack("!H", frame.data[:2])[0] == 1008
    # the process's keep-alive sweep closed it: its reader ended and nothing is left counted
    assert wait_for(lambda: get_broker(pinging).local_socket_count() == 0)
    assert get_broker(pinging)._sockets == {}


def test_a_peer_that_answers_pings_stays_open(token_for, pinging_app, make_user, connect_ws,
                                              serve_in_process):
    """Pinged every interval it stays silent, a peer that answers is kept and still gets its
    updates; a silent one next to it is closed."""
    from sonicus.realtime.broker import get_broker

    pinging = pinging_app()
    user = make_user("lively@example.com").id
    server = serve_in_process(pinging)
    lively = connect_ws(server.url(), token_for("lively@example.com"))
    mute = connect_ws(server.url(), token_for("lively@example.com"))
    for ws in (lively, mute):
        assert ws.receive_json()["type"] == "analytics.snapshot"
    lively.settimeout(0.1)
    pings = 0
    until = time.monotonic() + 1.5
    while time.monotonic() < until:
        try:
            opcode, _ = lively.recv_data(control_frame=True)
        except websocket.WebSocketTimeoutException:
            continue
        if opcode == websocket.ABNF.OPCODE_PING:
            pings += 1
            lively.pong(b"")
    assert pings >= 2
    assert get_broker(pinging).local_socket_count() == 1  # the mute one was closed
    assert get_broker(pinging).deliver_local(user, '{"type":"analytics.updated"}') == 1
    lively.settimeout(5)
    assert lively.receive_json() == {"type": "analytics.updated"}


def test_client_pings_are_answered_and_its_close_echoed(app, token_for, make_user, connect_ws,
                                                        serve_in_process):
    make_user("chatty@example.com")
    server = serve_in_process(app)
    ws = connect_ws(server.url(), token_for("chatty@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    ws.ping(b"are you there")
    frame = ws.recv_frame()
    assert (frame.opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
    ws.send("ignored")  # the client has nothing to say: messages are read and dropped
    ws.send_close(1000, b"bye")
    frame = ws.recv_frame()
    assert frame.opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 1000


def test_tokens_in_socket_query_strings_stay_out_of_logs(app, token_for, caplog, monkeypatch,
                                                         make_user, connect_ws, serve_in_process,
                                                         wait_for):
    # The migration's logging setup disables loggers that existed before it ran.
    monkeypatch.setattr(logging.getLogger("werkzeug"), "disabled", False)
    make_user("quiet@example.com")
    token = token_for("quiet@example.com")
    server = serve_in_process(app)
    with caplog.at_level(logging.INFO, logger="werkzeug"):
        ws = connect_ws(server.url(), token)
        ws.receive_json()
        ws.close()
        bad = connect_ws(server.url(), "abc.def.ghi")
        bad.close_code()
        bad.close()
        # both requests are logged once their sockets are done
        wait_for(lambda: sum("/ws/analytics" in r.getMessage() for r in caplog.records) >= 2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "/ws/analytics" in text
    assert token not in text and "abc.def.ghi" not in text
    assert "access_token=[redacted]" in text


def test_sockets_past_the_cap_are_refused_and_http_keeps_working(
        token_for, make_config, make_user, connect_ws, serve_in_process, wait_for):
    """Each socket holds a server thread: past the cap a new one is told to come back later."""
    from sonicus import create_app

    capped = create_app(make_config(WS_MAX_SOCKETS_PER_PROCESS=2))
    make_user("many@example.com")
    server = serve_in_process(capped)
    token = token_for("many@example.com")
    held = [connect_ws(server.url(), token) for _ in range(2)]
    for ws in held:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    refused = connect_ws(server.url(), token)
    assert refused.close_code() == 1013
    res = requests.get(server.http_url("/api/health"), timeout=5)
    assert res.status_code == 200
    held[0].close()
    assert wait_for(lambda: _count(capped) == 1)
    again = connect_ws(server.url(), token)
    assert again.receive_json()["type"] == "analytics.snapshot"
    for ws in (held[1], again):
        ws.close()


def _count(flask_app):
    from sonicus.realtime.broker import get_broker

    return get_broker(flask_app).local_socket_count()


def test_the_keepalive_sweep_never_waits_for_a_stuck_socket(app):
    """A socket whose write is stuck (its peer reads nothing: the send lock stays held) does not
    hold up the sweep: the others are pinged, and it is hung up once an interval has passed
    without an answer."""
    import threading

    from sonicus.realtime.broker import get_broker
    from sonicus.realtime.connection import Connection

    class FakeSocket:
        def __init__(self):
            self.sent, self.shut = [], False

        def sendall(self, data):
            self.sent.append(data)

        def send(self, data, flags=0):
            self.sent.append(bytes(data))
            return len(data)

        def shutdown(self, how):
            self.shut = True

    class FakeWs:
        def __init__(self):
            from wsproto import ConnectionType
            from wsproto.connection import Connection as Protocol

            self.sock, self.connected = FakeSocket(), True
            self.ws = Protocol(ConnectionType.SERVER)

        def close(self, reason=None, message=None):
            self.connected = False

    broker = get_broker(app)
    stuck, quiet = Connection(FakeWs(), 900101), Connection(FakeWs(), 900102)
    with broker._lock:
        for conn in (stuck, quiet):
            broker._sockets.setdefault(conn.user_id, set()).add(conn)
    try:
        broker.keepalive.interval = 10.0
        for conn in (stuck, quiet):
            conn.heard_from()
            conn.kept_alive = True
        stuck.send_lock.acquire()  # a write to it that never ends
        sweeps = []
        start = time.monotonic()
        sweep = threading.Thread(target=lambda: sweeps.append(
            [broker.keepalive.sweep(now=start + 11), broker.keepalive.sweep(now=start + 22)]))
        sweep.start()
        sweep.join(5)
        assert not sweep.is_alive()
        assert sweeps == [[(1, 0), (0, 2)]]  # the quiet one pinged; both hung up at last
        assert quiet.ws.sock.sent and not stuck.ws.sock.sent
        assert stuck.ws.sock.shut and stuck.closed
    finally:
        stuck.send_lock.release()
        for conn in (stuck, quiet):
            broker.unregister(conn)


CHATTY_PEERS_FAN_OUT = '''
from gevent import monkey

monkey.patch_all()

import socket, sys, time, types

import flask, gevent
from wsproto import ConnectionType
from wsproto.connection import Connection as Protocol
from wsproto.events import Ping

from sonicus.realtime import broker as broker_module
from sonicus.realtime.broker import ADMITTED, Broker
from sonicus.realtime.connection import Connection
from sonicus.realtime.loop import read_after_the_rest
from sonicus.realtime.routes import read_until_closed

broker_module.DELIVERY_SLICE_SECONDS = 0  # the loop gets a turn after every write
broker = Broker(flask.Flask("fan-out"), lambda user_id: None)


def register(sock, user_id):
    ws = types.SimpleNamespace(sock=sock, ws=Protocol(ConnectionType.SERVER), connected=True,
                               ping_interval=0, max_message_size=0)
    conn = Connection(ws, user_id)
    assert broker.admit(conn, 10_000, 10_000) == ADMITTED
    return ws, conn


def keep_pinging(sock):
    # a peer that pings again as soon as its pong is in (it stands for a browser elsewhere:
    # read after the rest, like the process's own sockets)
    read_after_the_rest(sock)
    protocol = Protocol(ConnectionType.CLIENT)
    while True:
        sock.sendall(protocol.send(Ping(b"p")))
        if not sock.recv(64):
            return


for _ in range(4):
    mine, theirs = socket.socketpair()
    gevent.spawn(read_until_closed, *register(mine, 2), broker)
    gevent.spawn(keep_pinging, theirs)
receivers = []
for _ in range(300):
    mine, theirs = socket.socketpair()
    register(mine, 1)
    receivers.append(theirs)
gevent.sleep(0.05)  # the pings and pongs go on
started = time.monotonic()
delivery = gevent.spawn(broker.deliver_local, 1, "update")
delivery.join(timeout=5)
took = time.monotonic() - started
got = 0
for sock in receivers:
    sock.setblocking(False)
    try:
        got += sock.recv(64).endswith(b"update")
    except BlockingIOError:  # nothing came
        pass
print(delivery.value, got, round(took, 3), flush=True)
'''


def test_a_fan_out_goes_on_while_other_sockets_keep_talking():
    """Under gevent (the socket process), a fan-out gives the event loop a turn between its
    writes and goes on once the loop is idle: sockets whose peers keep sending (the pongs of a
    keep-alive pass, a chatty client) must not hold it back. Their readers were woken at the
    loop's default priority, so a turn with one of them ready was never idle: the update
    stopped after its first write for as long as the others talked (here: for ever)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", CHATTY_PEERS_FAN_OUT], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    sent, got, took = done.stdout.split()
    assert (int(sent), int(got)) == (300, 300)
    assert float(took) < 1.0


def test_a_session_start_reaches_the_users_live_analytics(app, two_web_processes, token_for,
                                                          db_session, make_user, make_package,
                                                          connect_ws):
    """A dashboard left open sees today's sessions go up when a session starts (on another
    process), not only once it ends: the start asks for a refresh after its commit."""
    from sonicus.tasks.worker import make_worker

    make_user("starter@example.com")
    package = make_package("first-light").id
    token = token_for("starter@example.com")
    ws = connect_ws(two_web_processes[0].ws_url(), token)
    snapshot = ws.receive_json()
    assert snapshot["type"] == "analytics.snapshot"
    assert snapshot["data"]["sessions_today"] == 0
    res = requests.post(two_web_processes[1].http_url("/api/user/sessions"),
                        json={"package_id": package},
                        headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert res.status_code == 201, res.text
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    update = ws.receive_json()
    assert update["type"] == "analytics.updated"
    assert update["data"]["sessions_today"] == 1
    usage = requests.get(two_web_processes[1].http_url("/api/user/subscription"),
                         headers={"Authorization": f"Bearer {token}"},
                         timeout=10).json()["data"]["usage"]
    assert usage["sessions_today"] == update["data"]["sessions_today"]
    ws.close()


def test_figures_computed_before_a_settings_change_never_reach_the_socket_after_it(
        app, two_web_processes, token_for, make_user, make_package, make_session, connect_ws,
        monkeypatch):
    """A refresh reads the user (streaks shown), the user hides streaks on another process,
    then the refresh publishes: the open dashboard must not show the streak just hidden (before,
    that update arrived after the change and contradicted it). The next refresh, under the new
    settings, does arrive."""
    from sonicus.services import analytics

    server_a, server_b = two_web_processes
    user = make_user("kim@example.com").id
    make_session(user, make_package("tide").id, _today(), minutes=12)
    token = token_for("kim@example.com")
    ws = connect_ws(server_a.ws_url(), token)
    assert ws.receive_json()["type"] == "analytics.snapshot"

    publish = analytics.publish_to_user

    def publish_after_a_settings_change(user_id, message, **kwargs):
        answer = requests.put(server_b.http_url("/api/user/profile"),
                              json={"preferences": {"show_streaks": False}},
                              headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        return publish(user_id, message, **kwargs)

    monkeypatch.setattr(analytics, "publish_to_user", publish_after_a_settings_change)
    with app.app_context():
        stale = analytics.refresh_user_analytics(user)
    assert stale["current_streak_days"] is not None  # computed with streaks shown
    monkeypatch.setattr(analytics, "publish_to_user", publish)
    assert ws.nothing_arrives(1.0)

    with app.app_context():
        analytics.refresh_user_analytics(user)
    fresh = ws.receive_json()
    assert fresh["type"] == "analytics.updated"
    assert fresh["data"]["current_streak_days"] is None
    assert fresh["data"]["total_minutes"] == 12.0
