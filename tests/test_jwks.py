"""The provider's signing keys as the API fetches them (API.md "Authentication"): with the
provider down or slow before any key is known, sign-in answers 503 promptly and the provider
is not asked once per request."""

from __future__ import annotations

import threading
import time

import pytest

from sonicus import create_app


def _profile(app, idp):
    return app.test_client().get("/api/user/profile",
                                 headers={"Authorization": f"Bearer {idp.token()}"})


def test_a_provider_down_before_any_key_is_known_is_not_asked_once_per_request(idp,
                                                                              make_config):
    app = create_app(make_config(OIDC_JWKS_MIN_REFRESH_SECONDS=60))
    idp.fail = True
    try:
        before = idp.requests_received
        for _ in range(10):
            res = _profile(app, idp)
            assert res.status_code == 503 and res.get_json()["code"] == "service_unavailable"
        assert idp.requests_received - before == 1  # the discovery document, once
    finally:
        idp.fail = False


def test_sign_ins_waiting_for_a_failing_first_fetch_do_not_queue_behind_it(idp, make_config):
    """Four first requests while the provider hangs: one waits for its timeout (1 s), the
    others are answered 503 when it gives up, not one timeout after another."""
    app = create_app(make_config(OIDC_HTTP_TIMEOUT_SECONDS=1, OIDC_JWKS_MIN_REFRESH_SECONDS=60))
    idp.delay = 3.0
    answers, barrier = [], threading.Barrier(4)

    def sign_in():
        barrier.wait()
        started = time.monotonic()
        res = _profile(app, idp)
        answers.append((res.status_code, time.monotonic() - started))

    try:
        threads = [threading.Thread(target=sign_in) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        idp.delay = 0.0
    assert [status for status, _ in answers] == [503] * 4
    assert max(took for _, took in answers) < 1.8, answers


def test_sign_in_works_once_the_provider_is_back(idp, make_config, monkeypatch):
    from sonicus import tokens

    monkeypatch.setattr(tokens, "COLD_RETRY_SECONDS", 0.2)
    app = create_app(make_config(OIDC_JWKS_MIN_REFRESH_SECONDS=60))
    idp.fail = True
    try:
        assert _profile(app, idp).status_code == 503
    finally:
        idp.fail = False
    assert _profile(app, idp).status_code == 503  # tried again too soon: not asked
    time.sleep(0.3)
    assert _profile(app, idp).status_code == 200


@pytest.fixture
def restore_keys(idp):
    keys = list(idp.keys)
    yield
    idp.keys = keys


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_key_the_provider_removed_stops_working_within_the_keys_max_age(
        idp, make_config, restore_keys, wait_for):
    """No token with a new ``kid`` comes to refetch the keys: once they are older than
    ``OIDC_JWKS_MAX_AGE_SECONDS`` they are fetched again, and the removed key is refused."""
    app = create_app(make_config(OIDC_JWKS_MAX_AGE_SECONDS=1))
    client = app.test_client()
    old = idp.key
    assert client.get("/api/user/profile", headers=_bearer(idp.token())).status_code == 200
    idp.rotate()  # the old key is gone from the provider's JWKS
    before = idp.jwks_requests
    time.sleep(1.1)
    client.get("/api/user/profile", headers=_bearer(idp.token(key=old, email="a@example.com")))
    wait_for(lambda: idp.jwks_requests > before)
    wait_for(lambda: app.extensions["sonicus_token_verifier"].keys.generation > 1)
    res = client.get("/api/user/profile",
                     headers=_bearer(idp.token(key=old, email="b@example.com")))
    assert res.status_code == 401 and res.get_json()["code"] == "invalid_token"
    assert client.get("/api/user/profile", headers=_bearer(idp.token())).status_code == 200


def test_a_token_validated_before_its_key_was_removed_is_refused_after(idp, make_config,
                                                                       restore_keys):
    """A token checked once is remembered until it expires; not past the removal of its key
    (a token forged with a leaked key would otherwise live as long as the exp it claims)."""
    app = create_app(make_config())
    client = app.test_client()
    old = idp.key
    forged = idp.token(key=old, lifetime=10 * 365 * 24 * 3600)
    assert client.get("/api/user/profile", headers=_bearer(forged)).status_code == 200
    idp.rotate()
    # a token of the new key: unknown kid, the keys are fetched again
    assert client.get("/api/user/profile", headers=_bearer(idp.token())).status_code == 200
    res = client.get("/api/user/profile", headers=_bearer(forged))
    assert res.status_code == 401 and res.get_json()["code"] == "invalid_token"


def test_keys_are_not_fetched_again_before_their_max_age(idp, make_config):
    app = create_app(make_config(OIDC_JWKS_MAX_AGE_SECONDS=600))
    client = app.test_client()
    assert client.get("/api/user/profile", headers=_bearer(idp.token())).status_code == 200
    before = idp.jwks_requests
    for n in range(5):
        token = idp.token(email=f"n{n}@example.com")
        assert client.get("/api/user/profile", headers=_bearer(token)).status_code == 200
    assert idp.jwks_requests == before


@pytest.fixture
def trickling_jwks():
    """A JWKS address whose answer trickles in, one byte every half second: every wait for
    bytes is short, the whole answer would take hours."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    stop = threading.Event()

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                while not stop.wait(0.5):
                    self.wfile.write(b" ")
                    self.wfile.flush()
            except OSError:
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks/"
    stop.set()
    server.shutdown()
    server.server_close()


def test_a_jwks_answer_that_trickles_in_is_given_up_at_the_timeout(idp, make_config,
                                                                   trickling_jwks):
    app = create_app(make_config(OIDC_JWKS_URL=trickling_jwks, OIDC_HTTP_TIMEOUT_SECONDS=1))
    answer = {}

    def sign_in():
        answer["res"] = _profile(app, idp)

    started = time.monotonic()
    thread = threading.Thread(target=sign_in, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the sign-in still waits for the provider"
    assert time.monotonic() - started < 2.5
    assert answer["res"].status_code == 503
    assert answer["res"].get_json()["code"] == "service_unavailable"
