"""What an SPA team reads on day one: the docs pages (offline, strict CSP), a valid and
complete OpenAPI document in every environment, and the AsyncAPI document of the socket."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi

from sonicus import create_app
from sonicus.api_errors import DEFAULT_CODES, ERROR_CODES, ERROR_EXTRAS
from sonicus.docs import json_schema
from sonicus.extensions import api
from sonicus.models.listening import END_REASONS, SESSION_STATUSES
from sonicus.models.subscription import EVENT_TYPES, STATUSES, SubscriptionEvent
from sonicus.tiers import TIER_NAMES

ROOT = Path(__file__).resolve().parent.parent
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
CAMEL_CASE = re.compile(r"^[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)*$")
# The names the SPA's client is written against: they must not change.
PINNED_OPERATION_IDS = {
    "getProfile": ("get", "/api/user/profile"),
    "updateProfile": ("put", "/api/user/profile"),
    "eraseAccount": ("delete", "/api/user/profile"),
    "getSubscription": ("get", "/api/user/subscription"),
    "changeSubscription": ("post", "/api/user/subscription"),
    "listPackages": ("get", "/api/packages"),
    "getPackage": ("get", "/api/packages/{package_id}"),
    "listLibrary": ("get", "/api/user/packages"),
    "startSession": ("post", "/api/user/sessions"),
    "recordSessionProgress": ("patch", "/api/user/sessions/{session_id}"),
    "completeSession": ("post", "/api/user/sessions/{session_id}/complete"),
    "listSessions": ("get", "/api/user/sessions"),
    "getAnalytics": ("get", "/api/user/analytics"),
    "getDashboard": ("get", "/api/user/dashboard"),
    "confirmSandboxCheckout": ("post", "/api/billing/sandbox/{reference}/confirm"),
}


class _References(HTMLParser):
    """Every address a page makes the browser load or follow."""

    def __init__(self):
        super().__init__()
        self.urls, self.inline_scripts, self._in_script = [], 0, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "data-spec-url", "spec-url"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        self._in_script = tag == "script" and not attrs.get("src")

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag):
        self._in_script = False


def operations(doc):
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield method, path, operation


def parameters(doc, operation):
    """An operation's parameters, references to shared ones resolved."""
    for parameter in operation.get("parameters", ()):
        if isinstance(parameter, dict) and "$ref" in parameter:
            parameter = doc["components"]["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
        yield parameter


@pytest.fixture(scope="module")
def doc(app):
    return app.test_client().get("/api/openapi.json").json


@pytest.mark.parametrize("page", ["/api/docs", "/api/redoc"])
def test_docs_pages_load_everything_from_the_app_itself(client, page):
    res = client.get(page)
    assert res.status_code == 200 and res.mimetype == "text/html"
    csp = res.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "http" not in csp and "unsafe-eval" not in csp
    html = res.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html and "//" not in html.replace(
        "<!doctype html>", "")
    refs = _References()
    refs.feed(html)
    assert refs.inline_scripts == 0  # the policy would block them
    assert len(refs.urls) >= 2
    for url in refs.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["Content-Security-Policy"] == csp or url.endswith(".json")
        if url.endswith(".js"):
            assert asset.mimetype == "text/javascript"


def test_swagger_ui_calls_no_validator_service(client):
    """Swagger UI would send the document to an online validator for its badge."""
    script = client.get("/api/docs/assets/swagger-init.js").get_data(as_text=True)
    assert "validatorUrl: null" in script


def test_docs_assets_serve_only_what_the_pages_use(client):
    assert client.get("/api/docs/assets/index.html").status_code == 404
    assert client.get("/api/redoc/assets/LICENSE").status_code == 404
    assert client.get("/api/redoc/assets/..%2F..%2Fdocs.py").status_code == 404


def _production_like(make_config):
    return make_config(
        SONICUS_ENV="production", DEV_TOKEN_ISSUER=False, BILLING_PROVIDER="stripe",
        STRIPE_API_KEY="sk_test_x", STRIPE_PRICE_IDS=["premium=price_p", "pro=price_q"],
        PUBLIC_BASE_URL="https://api.example.com", SECRET_KEY="s" * 48,
        MEDIA_BASE_URL=None, MEDIA_URL_SECRET=None, VAPID_SUBJECT="mailto:ops@example.com",
        VAPID_PRIVATE_KEY="4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4")


@pytest.mark.parametrize("env", ["development", "testing", "production"])
def test_openapi_document_is_valid_in_every_environment(app, make_config, env):
    if env == "production":
        config = _production_like(make_config)
    elif env == "development":
        config = make_config(SONICUS_ENV="development", DEV_TOKEN_ISSUER=True,
                             OIDC_ISSUER=None, OIDC_AUDIENCE=None)
    else:
        config = make_config()
    other = create_app(config)
    with other.app_context():
        document = api.openapi_document()
    validate_openapi(document)
    assert not any(key == "hide" for _m, _p, op in operations(document) for key in op)
    # The same routes everywhere (development's token issuer is not an API route).
    with app.app_context():
        assert set(document["paths"]) == set(api.openapi_document()["paths"])


def test_every_operation_has_a_unique_camel_case_operation_id(doc):
    seen = {}
    for method, path, operation in operations(doc):
        operation_id = operation.get("operationId")
        assert operation_id and CAMEL_CASE.match(operation_id), (method, path, operation_id)
        assert operation_id not in seen, (operation_id, seen.get(operation_id), (method, path))
        seen[operation_id] = (method, path)
    for operation_id, where in PINNED_OPERATION_IDS.items():
        assert seen.get(operation_id) == where, operation_id


def test_every_error_status_a_route_can_answer_is_documented(doc):
    for method, path, operation in operations(doc):
        responses = operation["responses"]
        expected = set()
        if operation.get("security"):
            expected |= {"401", "403", "429"}
        if path != "/api/health":
            expected.add("503")
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation or method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
            expected |= {"400", "422"}  # a write without a body refuses fields sent to it
        if any(p["in"] == "query" for p in parameters(doc, operation)):
            expected.add("422")
        assert expected <= set(responses), (method, path, expected - set(responses))
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorEnvelope"}, (path, status)
                assert "`" in response["description"], (path, status)  # names its codes
    admin = doc["paths"]["/api/admin/users"]["get"]["responses"]["403"]["description"]
    assert "`forbidden`" in admin and "`account_suspended`" in admin
    start = doc["paths"]["/api/user/sessions"]["post"]["responses"]
    assert "`package_locked`" in start["403"]["description"]
    assert "`daily_session_limit_reached`" in start["429"]["description"]
    assert "`rate_limited`" in start["429"]["description"]
    assert "429" not in doc["paths"]["/api/health"]["get"]["responses"]  # not rate-limited


def _raised_codes() -> set[str]:
    patterns = [r"ApiError\(\s*\d{3},\s*\"([a-z_]+)\"", r"\bfail\(\s*\d{3},\s*\"([a-z_]+)\"",
                r"__init__\(\s*\d{3},\s*\"([a-z_]+)\"", r"^\s+code = \"([a-z_]+)\""]
    found = set()
    for source in (ROOT / "sonicus").rglob("*.py"):
        text = source.read_text()
        for pattern in patterns:
            found |= set(re.findall(pattern, text, re.M))
    return found


def test_every_error_code_the_code_base_raises_is_in_the_registry(doc):
    raised = _raised_codes()
    assert {"package_locked", "daily_session_limit_reached", "use_billing_portal",
            "invalid_signature", "billing_unavailable"} <= raised  # the search finds them
    assert raised <= set(ERROR_CODES), raised - set(ERROR_CODES)
    assert set(DEFAULT_CODES.values()) <= set(ERROR_CODES)
    envelope = doc["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["properties"]["code"]["enum"] == list(ERROR_CODES)
    for extra in ERROR_EXTRAS:  # typed, not "anything"
        assert envelope["properties"][extra]["type"] == "string"
    assert envelope["properties"]["errors"]["minItems"] == 1
    assert envelope["additionalProperties"] is False


def test_enums_come_from_their_sources_in_code(doc):
    schemas = doc["components"]["schemas"]

    def enum(schema, prop):
        return [v for v in schemas[schema]["properties"][prop]["enum"] if v is not None]

    assert enum("Subscription", "status") == list(STATUSES)
    assert enum("Subscription", "tier") == list(TIER_NAMES)
    assert enum("Subscription", "pending_tier") == list(TIER_NAMES)
    assert enum("SubscriptionEvent", "type") == list(EVENT_TYPES)
    assert enum("Session", "status") == list(SESSION_STATUSES)
    assert enum("Session", "end_reason") == list(END_REASONS)
    assert enum("Profile", "tier") == list(TIER_NAMES)
    assert enum("Tier", "name") == list(TIER_NAMES)
    assert enum("Package", "required_tier") == list(TIER_NAMES)


def test_an_event_type_outside_the_list_is_refused():
    with pytest.raises(ValueError, match="EVENT_TYPES"):
        SubscriptionEvent(user_id=1, type="gift")


def _resolve(doc, schema):
    while "$ref" in schema or len(schema.get("allOf", ())) == 1:
        if "allOf" in schema:
            schema = schema["allOf"][0]
        else:
            schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _assert_examples(doc, schema, where, seen):
    schema = _resolve(doc, schema)
    if id(schema) in seen:
        return
    seen.add(id(schema))
    for name, prop in schema.get("properties", {}).items():
        target = _resolve(doc, prop)
        if target.get("type") == "object" and "properties" in target:
            _assert_examples(doc, target, f"{where}.{name}", seen)
            continue
        if target.get("type") == "array" and "$ref" in target.get("items", {}):
            _assert_examples(doc, target["items"], f"{where}.{name}[]", seen)
            continue
        assert "example" in prop, f"{where}.{name} has no example"
        # the example is one the property itself accepts
        jsonschema.validate(prop["example"], json_schema(prop))


def test_every_request_body_and_response_has_an_example(doc):
    seen = set()
    for method, path, operation in operations(doc):
        bodies = [operation.get("requestBody", {})] + list(operation["responses"].values())
        for body in bodies:
            for media in body.get("content", {}).values():
                if "schema" in media:
                    _assert_examples(doc, media["schema"], f"{method} {path}", seen)
        for parameter in parameters(doc, operation):
            assert "example" in parameter, (path, parameter["name"])


def test_pagination_is_documented_as_it_is_answered(doc, client, auth, make_package):
    schemas = doc["components"]["schemas"]
    assert "PaginationMetadata" not in schemas
    assert set(schemas["Pagination"]["required"]) == {"page", "per_page", "total", "pages"}
    listing = doc["paths"]["/api/packages"]["get"]["responses"]["200"]
    ref = listing["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    page = schemas[ref]
    assert page["properties"]["pagination"] == {"$ref": "#/components/schemas/Pagination"}
    assert "pagination" in page["required"]
    single = schemas["ProfileEnvelope"]["properties"]["pagination"]
    assert single["enum"] == [None]
    make_package("one-package")
    body = client.get("/api/packages?per_page=1", headers=auth("pages@example.com")).json
    assert body["pagination"] == {"page": 1, "per_page": 1, "total": 1, "pages": 1}


def test_summaries_are_plain_text(doc):
    for method, path, operation in operations(doc):
        assert "`" not in operation.get("summary", ""), (method, path)
        assert "``" not in operation.get("description", ""), (method, path)
    text = json.dumps(doc)
    assert "``" not in text


# ---- AsyncAPI ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def asyncapi(app):
    return app.test_client().get("/api/asyncapi.json").json


def test_asyncapi_document_is_valid_asyncapi_3(asyncapi):
    """Against the official AsyncAPI 3.0.0 JSON Schema (tests/data, from the npm package
    @asyncapi/specs 6.11.1, schemas/3.0.0-without-$id.json)."""
    schema = json.loads((ROOT / "tests/data/asyncapi-3.0.0.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(asyncapi)
    channel = asyncapi["channels"]["analytics"]
    assert channel["address"] == "/ws/analytics"
    assert {m["name"] for m in asyncapi["components"]["messages"].values()} == {
        "analytics.snapshot", "analytics.updated"}
    assert set(channel["x-close-codes"]) == {"4401", "4403", "4429", "1013", "1001"}
    assert {"accessTokenQuery", "bearerSubprotocol"} == set(
        asyncapi["components"]["securitySchemes"])


def test_socket_messages_match_the_asyncapi_document(app, asyncapi, serve_in_process,
                                                     connect_ws, token_for, make_user):
    make_user("socket-doc@example.com")
    server = serve_in_process(app)
    ws = connect_ws(server.url(), token_for("socket-doc@example.com"))
    message = ws.receive_json()
    payload = {**asyncapi, "$ref": "#/components/messages/analyticsSnapshot/payload"}
    jsonschema.Draft7Validator(payload).validate(message)
    wrong = {**message, "type": "analytics.updated"}
    assert not jsonschema.Draft7Validator(payload).is_valid(wrong)
