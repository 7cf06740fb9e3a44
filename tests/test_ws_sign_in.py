"""Signing in to the socket process (``SONICUS_PROCESS=ws``, gevent, started the production
way): one user's handshakes at once over two processes, hostile tokens, a token that runs out
while its socket is open."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis as redis_lib
import websocket

from sonicus.extensions import channel_prefix


def _leases(app, test_redis_url, user_id: int) -> int:
    key = f"{channel_prefix(app.config)}ws-sockets:{user_id}"
    return redis_lib.Redis.from_url(test_redis_url).zcard(key)


def _handshakes_at_once(urls: list[str], token: str, count: int) -> list:
    """``count`` handshakes of one token on real threads released together, spread over
    ``urls``: each one's first message type, or its close code (an int)."""
    barrier = threading.Barrier(count)
    results: list = [None] * count
    held = []

    def one(n: int) -> None:
        ws = websocket.WebSocket()
        ws.settimeout(20)
        barrier.wait()
        try:
            ws.connect(f"{urls[n % len(urls)]}?access_token={token}")
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                results[n] = int.from_bytes(data[:2], "big")
            else:
                results[n] = json.loads(data)["type"]
                held.append(ws)
        except Exception as exc:  # reported, not raised in the thread
            results[n] = repr(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, held


@pytest.mark.parametrize("known", [True, False], ids=["known-user", "first-sign-in"])
def test_thirty_handshakes_at_once_across_two_socket_processes_admit_exactly_ten(
        app, socket_process, make_user, token_for, idp, test_redis_url, known):
    """One user, 30 handshakes released together over two socket processes (the user known
    already, or signing in for the first time with them): exactly 10 get their snapshot, the
    other 20 are closed with 4429, and none fails otherwise."""
    from sqlalchemy import func, select

    from sonicus.extensions import db
    from sonicus.models import User

    urls = [f"ws://127.0.0.1:{port}/ws/analytics"
            for _proc, port, _out in (socket_process(), socket_process())]
    email = "thirty-at-once@example.com"
    if known:
        make_user(email)
    results, held = _handshakes_at_once(urls, token_for(email), 30)
    try:
        assert sorted(results, key=str) == [4429] * 20 + ["analytics.snapshot"] * 10, results
        with app.app_context():
            user_id = db.session.execute(select(User.id).where(User.email == email)).scalar_one()
            assert db.session.execute(select(func.count()).select_from(User)).scalar() == 1
        assert _leases(app, test_redis_url, user_id) == 10
    finally:
        for ws in held:
            ws.shutdown()


def _hostile_tokens(idp) -> dict[str, str]:
    import base64
    import hashlib
    import hmac

    from joserfc import jwt
    from joserfc.jwk import RSAKey

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = idp.claims(email="forger@example.com")
    unsigned = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + \
        b64(json.dumps(claims).encode()) + "."
    impostor = RSAKey.generate_key(2048, parameters={"kid": idp.key.kid})  # same kid
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-known"})
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.key.kid}).encode()) \
        + "." + b64(json.dumps(claims).encode())
    hmac_signed = signing_input + "." + b64(hmac.new(
        idp.key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest())
    return {
        "garbage": "abc.def.ghi",
        "two-parts": "abc.def",
        "long": "eyJ" + "A" * 3000,
        "alg-none": unsigned,
        "wrong-key-same-kid": jwt.encode({"alg": "RS256", "kid": idp.key.kid}, claims, impostor),
        "wrong-key-unknown-kid": jwt.encode({"alg": "RS256", "kid": "not-known"}, claims,
                                            stranger),
        "hmac-with-public-key": hmac_signed,
        "expired": idp.token(email="late@example.com", lifetime=-3600),
        "header-not-json": b64(b"{not json") + "." + b64(b"{}") + ".sig",
        "header-a-list": b64(b"[1, 2]") + "." + b64(b"{}") + ".sig",
    }


def test_hostile_tokens_close_with_4401_in_the_query_or_the_subprotocol_and_stay_out_of_logs(
        app, socket_process, idp, connect_ws):
    """Every malformed, forged (another key, ``alg: none``, HMAC keyed with the public key)
    or expired token, in the query string or as the ``bearer`` subprotocol, is refused with
    4401 on the socket process (never a 500, never an HTTP error page), and none of them is
    written to its log, even at INFO."""
    import requests

    _proc, port, output = socket_process(LOG_LEVEL="INFO")
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    tokens = _hostile_tokens(idp)
    codes = {}
    for kind, token in tokens.items():
        for subprotocol in (False, True):
            ws = connect_ws(url, token, subprotocol=subprotocol)
            codes[kind, subprotocol] = ws.close_code()
            ws.shutdown()
    assert codes == dict.fromkeys(codes, 4401), codes
    assert requests.get(f"http://127.0.0.1:{port}/api/health", timeout=5).ok
    time.sleep(0.5)
    log = output.read_text()
    assert '"status": 500' not in log and "Traceback" not in log
    for kind, token in tokens.items():
        for part in {token, *[p for p in token.split(".") if len(p) > 12]}:
            assert part not in log, kind


@pytest.mark.parametrize("subprotocol", [False, True], ids=["query", "subprotocol"])
def test_a_socket_closes_with_4401_once_its_token_runs_out(
        app, socket_process, make_user, idp, token_for, connect_ws, wait_for, test_redis_url,
        subprotocol):
    """A socket outlives nothing of its token: once the token's ``exp`` (and the verifier's
    leeway) has passed, the socket is closed with 4401 (sign in again) and its place given
    back; a socket with a fresh token is welcome at once. Before, it went on receiving the
    user's figures for as long as it stayed open."""
    _proc, port, output = socket_process(OIDC_LEEWAY_SECONDS="0")
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    user_id = make_user("short-lived@example.com").id
    short = idp.token(email="short-lived@example.com", sub="sub-short-lived@example.com",
                      lifetime=3)
    ws = connect_ws(url, short, subprotocol=subprotocol)
    assert ws.receive_json()["type"] == "analytics.snapshot"
    lasting = connect_ws(url, token_for("short-lived@example.com"))  # an hour to go
    assert lasting.receive_json()["type"] == "analytics.snapshot"

    ws.settimeout(20)
    assert ws.close_code() == 4401
    assert wait_for(lambda: _leases(app, test_redis_url, user_id) == 1)
    assert lasting.nothing_arrives(0.2)  # the other socket stays open
    again = connect_ws(url, token_for("short-lived@example.com"), subprotocol=subprotocol)
    assert again.receive_json()["type"] == "analytics.snapshot"
    assert "Traceback" not in output.read_text()


def test_a_socket_signing_in_while_its_account_is_suspended_is_closed_with_4403(
        make_config, make_user, token_for, connect_ws, serve_in_process):
    """The account is suspended (and its close published to every process) after the socket's
    handshake read it as active, but before the socket was registered: the close found nothing
    to close there. The socket is still refused with 4403, and gets no snapshot; before, it
    stayed open with the suspended account's figures until the next account check (30 s)."""
    from sqlalchemy import update

    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.realtime.broker import get_broker
    from sonicus.realtime.publish import close_user_sockets

    racing = create_app(make_config())
    broker = get_broker(racing)
    user_id = make_user("suspended-mid-handshake@example.com").id
    admit = broker.admit

    def suspended_just_before(conn, per_process, per_user):  # the race, made certain
        with racing.app_context():
            db.session.execute(update(User).where(User.id == user_id).values(is_active=False))
            db.session.commit()
            close_user_sockets(user_id)  # through Redis, to this process's subscriber
        deadline = time.monotonic() + 5
        while broker.accounts.closed_since(user_id, 0.0) is None:
            assert time.monotonic() < deadline, "the close never came"
            time.sleep(0.01)
        return admit(conn, per_process, per_user)

    broker.admit = suspended_just_before
    try:
        server = serve_in_process(racing)
        ws = connect_ws(server.url(), token_for("suspended-mid-handshake@example.com"))
        ws.settimeout(5)
        assert ws.close_code() == 4403
        assert broker.local_socket_count() == 0
    finally:
        broker.stop()


def test_a_token_over_8_kb_signs_in_to_the_socket_process_through_the_subprotocol(
        app, socket_process, token_for, connect_ws):
    """A listener whose token is over 8 KB (many groups) gets live analytics from the socket
    process when the SPA sends the token as the ``bearer`` subprotocol (a header field:
    32 KiB pass). In the URL (``?access_token=``) the same token makes the request line
    longer than gunicorn takes (8190 bytes, its largest limit short of none): the handshake
    is refused before the app sees it, as the README says (long tokens use the subprotocol)."""
    from sonicus.auth import MAX_TOKEN_BYTES

    _proc, port, _output = socket_process()
    url = f"ws://127.0.0.1:{port}/ws/analytics"
    big = token_for("big-socket@example.com", padding="x" * 10_000)
    assert 10_000 < len(big) < MAX_TOKEN_BYTES
    ws = connect_ws(url, big, subprotocol=True)
    assert json.loads(ws.recv())["type"] == "analytics.snapshot"
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        connect_ws(url, big)
    assert refused.value.status_code == 414
