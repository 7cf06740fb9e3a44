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
