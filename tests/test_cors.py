"""CORS for a browser app: the SPA's dev server on localhost in development, only
``CORS_ORIGINS`` elsewhere; preflights allow the headers an SPA sends and expose the ones it
reads."""

from __future__ import annotations

import pytest

from sonicus import create_app

SENT = ("Authorization", "Content-Type", "Idempotency-Key", "traceparent", "tracestate",
        "baggage", "sentry-trace", "X-Request-ID")
READ = ("X-Request-ID", "Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining",
        "X-RateLimit-Reset", "Idempotent-Replayed")


@pytest.fixture(scope="module")
def dev_client(make_config):
    app = create_app(make_config(SONICUS_ENV="development",
                                 CORS_ORIGINS=["https://app.sonicus.example"]))
    return app.test_client()


def _preflight(client, origin, method="POST", path="/api/user/sessions"):
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": ", ".join(SENT)})


def _names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:5173",
                                    "http://localhost", "http://127.0.0.1:3000",
                                    "https://app.sonicus.example"])
def test_development_preflight_from_a_local_dev_server(dev_client, origin):
    res = _preflight(dev_client, origin)
    assert res.status_code == 200
    assert res.headers["Access-Control-Allow-Origin"] == origin
    assert _names(res.headers["Access-Control-Allow-Headers"]) >= {h.lower() for h in SENT}
    assert "POST" in res.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in res.headers  # Bearer tokens, no cookies


def test_development_answers_expose_what_the_spa_reads(dev_client):
    res = dev_client.get("/api/health", headers={"Origin": "http://localhost:5173"})
    assert res.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert _names(res.headers["Access-Control-Expose-Headers"]) >= {h.lower() for h in READ}
    assert res.headers["Vary"] and "origin" in _names(res.headers["Vary"])


@pytest.mark.parametrize("origin", ["https://localhost:5173", "http://localhost.evil.example",
                                    "http://evil.example", "http://127.0.0.1.evil.example:80",
                                    "http://192.168.1.2:5173"])
def test_development_refuses_other_origins(dev_client, origin):
    res = _preflight(dev_client, origin)
    assert "Access-Control-Allow-Origin" not in res.headers


def test_outside_development_only_the_configured_origins(make_config):
    for env in ("testing", "production"):
        config = make_config(SONICUS_ENV=env, CORS_ORIGINS=["https://app.sonicus.example"])
        if env == "production":
            config.update(DEV_TOKEN_ISSUER=False, BILLING_PROVIDER="stripe",
                          STRIPE_API_KEY="sk_live_x", SECRET_KEY="s" * 40,
                          STRIPE_PRICE_IDS=["premium=price_a", "pro=price_b"],
                          PUBLIC_BASE_URL="https://api.sonicus.example",
                          VAPID_SUBJECT="mailto:ops@example.com",
                          VAPID_PRIVATE_KEY="4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4")
        client = create_app(config).test_client()
        assert "Access-Control-Allow-Origin" not in _preflight(
            client, "http://localhost:5173").headers, env
        ok = _preflight(client, "https://app.sonicus.example")
        assert ok.headers["Access-Control-Allow-Origin"] == "https://app.sonicus.example"
        assert _names(ok.headers["Access-Control-Allow-Headers"]) >= {h.lower() for h in SENT}


def test_development_without_configured_origins_still_answers_local_dev_servers(make_config):
    """With only the local dev-server patterns allowed, a request without ``Origin`` gets no
    CORS headers and one from a local dev server gets them (flask-cors runs only then)."""
    client = create_app(make_config(SONICUS_ENV="development", CORS_ORIGINS=[])).test_client()
    plain = client.get("/api/health")
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert "Vary" not in plain.headers
    local = client.get("/api/health", headers={"Origin": "http://localhost:5173"})
    assert local.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert _names(local.headers["Access-Control-Expose-Headers"]) >= {h.lower() for h in READ}
    assert "origin" in _names(local.headers["Vary"])
    preflight = _preflight(client, "http://127.0.0.1:5173")
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:5173"
    assert "Access-Control-Allow-Origin" not in _preflight(client, "http://evil.example").headers
