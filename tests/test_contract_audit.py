"""The running API against the contract (API.md), where an audit found them apart."""

import json

import pytest


def _refused_naming_the_body(res, status, code):
    assert res.status_code == status, res.get_data(as_text=True)
    body = res.get_json()
    assert body["success"] is False and body["data"] is None and body["code"] == code
    assert body["errors"] and all(e.startswith("body: ") for e in body["errors"]), body
    return body


@pytest.mark.parametrize("raw", [b"{not json", b'{"display_name": "\xff"}', b'{"a": 1,}'])
def test_malformed_json_names_the_body_and_changes_nothing(client, auth, raw):
    """Bad input names the field: a body that is not valid JSON (or not UTF-8) names the
    body, as a body of the wrong type or nested too deeply does."""
    headers = auth()
    client.get("/api/user/profile", headers=headers)
    for method, path in (("PUT", "/api/user/profile"), ("POST", "/api/user/sessions")):
        res = client.open(path, method=method, data=raw, content_type="application/json",
                          headers=headers)
        _refused_naming_the_body(res, 400, "validation_error")
    profile = client.get("/api/user/profile", headers=headers).get_json()["data"]
    assert profile["display_name"] == "Listener"
    assert client.get("/api/user/sessions", headers=headers).get_json()["data"] == []


def test_a_body_over_the_limit_names_the_body_and_the_limit(client, auth):
    """413 ``payload_too_large`` says which part of the request is too large and by what
    measure, whether the body declares its length or not."""
    headers = auth()
    res = client.put("/api/user/profile", headers=headers, content_type="application/json",
                     data=json.dumps({"display_name": "x" * 70000}))
    body = _refused_naming_the_body(res, 413, "payload_too_large")
    assert body["errors"] == ["body: at most 65536 bytes."]
    assert body["message"] == "The request body is too large."
    elsewhere = client.post("/no-such-page", data=b"x" * 70000)
    assert _refused_naming_the_body(elsewhere, 413, "payload_too_large")["errors"] == [
        "body: at most 65536 bytes."]
    sync = client.post("/api/user/sessions/sync", headers=headers,
                       content_type="application/json", data=b"[" + b" " * 1_700_000 + b"]")
    assert _refused_naming_the_body(sync, 413, "payload_too_large")["errors"] == [
        "body: at most 1638400 bytes."]   # the route's own limit, above the app's


# Every route API.md names, as (method, path in the OpenAPI spelling).
CONTRACT_ROUTES = [
    ("get", "/api/health"), ("get", "/api/ready"), ("get", "/api/tiers"),
    ("get", "/api/openapi.json"), ("get", "/api/docs"),
    ("get", "/api/user/profile"), ("put", "/api/user/profile"), ("delete", "/api/user/profile"),
    ("get", "/api/user/export"),
    ("get", "/api/user/subscription"), ("post", "/api/user/subscription"),
    ("delete", "/api/user/subscription"), ("post", "/api/user/subscription/resume"),
    ("post", "/api/user/subscription/portal"), ("get", "/api/user/subscription/history"),
    ("get", "/api/user/packages"), ("post", "/api/user/packages/{package_id}"),
    ("delete", "/api/user/packages/{package_id}"),
    ("post", "/api/user/sessions"), ("patch", "/api/user/sessions/{session_id}"),
    ("post", "/api/user/sessions/{session_id}/complete"), ("post", "/api/user/sessions/sync"),
    ("get", "/api/user/playback"), ("post", "/api/user/downloads"), ("get", "/api/user/downloads"),
    ("delete", "/api/user/downloads/{package_id}"), ("get", "/api/user/sessions"),
    ("get", "/api/user/analytics"), ("get", "/api/user/recap"),
    ("get", "/api/user/recommendations"), ("get", "/api/user/reminders"),
    ("put", "/api/user/reminders"), ("post", "/api/user/push-subscriptions"),
    ("delete", "/api/user/push-subscriptions/{subscription_id}"), ("get", "/api/user/dashboard"),
    ("get", "/api/packages"), ("get", "/api/packages/{package_id}"),
    ("get", "/api/packages/slug/{slug}"), ("get", "/api/categories"),
    ("get", "/api/admin/platform/stats"), ("get", "/api/admin/users"),
    ("get", "/api/admin/users/{user_id}"), ("patch", "/api/admin/users/{user_id}"),
    ("post", "/api/admin/users/{user_id}/packages"),
    ("delete", "/api/admin/users/{user_id}/packages/{package_id}"),
    ("post", "/api/admin/packages"), ("patch", "/api/admin/packages/{package_id}"),
    ("delete", "/api/admin/packages/{package_id}"), ("get", "/api/admin/jobs"),
    ("post", "/api/billing/webhook"), ("post", "/api/billing/sandbox/{reference}/confirm"),
    ("get", "/metrics"), ("get", "/api/push/vapid-public-key"), ("get", "/ws/analytics"),
]


