"""The socket process (``SONICUS_PROCESS=ws``, gevent, started the production way) against
peers that misbehave: a client that never reads what it is sent (its updates, its pongs), the
process told to stop while one holds a socket, frames of every hostile kind. Other users'
sockets go on receiving their updates, and every socket's lease on its user's cap is given
back."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
import redis as redis_lib
import websocket

from sonicus.extensions import channel_prefix

BIG = "x" * 256 * 1024  # one update of 256 KiB


def _leases(app, test_redis_url, user_id: int) -> int:
    key = f"{channel_prefix(app.config)}ws-sockets:{user_id}"
    return redis_lib.Redis.from_url(test_redis_url).zcard(key)


@pytest.fixture
def never_reading():
    """``never_reading(url, token)`` → a socket whose client reads its snapshot, then nothing
    more (a small receive buffer, set before it connects, so that what the server writes to it
    soon has nowhere to go). Shut after the test."""
    sockets = []

    def connect(url: str, token: str):
        ws = websocket.WebSocket(sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
        sockets.append(ws)
        ws.settimeout(10)
        ws.connect(f"{url}?access_token={token}")
        assert json.loads(ws.recv())["type"] == "analytics.snapshot"
        return ws

    yield connect
    for ws in sockets:
        ws.shutdown()


def _flood(app, user_id: int, count: int = 40) -> None:
    from sonicus.realtime.publish import publish_to_user

    with app.app_context():
        for _ in range(count):
            publish_to_user(user_id, {"type": "analytics.updated", "data": {"big": BIG}})


def test_a_client_that_never_reads_does_not_hold_up_other_users_updates(
        app, socket_process, make_user, token_for, connect_ws, never_reading, wait_for,
        test_redis_url):
    """A client that stops reading (its buffers full) while updates keep coming for it: the
    next update of another user on the same process still arrives at once, not after the
    keep-alive gave up on the stuck one (up to two ping intervals, 50 s, during which the
    process delivered nothing to anyone). The stuck socket is dropped and its lease given
    back."""
    from sonicus.realtime.publish import publish_to_user

    _proc, port, output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    stuck_user = make_user("never-reads@example.com").id
    other_user = make_user("reads-fine@example.com").id
    never_reading(url, token_for("never-reads@example.com"))
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


def test_sigterm_closes_with_1001_and_gives_back_every_lease_despite_a_client_that_never_reads(
        app, socket_process, make_user, token_for, connect_ws, never_reading, test_redis_url):
    """SIGTERM while one client has stopped reading: every other socket still gets its 1001
    at once, the process exits cleanly, and no lease is left behind (a lease left would
    refuse the user's sockets elsewhere with 4429 for 90 s)."""
    proc, port, output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    stuck_user = make_user("stuck-at-shutdown@example.com").id
    users = [make_user(f"leaving-{n}@example.com").id for n in range(3)]
    never_reading(url, token_for("stuck-at-shutdown@example.com"))
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


def _frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
           length: int | None = None) -> bytes:
    """A client frame, as raw bytes (``length``: the length its header claims)."""
    import struct

    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[n % 4] for n, b in enumerate(payload))


HOSTILE_FRAMES = {
    # what the client sends -> the close code it gets (None: the socket stays open)
    "binary": ([_frame(0x2, b"\x00\xff" * 50)], None),
    "malformed-json": ([_frame(0x1, b'{"type": "analytics.subscribe", "user_id": 1')], None),
    "another-users-id": ([_frame(0x1, b'{"user_id": 1, "type": "subscribe"}')], None),
    "too-big": ([_frame(0x1, b"x" * 70_000)], 1009),
    "too-big-in-fragments": ([_frame(0x1, b"x" * 30_000, fin=False),
                              _frame(0x0, b"x" * 30_000, fin=False),
                              _frame(0x0, b"x" * 30_000)], 1009),
    "huge-length-claimed": ([_frame(0x2, b"x" * 70_000, length=1 << 62)], 1009),
    "unmasked": ([_frame(0x1, b"hello", mask=False)], 1002),
    "bad-utf8": ([_frame(0x1, b"\xff\xfe\xfd")], 1007),
    "reserved-opcode": ([_frame(0x3, b"?")], 1002),
    "ping-too-long": ([_frame(0x9, b"p" * 200)], 1002),
    "fragmented-ping": ([_frame(0x9, b"p", fin=False)], 1002),
    "continuation-first": ([_frame(0x0, b"orphan")], 1002),
}


