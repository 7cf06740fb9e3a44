"""Every status answers in the envelope, with a machine-readable code."""

import pytest

ENVELOPE_KEYS = {"success", "data", "message", "errors", "pagination"}


def assert_error(res, status, code):
    assert res.status_code == status, res.get_data(as_text=True)
    body = res.json
    assert ENVELOPE_KEYS <= set(body)
    assert body["success"] is False
    assert body["data"] is None
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_404_unknown_route(client):
    assert_error(client.get("/api/nothing-here"), 404, "not_found")


def test_405_wrong_method(client):
    res = client.post("/api/health")
    assert_error(res, 405, "method_not_allowed")
    assert "GET" in res.headers["Allow"]


def test_malformed_json_is_rejected_and_changes_nothing(client, auth):
    headers = auth()
    client.get("/api/user/profile", headers=headers)
    res = client.put("/api/user/profile", data="{not json", headers={
        **headers, "Content-Type": "application/json"})
    assert res.status_code in (400, 422)
    body = assert_error(res, res.status_code, "validation_error")
    assert body["errors"]
    assert client.get("/api/user/profile", headers=headers).json["data"]["timezone"] == "UTC"


def test_invalid_fields_are_named_and_change_nothing(client, auth):
    headers = auth()
    res = client.put("/api/user/profile", json={"timezone": "Mars/Olympus",
                                                "day_start_hour": 9, "colour": "red"},
                     headers=headers)
    body = assert_error(res, 422, "validation_error")
    assert "timezone: Not a valid IANA time zone." in body["errors"]
    assert any(e.startswith("day_start_hour: ") for e in body["errors"])
    assert "colour: Unknown field." in body["errors"]
    profile = client.get("/api/user/profile", headers=headers).json["data"]
    assert profile["timezone"] == "UTC" and profile["day_start_hour"] == 0


@pytest.mark.parametrize("body", [[1], "x", 5, True, None])
def test_a_body_that_is_not_a_json_object_is_named(client, auth, body):
    headers = auth()
    res = client.put("/api/user/profile", json=body, headers=headers)
    assert res.status_code in (400, 422)
    errors = assert_error(res, res.status_code, "validation_error")["errors"]
    assert errors and all(e.startswith("body: ") for e in errors), errors


def test_nested_field_errors_are_flattened(client, auth):
    res = client.put("/api/user/profile", json={"preferences": {"daily_goal_minutes": 0}},
                     headers=auth())
    body = assert_error(res, 422, "validation_error")
    assert any(e.startswith("preferences.daily_goal_minutes: ") for e in body["errors"])


def test_500_is_generic_and_logged(caplog, make_config):
    from sonicus import create_app
    from sonicus.envelope import Blueprint

    app = create_app(make_config(PROPAGATE_EXCEPTIONS=False))
    boom = Blueprint("boom", __name__, url_prefix="/api/boom")

    @boom.route("/")
    def explode():
        raise RuntimeError("secret internal detail")

    app.register_blueprint(boom)
    res = app.test_client().get("/api/boom/")
    body = assert_error(res, 500, "internal_error")
    assert "secret" not in res.get_data(as_text=True)
    assert body["errors"] == ["Something went wrong on our side."]
    assert "secret internal detail" in caplog.text


def test_401_is_enveloped(client):
    assert_error(client.get("/api/user/export"), 401, "missing_token")
    assert_error(client.get("/api/user/export", headers={"Authorization": "Bearer x"}), 401,
                 "invalid_token")


@pytest.mark.parametrize("path", ["/api/health", "/api/tiers"])
def test_success_envelope_shape(client, path):
    body = client.get(path).json
    assert set(body) == ENVELOPE_KEYS
    assert body["success"] is True and body["errors"] is None


def test_openapi_document_shows_envelopes(client):
    spec = client.get("/api/openapi.json").json
    assert spec["openapi"].startswith("3.")
    get_profile = spec["paths"]["/api/user/profile"]["get"]
    schema_ref = get_profile["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    envelope = spec["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"success", "data", "message", "errors", "pagination"} <= set(envelope["properties"])
    assert get_profile["security"] == [{"bearerAuth": []}]
    assert "bearerAuth" in spec["components"]["securitySchemes"]
    error = spec["components"]["schemas"]["ErrorEnvelope"]
    assert "code" in error["properties"]


