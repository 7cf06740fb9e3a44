import base64
import hashlib
import hmac
import json
import time

import pytest
from joserfc.jwk import RSAKey


def _assert_invalid_token(res):
    assert res.status_code == 401, res.json
    assert res.json["success"] is False
    assert res.json["code"] == "invalid_token"
    assert res.json["data"] is None
    assert res.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_valid_token_reads_profile(client, auth):
    res = client.get("/api/user/profile", headers=auth("ana@example.com", name="Ana"))
    assert res.status_code == 200
    data = res.json["data"]
    assert data["email"] == "ana@example.com"
    assert data["display_name"] == "Ana"
    assert data["role"] == "user"
    assert data["tier"] == "starter"
    assert data["timezone"] == "UTC"


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer"},
                                     {"Authorization": "Bearer  "}])
def test_no_token_is_missing_token(client, headers):
    """No token sent at all: ``missing_token`` and a challenge without an error code (RFC 6750
    3.1), so an SPA tells "sign in" from "your token went bad"."""
    res = client.get("/api/user/profile", headers=headers)
    assert res.status_code == 401, res.json
    assert res.json["code"] == "missing_token" and res.json["errors"]
    assert res.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("value", ["Basic abc", "Bearer not.a.jwt", "Bearer a b c",
                                   "Token xyz", "Bearer ...", "Bearer undefined"])
def test_malformed_header(client, value):
    _assert_invalid_token(client.get("/api/user/profile", headers={"Authorization": value}))


@pytest.mark.parametrize("claims", [
    {"exp": int(time.time()) - 3600},
    {"nbf": int(time.time()) + 3600},
    {"iss": "https://evil.example.com/application/o/sonicus/"},
    {"aud": "another-client"},
])
def test_rejected_claims(client, idp, claims):
    token = idp.token(**claims)
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {token}"}))


def test_unknown_kid(client, idp):
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    token = idp.token(key=stranger)
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {token}"}))


def test_key_signed_with_other_key_but_known_kid(client, idp):
    forger = RSAKey.generate_key(2048, parameters={"kid": idp.key.kid})
    token = idp.token(key=forger)
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {token}"}))


def test_tampered_payload(client, idp):
    token = idp.token(email="ana@example.com")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["sonicus-user", "sonicus-super-admin"]
    forged = ".".join([header, _b64(claims), signature])
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {forged}"}))


def test_alg_none(client, idp):
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": "sonicus-test", "sub": "x", "exp": now + 600,
              "email": "x@example.com", "groups": ["sonicus-user"]}
    token = _b64({"alg": "none", "typ": "JWT", "kid": idp.key.kid}) + "." + _b64(claims) + "."
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {token}"}))


def test_hs256_signed_with_public_key(client, idp):
    public_pem = idp.key.as_pem(private=False)
    now = int(time.time())
    claims = {"iss": idp.issuer, "aud": "sonicus-test", "sub": "x", "exp": now + 600,
              "email": "x@example.com", "groups": ["sonicus-user"]}
    signing_input = _b64({"alg": "HS256", "kid": idp.key.kid}) + "." + _b64(claims)
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    _assert_invalid_token(client.get("/api/user/profile",
                                     headers={"Authorization": f"Bearer {token}"}))


