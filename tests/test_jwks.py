"""The provider's signing keys as the API fetches them (API.md "Authentication"): with the
provider down or slow before any key is known, sign-in answers 503 promptly and the provider
is not asked once per request."""

from __future__ import annotations

import threading
import time

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