def test_docs_ui_is_served(client):
    res = client.get("/api/docs")
    assert res.status_code == 200
    assert b"swagger" in res.data.lower()


def test_every_failure_carries_a_non_empty_errors_list(client, auth, admin_auth, make_package):
    """401, 403, 404, 405, 409, 422 and 429 alike: ``errors`` lists at least the message."""
    headers = auth("errors@example.com")
    locked = make_package("locked-one", minimum_tier="pro_exclusive").id
    public = make_package("open-one").id
    for _ in range(3):
        assert client.post("/api/user/sessions", json={"package_id": public},
                           headers=headers).status_code == 201
    answers = {
        401: client.get("/api/user/profile"),
        403: client.get("/api/admin/users", headers=headers),
        404: client.get("/api/user/sessions/999999", headers=headers),
        405: client.patch("/api/tiers"),
        409: client.delete("/api/user/subscription", headers=headers),
        422: client.put("/api/user/profile", json={"timezone": "Mars/Olympus"},
                        headers=headers),
        429: client.post("/api/user/sessions", json={"package_id": public}, headers=headers),
    }
    answers[403.1] = client.post("/api/user/sessions", json={"package_id": locked},
                                 headers=headers)
    for status, res in answers.items():
        body = res.get_json()
        assert res.status_code == int(status), (status, body)
        assert body["success"] is False and body["code"]
        assert isinstance(body["errors"], list) and body["errors"], (status, body)
        assert all(isinstance(e, str) and e for e in body["errors"])


def _raw_request(app, method, path_info, headers=None):
    """``method path_info`` handed to the app as a server such as gunicorn hands it (the
    test client would read ``//api/...`` as a host name)."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    environ = EnvironBuilder(method=method, path="/", headers=headers or {}).get_environ()
    environ["PATH_INFO"] = path_info
    body, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), response_headers, b"".join(body)


@pytest.mark.parametrize("method,path_info", [
    ("GET", "/api//user/profile"), ("GET", "/api/user//profile"), ("GET", "//api//health"),
    ("POST", "/api//user/subscription/resume"), ("HEAD", "/api//tiers"),
])
def test_a_path_with_doubled_slashes_is_a_json_404_not_a_redirect(app, auth, method, path_info):
    """werkzeug would answer 308 with an HTML page sending the client (and its Authorization
    header, and a write's body) on to the merged path; the API answers each route at one
    spelling only."""
    import json

    status, headers, body = _raw_request(app, method, path_info, auth("slashes@example.com"))
    assert status == 404
    assert "Location" not in headers
    assert headers["Content-Type"] == "application/json"
    if method != "HEAD":
        assert json.loads(body)["code"] == "not_found"


def test_leading_slashes_are_the_path_itself_never_a_redirect(app):
    """werkzeug reads ``//api/health`` as ``/api/health`` (before any route is matched): the
    route answers, in its envelope."""
    import json

    status, headers, body = _raw_request(app, "GET", "//api/health")
    assert status == 200 and "Location" not in headers
    assert json.loads(body)["data"] == {"status": "ok"}


def test_a_missing_trailing_slash_is_a_json_404_not_a_redirect(tmp_path):
    """A route declared with a trailing slash (the development JWKS) is not redirected to."""
    from sonicus import create_app

    dev = create_app({"SONICUS_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
                      "OIDC_ISSUER": None, "DEV_TOKEN_ISSUER": True, "REDIS_URL": None})
    client = dev.test_client()
    assert client.get("/api/dev/jwks/").status_code == 200
    res = client.get("/api/dev/jwks")
    assert_error(res, 404, "not_found")
    assert "Location" not in res.headers


@pytest.mark.parametrize("path", ["/api/health", "/api/user/profile", "/api/nothing-here"])
def test_options_answers_an_envelope_with_the_allowed_methods(client, path):
    res = client.options(path)
    if path == "/api/nothing-here":
        assert_error(res, 404, "not_found")
        return
    assert res.status_code == 200
    assert res.mimetype == "application/json"
    assert res.json == {"success": True, "data": None, "message": None, "errors": None,
                        "pagination": None}
    assert "GET" in res.headers["Allow"]


def test_head_answers_json_headers_without_a_body(client):
    res = client.head("/api/health")
    assert res.status_code == 200
    assert res.mimetype == "application/json"
    assert res.data == b""
    missing = client.head("/api/nothing-here")
    assert missing.status_code == 404 and missing.mimetype == "application/json"
