"""Every documented operation, sent hostile requests by a client with valid tokens, on an app
set up as production runs it (rate limits on, the SPA's origin, a trusted proxy): every answer
is the envelope (an error's with its code and a non-empty ``errors``), never a 5xx, and a value
no field takes is a 4xx. The operations and their bodies come from the app's own OpenAPI
document, so a route added later is walked too. The suite's other tests run with rate limits
off, which hid a 500 of the limiter's own (an Authorization of a scheme and blanks).
"""

from __future__ import annotations

import json
import re

import pytest

from sonicus import clock, create_app

WRITES = ("post", "put", "patch", "delete")
# Values no documented field takes: each must be a 4xx naming it.
NEVER_VALID = {"nul": "calm\x00sea", "surrogate": "calm\ud800sea", "past_64_bits": 2 ** 63,
               "huge_float": 1e308}
# Values some fields take: never a 5xx.
ODD_VALUES = [None, True, [], {}, "", "x" * 5000, -1, 0.5, "1"]
RAW_BODIES = [b"", b"[]", b'"text"', b"{", b'{"a": NaN}', b"[" * 40 + b"]" * 40, b"\xff\xfe",
              b'{"a": 1, "a": 2}', b"\xef\xbb\xbf{}"]
PATH_IDS = ["abc", "-1", "0", str(2 ** 63), "%ff", "%00", "%ED%A0%80", "1e3", "\u0661"]
QUERY_VALUES = ["", "-1", "abc", "%00", "%ED%A0%80", "%FF", "9" * 30, "x" * 3000]
AUTHORIZATIONS = ["Bearer ", "Bearer \xa0", "Basic abc", "Bearer a.b.c"]
# Documented routes whose success is a document as its standard has it, not the envelope
# (their errors are the envelope like any other).
RAW_DOCUMENTS = {"/api/openapi.json"}


@pytest.fixture
def production_like(make_config):
    return create_app(make_config(RATELIMIT_ENABLED=True, RATELIMIT_PER_USER="100000/second",
                                  RATELIMIT_PER_IP="100000/second",
                                  CORS_ORIGINS="https://app.example.com", TRUSTED_PROXY_COUNT=1))


def _schema(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _example(schema: dict, spec: dict):
    """The smallest body the schema documents: its required properties, from examples."""
    schema = _schema(schema, spec)
    if schema.get("type") == "object":
        return {name: _example(prop, spec) for name, prop in schema.get("properties", {}).items()
                if name in schema.get("required", ())}
    if schema.get("type") == "array":
        return [_example(schema["items"], spec)] if schema.get("minItems") else []
    return schema.get("example")


def _operations(spec: dict):
    """(method, path template, operation, body schema or None); writes that erase or archive
    last, so the rest meet the world as it was arranged."""
    found = []
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method not in ("get", *WRITES):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            body = content.get("application/json", {}).get("schema")
            found.append((method, path, operation, body))
    return sorted(found, key=lambda op: op[0] == "delete")


class Walk:
    def __init__(self, client):
        self.client = client
        self.failures: list[str] = []
        self.requests = 0

    def send(self, method: str, url: str, headers: dict, what: str, *, must_refuse=False,
             **kwargs):
        self.requests += 1
        res = self.client.open(url, method=method, headers=headers,
                               environ_overrides=kwargs.pop("environ", None), **kwargs)
        where = f"{method} {url[:90]} ({what}): {res.status_code}"
        if res.status_code >= 500:
            self.failures.append(f"{where} {res.get_data()[:200]!r}")
            return
        if must_refuse and not 400 <= res.status_code < 500:
            self.failures.append(f"{where}, expected a 4xx")
        if method == "HEAD" or res.status_code == 204:
            return
        if res.status_code < 400 and "json" not in res.headers.get("Content-Type", ""):
            return  # the docs and the sandbox's HTML pages
        if res.status_code < 400 and url.split("?")[0] in RAW_DOCUMENTS:
            return
        try:
            body = json.loads(res.get_data())
        except ValueError:
            self.failures.append(f"{where} not JSON: {res.get_data()[:120]!r}")
            return
        if not isinstance(body, dict) or not {"success", "data", "message", "errors"} <= set(body):
            self.failures.append(f"{where} not the envelope: {str(body)[:120]}")
        elif res.status_code >= 400 and not (body["errors"] and body.get("code")):
            self.failures.append(f"{where} an error without code or errors: {str(body)[:120]}")


def test_every_operation_answers_hostile_requests_with_an_envelope_never_a_5xx(
        production_like, make_user, make_package, make_session, auth, admin_auth):
    listener = make_user("calm@example.com", tier="premium")
    make_user("boss@example.com", admin=True)
    package = make_package("rain")
    session = make_session(listener, package, started_at=clock.now(), status="open", minutes=0)
    ids = {"package_id": package.id, "session_id": session.id, "user_id": listener.id,
           "subscription_id": 1, "reference": "chk_unknown", "token": "unknown",
           "slug": "rain"}
    hostile_headers = {"Origin": "https://app.example.com", "X-Forwarded-For": "\xa0, ,"}
    signed_in = {"user": {**auth("calm@example.com"), **hostile_headers},
                 "admin": {**admin_auth("boss@example.com"), **hostile_headers}}
    client = production_like.test_client()
    spec = client.get("/api/openapi.json").get_json()
    walk = Walk(client)

    def fill(template: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: str(ids[m[1]]), template)

    for method, template, operation, body_schema in _operations(spec):
        headers = signed_in["admin" if template.startswith("/api/admin") else "user"]
        verb, url = method.upper(), fill(template)
        body = _example(body_schema, spec) if body_schema else None
        as_json = {"json": body} if body is not None else {}

        walk.send("HEAD", url, headers, "head")
        walk.send("OPTIONS", url, headers, "options")
        walk.send("TRACE", url, headers, "a method no route takes")
        walk.send(verb, url + "/", headers, "trailing slash", **as_json)
        for value in AUTHORIZATIONS:
            walk.send(verb, url, hostile_headers, f"Authorization {value!r}",
                      environ={"HTTP_AUTHORIZATION": value}, **as_json)
        for name in re.findall(r"\{(\w+)\}", template):
            for value in PATH_IDS:
                walk.send(verb, fill(template.replace("{" + name + "}", value)), headers,
                          f"path {name}", **as_json)
        for parameter in [p["name"] for p in operation.get("parameters", [])
                          if p.get("in") == "query"]:
            for value in QUERY_VALUES:
                walk.send(verb, f"{url}?{parameter}={value}", headers, f"query {parameter}",
                          **as_json)
            walk.send(verb, f"{url}?{parameter}=1&{parameter}=2", headers,
                      f"repeated {parameter}", **as_json)
        if method not in WRITES:
            continue
        for raw in RAW_BODIES:
            walk.send(verb, url, headers, f"body {raw[:12]!r}", data=raw,
                      content_type="application/json")
        walk.send(verb, url, headers, "text/plain", data=b"{}", content_type="text/plain")
        if body_schema is None:
            continue
        for field in _schema(body_schema, spec).get("properties", {}):
            for name, value in NEVER_VALID.items():
                walk.send(verb, url, headers, f"{field} {name}", must_refuse=True,
                          json={**(body or {}), field: value})
            for value in ODD_VALUES:
                walk.send(verb, url, headers, f"{field} {str(value)[:12]!r}",
                          json={**(body or {}), field: value})
        walk.send(verb, url, headers, "unknown field", must_refuse=True,
                  json={**(body or {}), "unknown_field": 1})
    assert walk.requests > 1500
    assert not walk.failures, "\n".join(walk.failures[:30])