def test_key_rotation_accepts_new_key(client, idp):
    old = idp.key
    assert client.get("/api/user/profile", headers={
        "Authorization": f"Bearer {idp.token()}"}).status_code == 200
    try:
        new = idp.rotate()
        token = idp.token(key=new, email="rotated@example.com")
        res = client.get("/api/user/profile", headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 200
        assert res.json["data"]["email"] == "rotated@example.com"
    finally:
        idp.keys = [old]


def test_tokens_without_optional_claims_are_accepted(client, idp):
    token = idp.token(azp=None, auth_time=None, iat=None)
    assert client.get("/api/user/profile",
                      headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_user_created_once_then_synced(client, auth, db_session):
    from sonicus.models import User

    assert client.get("/api/user/profile", headers=auth("a@example.com", sub="s1",
                                                        name="First")).status_code == 200
    res = client.get("/api/user/profile", headers=auth("b@example.com", sub="s1",
                                                       name="Second"))
    assert res.json["data"]["email"] == "b@example.com"
    assert res.json["data"]["display_name"] == "Second"
    assert db_session.query(User).count() == 1


def test_unchanged_claims_do_not_write(client, auth, db_session):
    from sonicus.models import User

    headers = auth("a@example.com", sub="s1")
    client.get("/api/user/profile", headers=headers)
    before = db_session.query(User).one().updated_at
    time.sleep(0.01)
    client.get("/api/user/profile", headers=auth("a@example.com", sub="s1"))
    db_session.expire_all()
    assert db_session.query(User).one().updated_at == before


def test_profile_name_edit_survives_until_provider_name_changes(client, auth):
    headers = auth("a@example.com", sub="s1", name="Provider Name")
    client.put("/api/user/profile", json={"display_name": "My Name"}, headers=headers)
    res = client.get("/api/user/profile", headers=auth("a@example.com", sub="s1",
                                                       name="Provider Name"))
    assert res.json["data"]["display_name"] == "My Name"
    res = client.get("/api/user/profile", headers=auth("a@example.com", sub="s1",
                                                       name="Renamed"))
    assert res.json["data"]["display_name"] == "Renamed"


def test_admin_role_only_with_admin_group(client, auth, admin_auth):
    assert client.get("/api/user/profile", headers=auth()).json["data"]["role"] == "user"
    assert client.get("/api/user/profile",
                      headers=admin_auth()).json["data"]["role"] == "admin"
    # losing the group demotes on the next request
    res = client.get("/api/user/profile", headers=auth("admin@example.com"))
    assert res.json["data"]["role"] == "user"


def test_required_group_missing_is_403(client, auth, db_session):
    from sonicus.models import User

    res = client.get("/api/user/profile", headers=auth(groups=("other",)))
    assert res.status_code == 403
    assert res.json["code"] == "forbidden"
    assert db_session.query(User).count() == 0


def test_required_group_can_be_turned_off(idp, make_config):
    from sonicus import create_app

    app = create_app(make_config(OIDC_REQUIRED_GROUP=""))
    token = idp.token(groups=[])
    res = app.test_client().get("/api/user/profile",
                                headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200


def test_suspended_user_is_403(client, auth, db_session):
    from sonicus.models import User
    from sonicus.services.admin_users import update_user

    client.get("/api/user/profile", headers=auth())
    update_user(None, db_session.query(User).one().id, {"is_active": False})
    res = client.get("/api/user/profile", headers=auth())
    assert res.status_code == 403
    assert res.json["code"] == "account_suspended"


def test_jwks_outage_keeps_cached_keys_working(idp, make_config):
    from sonicus import create_app

    app = create_app(make_config())
    client = app.test_client()
    assert client.get("/api/user/profile", headers={
        "Authorization": f"Bearer {idp.token(email='one@example.com')}"}).status_code == 200
    idp.fail = True
    try:
        res = client.get("/api/user/profile", headers={
            "Authorization": f"Bearer {idp.token(email='two@example.com')}"})
        assert res.status_code == 200
    finally:
        idp.fail = False


def test_jwks_unreachable_with_no_keys_is_503_not_500(idp, make_config):
    from sonicus import create_app

    app = create_app(make_config())
    idp.fail = True
    try:
        res = app.test_client().get("/api/user/profile", headers={
            "Authorization": f"Bearer {idp.token()}"})
        assert res.status_code == 503
        assert res.json["code"] == "service_unavailable"
    finally:
        idp.fail = False


def test_unknown_kid_refetch_is_rate_limited(idp, make_config):
    from sonicus import create_app

    app = create_app(make_config(OIDC_JWKS_MIN_REFRESH_SECONDS=60))
    client = app.test_client()
    client.get("/api/user/profile", headers={"Authorization": f"Bearer {idp.token()}"})
    before = idp.jwks_requests
    stranger = RSAKey.generate_key(2048, parameters={"kid": "stranger"})
    for _ in range(5):
        res = client.get("/api/user/profile", headers={
            "Authorization": f"Bearer {idp.token(key=stranger)}"})
        assert res.status_code == 401
    assert idp.jwks_requests == before


def test_concurrent_first_requests_create_one_user(app, idp, db_session):
    import threading

    from sonicus.models import User, UserSubscription

    token = idp.token(email="racer@example.com", sub="racer")
    statuses, barrier = [], threading.Barrier(8)

    def hit():
        client = app.test_client()
        barrier.wait()
        statuses.append(client.get("/api/user/profile",
                                   headers={"Authorization": f"Bearer {token}"}).status_code)

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    assert db_session.query(User).count() == 1
    assert db_session.query(UserSubscription).count() == 1


def test_slow_jwks_does_not_hang_known_keys(idp, make_config, wait_for):
    import threading

    from sonicus import create_app

    app = create_app(make_config(OIDC_HTTP_TIMEOUT_SECONDS=1))
    client = app.test_client()
    assert client.get("/api/user/profile", headers={
        "Authorization": f"Bearer {idp.token()}"}).status_code == 200
    stranger = RSAKey.generate_key(2048, parameters={"kid": "slow-stranger"})
    idp.delay = 3.0
    try:
        before = idp.requests_received
        unknown = threading.Thread(target=lambda: app.test_client().get(
            "/api/user/profile", headers={"Authorization": f"Bearer {idp.token(key=stranger)}"}))
        unknown.start()
        # the unknown kid is now refetching from a slow provider
        wait_for(lambda: idp.requests_received > before)
        started = time.monotonic()
        res = client.get("/api/user/profile", headers={
            "Authorization": f"Bearer {idp.token(email='known@example.com')}"})
        assert res.status_code == 200
        assert time.monotonic() - started < 0.5
        unknown.join(5)
        assert not unknown.is_alive()  # the refetch gave up at its timeout
    finally:
        idp.delay = 0.0


def test_a_token_over_8_kb_signs_in_and_an_oversized_one_is_an_envelope_error(
        idp, test_database_url, test_redis_url, tmp_path, token_for):
    """Served the production way (gunicorn.conf.py): a token of more than 8 KB (many groups,
    long claims) signs in, on a request and on a socket, and a token past the API's limit is
    answered 431 in the API's envelope, naming the Authorization header. Before, gunicorn
    refused any header field over 8 KB with its own plain-text error, before the API saw it."""
    from pathlib import Path

    import requests
    import websocket
    from processes import start_gunicorn

    from sonicus.auth import MAX_TOKEN_BYTES

    root = Path(__file__).resolve().parent.parent
    proc, port = start_gunicorn(root, idp, test_database_url, test_redis_url,
                                tmp_path / "metrics", threads=4)
    try:
        big = token_for("big-token@example.com", padding="x" * 10_000)
        assert 8192 < len(big) < MAX_TOKEN_BYTES
        res = requests.get(f"http://127.0.0.1:{port}/api/user/profile",
                           headers={"Authorization": f"Bearer {big}"}, timeout=10)
        assert res.status_code == 200, res.text
        assert res.json()["data"]["email"] == "big-token@example.com"
        ws = websocket.WebSocket()
        ws.settimeout(10)
        ws.connect(f"ws://127.0.0.1:{port}/ws/analytics", subprotocols=["bearer", big])
        try:
            assert json.loads(ws.recv())["type"] == "analytics.snapshot"
        finally:
            ws.shutdown()

        oversized = token_for("huge-token@example.com", padding="x" * (MAX_TOKEN_BYTES + 1000))
        res = requests.get(f"http://127.0.0.1:{port}/api/user/profile",
                           headers={"Authorization": f"Bearer {oversized}"}, timeout=10)
        assert res.status_code == 431, res.text
        body = res.json()
        assert body["success"] is False and body["data"] is None
        assert body["code"] == "token_too_large"
        assert body["errors"] and body["errors"][0].startswith("Authorization:")
    finally:
        proc.terminate()
        proc.wait(20)