def test_the_openapi_document_describes_every_route_of_the_contract(client):
    """API.md: "The OpenAPI document the app serves must describe every route below", the
    operations endpoint, the socket's handshake and the documents themselves included; each
    route the app serves, and each documented one answered by the app."""
    doc = client.get("/api/openapi.json").get_json()
    missing = [(m, p) for m, p in CONTRACT_ROUTES if m not in doc["paths"].get(p, {})]
    assert missing == []
    metrics = doc["paths"]["/metrics"]["get"]
    assert "text/plain" in metrics["responses"]["200"]["content"]
    assert {"401", "404"} <= set(metrics["responses"])
    socket = doc["paths"]["/ws/analytics"]["get"]
    assert "101" in socket["responses"] and "/api/asyncapi.json" in socket["description"]
    # what the document says is served: no path the app does not route
    assert client.get("/metrics").get_json()["code"] == "not_found"   # no METRICS_TOKEN here
    assert client.get("/ws/analytics").status_code == 400               # not a handshake
    assert client.get("/api/docs").status_code == 200


@pytest.mark.parametrize("path", ["/api/user/profile", "/metrics", "/ws/analytics"])
def test_options_answers_an_empty_envelope_with_allow_on_every_route(client, path):
    """OPTIONS is an empty envelope with ``Allow`` wherever a route is, the socket's address
    included (it was a 400 asking for a WebSocket handshake)."""
    res = client.open(path, method="OPTIONS")
    assert res.status_code == 200, res.get_data(as_text=True)
    assert res.get_json() == {"success": True, "data": None, "message": None, "errors": None,
                              "pagination": None}
    assert "GET" in res.headers["Allow"]


def test_the_metrics_address_answers_errors_in_the_envelope():
    """``METRICS_BIND`` serves ``GET /metrics`` on an address of its own; what else it is
    asked is refused in the contract's envelope (it was the standard library's HTML page)."""
    import requests

    from sonicus.metrics import serve_metrics

    server = serve_metrics("127.0.0.1:0")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        ok = requests.get(f"{base}/metrics", timeout=5)
        assert ok.status_code == 200 and "sonicus_" in ok.text
        for method, path, status, code in (("GET", "/nope", 404, "not_found"),
                                           ("POST", "/metrics", 405, "method_not_allowed"),
                                           ("DELETE", "/metrics", 405, "method_not_allowed")):
            res = requests.request(method, base + path, timeout=5)
            assert res.status_code == status, (method, path, res.text)
            assert res.headers["Content-Type"] == "application/json"
            body = res.json()
            assert body["success"] is False and body["data"] is None and body["code"] == code
            assert body["errors"] and body["message"]
        assert requests.post(f"{base}/metrics", timeout=5).headers["Allow"] == "GET, HEAD"
        head = requests.head(f"{base}/metrics", timeout=5)
        assert head.status_code == 200 and head.content == b""
    finally:
        server.shutdown()
        server.server_close()


def test_the_payment_provider_unreachable_is_502_with_retry_after(auth, make_config):
    """API.md: "502 / 503 | the payment provider or the database is unreachable;
    `Retry-After`": the 502 said when to try again only in words."""
    from sonicus import create_app

    app = create_app(make_config(BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_test_1",
                                 STRIPE_PRICE_IDS=["premium=price_prem", "pro=price_pro"],
                                 STRIPE_API_BASE="http://127.0.0.1:9"))
    client = app.test_client()
    res = client.post("/api/user/subscription", json={"tier": "premium"}, headers=auth())
    assert res.status_code == 502 and res.get_json()["code"] == "billing_unavailable"
    assert res.get_json()["errors"]
    assert int(res.headers["Retry-After"]) > 0


def test_every_503_says_when_to_try_again(idp, make_config, admin_auth, db_session):
    """Every 503 ``service_unavailable`` carries ``Retry-After``, as the OpenAPI document says
    of it: sign-in with the provider's keys unreachable and the job queue unreachable did
    not."""
    from sonicus import create_app

    keyless = create_app(make_config(OIDC_JWKS_MIN_REFRESH_SECONDS=60))
    idp.fail = True
    try:
        res = keyless.test_client().get("/api/user/profile",
                                        headers={"Authorization": f"Bearer {idp.token()}"})
    finally:
        idp.fail = False
    assert res.status_code == 503 and res.get_json()["code"] == "service_unavailable"
    assert int(res.headers["Retry-After"]) > 0

    queue_down = create_app(make_config(REDIS_URL="redis://127.0.0.1:1/0"))
    res = queue_down.test_client().get("/api/admin/jobs", headers=admin_auth())
    assert res.status_code == 503 and res.get_json()["code"] == "service_unavailable"
    assert int(res.headers["Retry-After"]) > 0
