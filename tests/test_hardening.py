"""Abuse limits, body size, CORS, security headers, request ids and log hygiene."""

import contextlib
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sonicus import ConfigError, create_app


@pytest.fixture
def limited_app(make_config):
    return create_app(make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="5/minute",
                                  RATELIMIT_PER_IP="1000/second"))


def test_rate_limit_answers_429_in_the_envelope(limited_app, idp):
    client = limited_app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='fast@example.com')}"}
    # Twelve requests fall in at most two minute windows, so one of them holds six or more.
    statuses = []
    for _ in range(12):
        statuses.append(client.get("/api/user/profile", headers=headers))
        if statuses[-1].status_code == 429:
            break
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    body = limited[0].json
    assert body["success"] is False and body["code"] == "rate_limited"
    assert int(limited[0].headers["Retry-After"]) >= 0
    # another user is not affected
    other = {"Authorization": f"Bearer {idp.token(email='calm@example.com')}"}
    assert client.get("/api/user/profile", headers=other).status_code == 200


def test_default_limits_let_a_burst_of_60_through(idp, make_config):
    app = create_app(make_config(RATELIMIT_ENABLED=True))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='burst@example.com')}"}
    statuses = {client.get("/api/user/profile", headers=headers).status_code for _ in range(60)}
    assert statuses == {200}


def test_health_is_never_rate_limited(limited_app):
    client = limited_app.test_client()
    assert {client.get("/api/health").status_code for _ in range(20)} == {200}


@pytest.mark.parametrize("header", ["Bearer ", "Bearer \xa0", "Bearer \x1c", "Token \x85"],
                         ids=["space", "no-break-space", "file-separator", "next-line"])
def test_an_authorization_of_a_scheme_and_blanks_is_401_with_rate_limits_on(make_config,
                                                                           header):
    """A scheme followed by characters Python counts as blanks (a no-break space is a valid
    header byte, which servers do not strip) is no token: 401 on a signed-in route, the
    public routes answer as usual, counted by address. With rate limits on (production's
    default) it was a 500: the limiter took the blanks for a token and found none."""
    app = create_app(make_config(RATELIMIT_ENABLED=True))
    client = app.test_client()
    res = client.get("/api/user/profile", environ_overrides={"HTTP_AUTHORIZATION": header})
    assert res.status_code == 401, res.get_data()
    body = res.get_json()
    assert body["success"] is False and body["code"] in ("missing_token", "invalid_token")
    assert body["errors"]
    assert client.get("/api/tiers",
                      environ_overrides={"HTTP_AUTHORIZATION": header}).status_code == 200


def test_oversized_body_is_413(client, auth):
    res = client.put("/api/user/profile", headers=auth(),
                     data=json.dumps({"display_name": "x" * 70000}),
                     content_type="application/json")
    assert res.status_code == 413
    assert res.json["code"] == "payload_too_large"