@pytest.mark.parametrize("kind", list(HOSTILE_FRAMES))
def test_hostile_frames_never_crash_the_socket_process_nor_keep_a_place(
        app, socket_process, make_user, token_for, connect_ws, wait_for, test_redis_url, kind):
    """What a client sends: ignored (binary, JSON of any shape, asking for another user's
    figures), or the socket closed with the protocol's code (too big 1009, not masked or not
    a frame 1002, not UTF-8 1007). Either way the process goes on serving another user, and a
    closed socket gives its place back."""
    from sonicus.realtime.publish import publish_to_user

    _proc, port, output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    sender = make_user("sends-things@example.com").id
    victim = make_user("minds-own-business@example.com").id
    bystander = connect_ws(url, token_for("minds-own-business@example.com"))
    assert bystander.receive_json()["type"] == "analytics.snapshot"
    ws = connect_ws(url, token_for("sends-things@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    frames, code = HOSTILE_FRAMES[kind]
    for frame in frames:
        ws.sock.sendall(frame)

    with app.app_context():
        publish_to_user(victim, {"type": "analytics.updated", "data": {"mine": True}})
        publish_to_user(sender, {"type": "analytics.updated", "data": {"yours": True}})
    assert bystander.receive_json() == {"type": "analytics.updated", "data": {"mine": True}}
    if code is None:
        assert ws.receive_json() == {"type": "analytics.updated", "data": {"yours": True}}
        assert _leases(app, test_redis_url, sender) == 1
    else:  # the close says why (also with the rest of a message too big unread)
        assert ws.close_code() == code
        assert wait_for(lambda: _leases(app, test_redis_url, sender) == 0)
    assert bystander.nothing_arrives(0.3)
    assert "Traceback" not in output.read_text()


def test_a_ping_flood_from_a_client_that_never_reads_is_hung_up(
        app, socket_process, make_user, token_for, connect_ws, never_reading, wait_for,
        test_redis_url):
    """A client that sends pings as fast as it can and reads none of the pongs: the process
    hangs it up once its pongs have nowhere to go (and gives its place back), and another
    user's update on the same process arrives meanwhile."""
    from sonicus.realtime.publish import publish_to_user

    _proc, port, output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    flooder = make_user("pings-forever@example.com").id
    other_user = make_user("next-door@example.com").id
    other = connect_ws(url, token_for("next-door@example.com"))
    assert other.receive_json()["type"] == "analytics.snapshot"
    ws = never_reading(url, token_for("pings-forever@example.com"))
    ping = _frame(0x9, b"p" * 125)
    ws.sock.settimeout(1)
    started, dropped = time.monotonic(), False
    while time.monotonic() - started < 20:
        try:
            ws.sock.sendall(ping * 64)
        except TimeoutError:  # the server reads nothing for now: go on
            continue
        except OSError:  # hung up
            dropped = True
            break
    assert dropped
    with app.app_context():
        publish_to_user(other_user, {"type": "analytics.updated", "data": {"n": 2}})
    assert other.receive_json() == {"type": "analytics.updated", "data": {"n": 2}}
    assert wait_for(lambda: _leases(app, test_redis_url, flooder) == 0, timeout=5)
    assert "Traceback" not in output.read_text()


def test_a_client_that_never_answers_the_servers_close_is_hung_up(
        app, socket_process, make_user, token_for, connect_ws):
    """An account suspended (or erased) while its sockets are open: each gets its close (4403),
    and a client that never answers it (nor hangs up) is hung up within seconds. Before, the
    server waited for its answer for ever: a connection, its greenlet and its place in the
    process's pool of connections held for good, by a client that erased its account and
    signed in again as often as it liked."""
    from sonicus.realtime.publish import close_user_sockets

    _proc, port, output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    user_id = make_user("never-answers@example.com").id
    ws = connect_ws(url, token_for("never-answers@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    with app.app_context():
        close_user_sockets(user_id)
    ws.sock.settimeout(20)
    # read as raw bytes: the client library would answer the close
    assert ws.sock.recv(2 + 2 + len("account suspended"))[:4] == b"\x88\x13\x11\x33"
    started = time.monotonic()
    try:
        rest = ws.sock.recv(64)
    except ConnectionResetError:
        rest = b""
    assert rest == b""  # the server hung up
    assert time.monotonic() - started < 15
    assert "Traceback" not in output.read_text()


def test_a_client_that_never_reads_does_not_hold_up_updates_in_a_threaded_process(
        app, make_user, token_for, connect_ws, never_reading, serve_in_process, wait_for,
        test_redis_url):
    """The same in a threaded web process (sockets on threads, blocking writes): the stuck
    socket is hung up after its write has waited its second, and the next update of another
    user arrives at once."""
    from sonicus.realtime.broker import get_broker
    from sonicus.realtime.publish import publish_to_user

    server = serve_in_process(app)
    url = server.url()
    stuck_user = make_user("never-reads-threads@example.com").id
    other_user = make_user("reads-threads@example.com").id
    never_reading(url, token_for("never-reads-threads@example.com"))
    other = connect_ws(url, token_for("reads-threads@example.com"))
    assert other.receive_json()["type"] == "analytics.snapshot"

    _flood(app, stuck_user)
    time.sleep(0.5)
    sent = time.monotonic()
    with app.app_context():
        publish_to_user(other_user, {"type": "analytics.updated", "data": {"n": 3}})
    other.settimeout(15)
    assert other.receive_json() == {"type": "analytics.updated", "data": {"n": 3}}
    assert time.monotonic() - sent < 5
    assert wait_for(lambda: _leases(app, test_redis_url, stuck_user) == 0, timeout=5)
    # the registry forgets the hung-up socket (the suite's app is shared: count this
    # test's users' sockets only, not what earlier tests left open)
    broker = get_broker(app)
    assert wait_for(lambda: stuck_user not in broker._sockets, timeout=5)
    assert len(broker._sockets.get(other_user, ())) == 1


@pytest.mark.parametrize("where", ["socket process", "threaded process"])
def test_a_message_too_big_gets_its_1009_close_not_a_reset(
        app, socket_process, serve_in_process, make_user, token_for, connect_ws, wait_for,
        test_redis_url, where):
    """A client sends a message far past the limit (1 MiB): it is told why it is closed, code
    1009, every time. Before, the server closed the connection as soon as it had read the
    limit, with the rest unread: the TCP reset that answered it reached the client while it
    was still sending, and the client saw a dropped connection, never the close code."""
    if where == "socket process":
        _proc, port, _output = socket_process()
        url = f"ws://127.0.0.1:{port}/ws/analytics"
    else:
        url = serve_in_process(app).url()
    user_id = make_user("sends-too-much@example.com").id
    token = token_for("sends-too-much@example.com")
    for _ in range(3):
        ws = connect_ws(url, token)
        assert ws.receive_json()["type"] == "analytics.snapshot"
        ws.sock.sendall(_frame(0x1, b"x" * (1 << 20)))
        assert ws.close_code() == 1009
        ws.shutdown()
    assert wait_for(lambda: _leases(app, test_redis_url, user_id) == 0)