def test_cors_only_for_configured_origins(make_config):
    app = create_app(make_config(CORS_ORIGINS=["https://app.sonicus.example"]))
    client = app.test_client()
    ok = client.options("/api/user/profile", headers={
        "Origin": "https://app.sonicus.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.sonicus.example"
    bad = client.get("/api/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_no_cors_headers_without_configured_origins(client):
    res = client.get("/api/health", headers={"Origin": "https://app.sonicus.example"})
    assert "Access-Control-Allow-Origin" not in res.headers


@pytest.mark.parametrize("path", ["/api/health", "/api/nothing", "/api/user/profile"])
def test_security_headers_on_every_response(client, path):
    res = client.get(path)
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in res.headers["Content-Security-Policy"]
    assert res.headers["Referrer-Policy"] == "no-referrer"


def test_personal_routes_are_not_cached(client, auth):
    assert client.get("/api/user/profile", headers=auth()).headers["Cache-Control"] == "no-store"


def test_request_id_is_echoed_or_generated(client):
    assert client.get("/api/health", headers={"X-Request-ID": "abc-123"}).headers[
        "X-Request-ID"] == "abc-123"
    generated = client.get("/api/health", headers={"X-Request-ID": "bad id with spaces"}).headers[
        "X-Request-ID"]
    assert generated and generated != "bad id with spaces" and len(generated) == 32


def test_logs_are_json_and_hold_no_tokens_or_emails(client, idp):
    from sonicus.log_format import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("sonicus")
    logger.addHandler(handler)
    try:
        token = idp.token(email="private.person@example.com")
        client.get("/api/user/profile?access_token=" + token,
                   headers={"Authorization": f"Bearer {token}", "X-Request-ID": "req-42"})
        logging.getLogger("sonicus.test").warning("user %s sent Bearer %s", "a@b.example", token)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert token not in output
    assert "private.person@example.com" not in output and "a@b.example" not in output
    lines = [json.loads(line) for line in output.strip().splitlines()]
    access = [e for e in lines if e["logger"] == "sonicus.access"]
    assert access and access[0]["request_id"] == "req-42"
    assert access[0]["path"] == "/api/user/profile" and access[0]["status"] == 200


@contextlib.contextmanager
def _gunicorn(tmp_path, database_url):
    """``gunicorn wsgi:app`` with gunicorn.conf.py, one process: (its address, its log file)
    once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = tmp_path / "gunicorn.log"
    env = {**os.environ, "SONICUS_ENV": "testing", "SONICUS_BIND": f"127.0.0.1:{port}",
           "DATABASE_URL": database_url, "WEB_CONCURRENCY": "1", "SONICUS_THREADS": "4",
           "DEV_TOKEN_ISSUER": "1", "SONICUS_INSTANCE_PATH": str(tmp_path)}
    env.pop("REDIS_URL", None)
    with open(log_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app"],
                                cwd=Path(__file__).resolve().parent.parent, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 20
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}", log_file
        finally:
            proc.terminate()
            proc.wait(10)


def test_gunicorn_access_log_keeps_query_strings_out(tmp_path, test_database_url, wait_for):
    """Served the production way (gunicorn.conf.py), a token in a query string is not logged."""
    with _gunicorn(tmp_path, test_database_url) as (url, log_file):
        urllib.request.urlopen(f"{url}/api/health?access_token=SECRET-TOKEN-123", timeout=5)
        # the readiness probe's line, then this one's (written after the answer)
        wait_for(lambda: log_file.read_text().count('"path":"/api/health"') >= 2)
    text = log_file.read_text()
    assert '"method":"GET","path":"/api/health","status":200' in text
    assert "SECRET-TOKEN-123" not in text


def test_a_chunked_body_over_the_limit_is_413_not_a_parse_error(tmp_path, test_database_url):
    """A body sent without a length (chunked) is refused by its size as a declared length
    would be, not cut at the limit and then refused as invalid JSON; under the limit it is
    read whole."""
    import requests

    def chunks(size):
        body = json.dumps({"display_name": "x" * size}).encode()
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    with _gunicorn(tmp_path, test_database_url) as (url, _):
        big = requests.put(f"{url}/api/user/profile", data=chunks(70000), timeout=10,
                           headers={"Content-Type": "application/json"})
        small = requests.put(f"{url}/api/user/profile", data=chunks(10), timeout=10,
                             headers={"Content-Type": "application/json"})
    assert "Content-Length" not in big.request.headers  # sent chunked
    assert big.status_code == 413 and big.json()["code"] == "payload_too_large", big.text
    assert small.status_code == 401  # read whole, then refused for the missing token


def test_rate_limits_do_not_fail_requests_while_redis_is_down(idp, make_config):
    app = create_app(make_config(RATELIMIT_ENABLED=True,
                                 REDIS_URL="redis://127.0.0.1:1/0"))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='steady@example.com')}"}
    assert {client.get("/api/user/profile", headers=headers).status_code
            for _ in range(3)} == {200}


def test_rate_limits_are_shared_by_every_process(idp, make_config):
    # two app instances on one Redis stand for two gunicorn processes
    config = make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="5/hour",
                         RATELIMIT_PER_IP="1000/hour")
    first, second = create_app(config).test_client(), create_app(config).test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='spread@example.com')}"}
    answers = [(first if i % 2 else second).get("/api/user/profile", headers=headers)
               for i in range(8)]
    # 4 each: only a count shared between them refuses the last 3
    assert [r.status_code for r in answers] == [200] * 5 + [429] * 3
    ok = [r for r in answers if r.status_code == 200]
    assert ok[0].headers["X-RateLimit-Limit"] == "5"
    assert int(ok[0].headers["X-RateLimit-Remaining"]) > int(ok[1].headers["X-RateLimit-Remaining"])
    refused = next(r for r in answers if r.status_code == 429)
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.json["code"] == "rate_limited"


def test_rate_limits_still_hold_while_redis_is_down(idp, make_config):
    app = create_app(make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="5/hour",
                                 REDIS_URL="redis://127.0.0.1:1/0"))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='offline@example.com')}"}
    statuses = [client.get("/api/user/profile", headers=headers).status_code
                for _ in range(8)]
    assert statuses == [200] * 5 + [429] * 3  # counted in this process meanwhile


def test_a_limit_that_does_not_parse_is_refused_at_start(make_config):
    with pytest.raises(ConfigError, match="RATELIMIT_PER_IP"):
        create_app(make_config(RATELIMIT_PER_IP="lots"))


def test_near_its_limit_a_client_is_counted_exactly_across_processes(idp, make_config):
    config = make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="40/hour",
                         RATELIMIT_PER_IP="100000/hour")
    first, second = create_app(config).test_client(), create_app(config).test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='steady-stream@example.com')}"}
    statuses = [(first if i % 2 else second).get("/api/user/profile", headers=headers)
                .status_code for i in range(60)]
    assert statuses.count(200) == 40 and statuses[:40] == [200] * 40


def test_a_client_well_inside_its_limits_reaches_redis_within_a_second(idp, redis_client,
                                                                       make_config):
    app = create_app(make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="1000/hour",
                                 RATELIMIT_PER_IP="100000/hour"))
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='light@example.com')}"}

    def shared_count():
        keys = redis_client.keys("sonicus:rl:user:*:3600:*")
        return sum(int(redis_client.get(key)) for key in keys)

    for _ in range(10):
        assert client.get("/api/user/profile", headers=headers).status_code == 200
    assert shared_count() < 10  # counted here; no round trip per request
    time.sleep(1.1)
    res = client.get("/api/user/profile", headers=headers)
    assert shared_count() == 11
    assert res.headers["X-RateLimit-Remaining"] == "989"


def test_racing_requests_get_exactly_the_limit(idp, make_config):
    from concurrent.futures import ThreadPoolExecutor

    app = create_app(make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="40/hour",
                                 RATELIMIT_PER_IP="100000/hour"))
    headers = {"Authorization": f"Bearer {idp.token(email='racer@example.com')}"}
    app.test_client().get("/api/tiers")  # warm the app up before the race

    def one(_):
        return app.test_client().get("/api/user/profile", headers=headers).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(64)))
    assert statuses.count(200) == 40 and statuses.count(429) == 24, str(sorted(statuses))


def test_racing_requests_on_two_processes_get_no_more_than_the_limit(idp, make_config):
    """A burst of one client's requests spread over two processes: while one process's count
    is on its way to Redis, its other requests near the limit are still counted there, so the
    deployment lets the limit through and refuses the rest."""
    from concurrent.futures import ThreadPoolExecutor

    config = make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="40/hour",
                         RATELIMIT_PER_IP="100000/hour")
    apps = [create_app(config), create_app(config)]
    headers = {"Authorization": f"Bearer {idp.token(email='two-racers@example.com')}"}
    for app in apps:
        app.test_client().get("/api/tiers")  # warm the apps up before the race

    def one(i):
        return apps[i % 2].test_client().get("/api/user/profile", headers=headers).status_code

    for _ in range(3):
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(one, range(96)))
        assert statuses.count(200) <= 40, str(sorted(statuses))
        headers = {"Authorization": f"Bearer {idp.token(email=f'two-racers-{_}@example.com')}"}
