"""The OpenAPI document, finished in ONE place: whatever a route declares (its schemas,
``blp.errors(...)``, docstring) is completed here by rules every route follows, so a new route
is documented completely without doing more than an ordinary flask-smorest route does.

``finish_document`` runs on the document flask-smorest builds and:

- gives every operation an ``operationId``: its own (``@blp.doc(operationId=...)``), else the
  name in ``OPERATION_IDS`` (keyed by method and path), else one made from the method and
  path (``getUserDownloads``); camelCase and unique;
- documents the error statuses every route of a kind can answer, with the error envelope:
  401/403 on every signed-in operation, 503 on all but liveness, 404 on every path with an
  id, 400/413/422 on every write (a body of its own, or fields refused), 422 on
  every query argument, 429 wherever the rate
  limits count;
- documents a paginated list (``page`` and ``per_page`` arguments) with a
  ``<Item>PageEnvelope`` whose ``pagination`` is required, and drops the unused
  ``PaginationMetadata`` of flask-smorest's own pagination;
- makes summaries plain text and descriptions CommonMark (no reST double backticks);
- gives every property of every schema an ``example`` (its own, else one made from its name,
  format, enum, bounds or type: ``openapi_examples``), so every request body and response has
  an example.
"""

from __future__ import annotations

import copy
import re

import flask

from .api_errors import ERROR_DESCRIPTIONS, RATE_LIMIT_EXEMPT_PATHS
from .envelope import WRITE_METHODS, Api
from .openapi_examples import add_examples, example_for
from .pagination import PaginationSchema

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# The SPA's names for the routes; a path's parameters are written {} (any name).
OPERATION_IDS = {
    "GET /api/health": "getHealth",
    "GET /api/ready": "getReadiness",
    "GET /api/tiers": "listTiers",
    "GET /api/user/profile": "getProfile",
    "PUT /api/user/profile": "updateProfile",
    "DELETE /api/user/profile": "eraseAccount",
    "GET /api/user/export": "exportUserData",
    "GET /api/user/dashboard": "getDashboard",
    "GET /api/user/subscription": "getSubscription",
    "POST /api/user/subscription": "changeSubscription",
    "DELETE /api/user/subscription": "cancelSubscription",
    "POST /api/user/subscription/resume": "resumeSubscription",
    "POST /api/user/subscription/portal": "openBillingPortal",
    "GET /api/user/subscription/history": "listSubscriptionEvents",
    "GET /api/packages": "listPackages",
    "GET /api/packages/{}": "getPackage",
    "GET /api/packages/slug/{}": "getPackageBySlug",
    "GET /api/categories": "listCategories",
    "GET /api/user/packages": "listLibrary",
    "POST /api/user/packages/{}": "addToLibrary",
    "PATCH /api/user/packages/{}": "updateLibraryEntry",
    "DELETE /api/user/packages/{}": "removeFromLibrary",
    "GET /api/user/sessions": "listSessions",
    "POST /api/user/sessions": "startSession",
    "GET /api/user/sessions/{}": "getSession",
    "PATCH /api/user/sessions/{}": "recordSessionProgress",
    "POST /api/user/sessions/{}/complete": "completeSession",
    "POST /api/user/sessions/sync": "syncSessions",
    "GET /api/user/playback": "listPlaybackPositions",
    "POST /api/user/downloads": "createDownload",
    "GET /api/user/downloads": "listDownloads",
    "DELETE /api/user/downloads/{}": "deleteDownload",
    "GET /api/user/analytics": "getAnalytics",
    "POST /api/user/analytics/refresh": "refreshAnalytics",
    "GET /api/user/recap": "getRecap",
    "GET /api/user/recommendations": "listRecommendations",
    "GET /api/user/reminders": "getReminders",
    "PUT /api/user/reminders": "updateReminders",
    "POST /api/user/push-subscriptions": "createPushSubscription",
    "DELETE /api/user/push-subscriptions/{}": "deletePushSubscription",
    "GET /api/push/vapid-public-key": "getVapidPublicKey",
    "GET /api/admin/platform/stats": "getPlatformStats",
    "GET /api/admin/users": "listUsers",
    "GET /api/admin/users/{}": "getUser",
    "PATCH /api/admin/users/{}": "updateUser",
    "POST /api/admin/users/{}/packages": "assignPackage",
    "DELETE /api/admin/users/{}/packages/{}": "revokeAssignment",
    "GET /api/admin/jobs": "getJobs",
    "GET /api/admin/audit": "listAuditEntries",
    "GET /api/admin/packages": "listAdminPackages",
    "POST /api/admin/packages": "createPackage",
    "GET /api/admin/packages/{}": "getAdminPackage",
    "PATCH /api/admin/packages/{}": "updatePackage",
    "DELETE /api/admin/packages/{}": "archivePackage",
    "POST /api/billing/webhook": "receiveBillingWebhook",
    "POST /api/billing/sandbox/{}/confirm": "confirmSandboxCheckout",
    "GET /api/billing/sandbox/portal/{}": "getSandboxPortal",
}

# Answered by the process alone: never a 503 (liveness).
ALWAYS_AVAILABLE_PATHS = frozenset(("/api/health",))

_PARAM = re.compile(r"\{[^}]*\}")
_DOUBLE_TICKS = re.compile(r"``(.+?)``", re.S)
_ERROR_REF = {"$ref": "#/components/schemas/ErrorEnvelope"}


def operation_key(method: str, path: str) -> str:
    return f"{method.upper()} {_PARAM.sub('{}', path)}"


def generated_operation_id(method: str, path: str) -> str:
    """``get /api/user/sessions/{session_id}`` -> ``getUserSessionsBySessionId``."""
    words = [method.lower()]
    for segment in path.strip("/").split("/")[1:]:  # without "api"
        if segment.startswith("{"):
            words.append("By")
            segment = segment.strip("{}")
        words.extend(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", segment) if part)
    return "".join(words)


def plain_text(text: str) -> str:
    """A summary as plain text: no code markup."""
    return _DOUBLE_TICKS.sub(r"\1", text).replace("`", "")


def commonmark(text: str) -> str:
    """reST's ``code`` as CommonMark's `code`."""
    return _DOUBLE_TICKS.sub(r"`\1`", text)


# ---- errors ------------------------------------------------------------------------------

def _generic_errors(method: str, path: str, operation: dict) -> dict[int, str]:
    """The error statuses an operation can answer by its kind alone, with what they say."""
    statuses: dict[int, str] = {}
    if operation.get("security"):
        statuses[401] = ERROR_DESCRIPTIONS[401]
        statuses[403] = ERROR_DESCRIPTIONS[403]
        statuses[503] = "`service_unavailable`: the database or the sign-in keys are " \
                        "unreachable; retry after `Retry-After`."
    elif path not in ALWAYS_AVAILABLE_PATHS:
        statuses[503] = ERROR_DESCRIPTIONS[503]
    if "{" in path:
        statuses[404] = ERROR_DESCRIPTIONS[404]
    if "requestBody" in operation or method.upper() in WRITE_METHODS:
        # a write without a body of its own refuses any field sent (``envelope.Blueprint``)
        statuses[400] = ERROR_DESCRIPTIONS[400]
        statuses[413] = ERROR_DESCRIPTIONS[413]
        statuses[422] = ERROR_DESCRIPTIONS[422]
    if any(p.get("in") == "query" for p in operation.get("parameters", ())):
        statuses[422] = ERROR_DESCRIPTIONS[422]
    if path not in RATE_LIMIT_EXEMPT_PATHS:
        statuses[429] = ERROR_DESCRIPTIONS[429]
    return statuses


def _document_errors(method: str, path: str, operation: dict) -> None:
    responses = operation.setdefault("responses", {})
    for status, description in _generic_errors(method, path, operation).items():
        key = str(status)
        response = responses.get(key)
        if response is None:
            responses[key] = {"description": description,
                              "content": {"application/json": {"schema": dict(_ERROR_REF)}}}
            continue
        said = response.get("description") or ""
        codes = re.findall(r"`([a-z_]+)`", description)
        if codes and not all(f"`{code}`" in said for code in codes):
            response["description"] = f"{said} Also {description}" if said else description


# ---- pagination --------------------------------------------------------------------------

def _paginate(operation: dict, schemas: dict) -> None:
    """A list route taking ``page`` and ``per_page`` answers a page: ``pagination`` is set."""
    names = {p.get("name") for p in operation.get("parameters", ()) if p.get("in") == "query"}
    if not {"page", "per_page"} <= names:
        return
    for status, response in operation.get("responses", {}).items():
        if not status.startswith("2"):
            continue
        for media in response.get("content", {}).values():
            ref = media.get("schema", {}).get("$ref", "")
            name = ref.rsplit("/", 1)[-1]
            if not name.endswith("ListEnvelope") or name not in schemas:
                continue
            page_name = name.removesuffix("ListEnvelope") + "PageEnvelope"
            if page_name not in schemas:
                page = copy.deepcopy(schemas[name])
                page["properties"]["pagination"] = {"$ref": "#/components/schemas/Pagination"}
                page["required"] = sorted({*page.get("required", ()), "pagination"})
                schemas[page_name] = page
            media["schema"] = {"$ref": f"#/components/schemas/{page_name}"}


def _referenced_schemas(node, found: set) -> set:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            _referenced_schemas(value, found)
    elif isinstance(node, list):
        for item in node:
            _referenced_schemas(item, found)
    return found


def _drop_unused_schemas(doc: dict) -> None:
    """Component schemas nothing reaches (e.g. flask-smorest's ``PaginationMetadata``)."""
    schemas = doc["components"]["schemas"]
    reached = _referenced_schemas({k: v for k, v in doc.items() if k != "components"}, set())
    reached |= _referenced_schemas(doc["components"].get("responses", {}), set())
    todo = list(reached)
    while todo:
        name = todo.pop()
        for found in _referenced_schemas(schemas.get(name, {}), set()) - reached:
            reached.add(found)
            todo.append(found)
    for name in list(schemas):
        if name not in reached:
            del schemas[name]


# ---- nullable references ---------------------------------------------------------------

def nullable_refs(node):
    """apispec writes a nullable nested schema as ``anyOf: [{type: object, nullable: true},
    {$ref}]``, which generators read as "any object, or null, or the schema"; written as
    ``allOf: [{$ref}]`` with ``nullable: true`` it is "the schema, or null"."""
    if isinstance(node, list):
        for item in node:
            nullable_refs(item)
        return
    if not isinstance(node, dict):
        return
    alternatives = node.get("anyOf")
    if isinstance(alternatives, list) and len(alternatives) == 2:
        loose = [a for a in alternatives if a == {"type": "object", "nullable": True}]
        refs = [a for a in alternatives if set(a) == {"$ref"}]
        if len(loose) == 1 and len(refs) == 1:
            del node["anyOf"]
            node["allOf"] = refs
            node["nullable"] = True
    for value in node.values():
        nullable_refs(value)


# ---- routes outside the blueprints -------------------------------------------------------

def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": dict(_ERROR_REF)}}}


def _text(media_type: str, description: str, example: str) -> dict:
    return {"description": description,
            "content": {media_type: {"schema": {"type": "string"}, "example": example}}}


# Routes the contract names that no API blueprint documents: the documents themselves, the
# operations endpoint and the socket's handshake (its messages: ``/api/asyncapi.json``). The
# generic error statuses are added to them as to any route.
OTHER_ROUTES = {
    "/api/openapi.json": {"get": {
        "tags": ["health"], "operationId": "getOpenApiDocument",
        "summary": "This OpenAPI document.",
        "description": "The document itself, not in the envelope. Docs pages: `/api/docs` "
                       "(Swagger UI) and `/api/redoc`; the socket: `/api/asyncapi.json`.",
        "responses": {"200": {"description": "The OpenAPI 3.0 document.", "content": {
            "application/json": {"schema": {"type": "object"},
                                 "example": {"openapi": "3.0.3"}}}}}}},
    "/api/docs": {"get": {
        "tags": ["health"], "operationId": "getApiDocsPage",
        "summary": "The API's documentation page (Swagger UI).",
        "description": "Every asset it loads comes from the API itself; ReDoc is at "
                       "`/api/redoc`.",
        "responses": {"200": _text("text/html", "An HTML page.", "<!doctype html>")}}},
    "/metrics": {"get": {
        "tags": ["health"], "operationId": "getMetrics",
        "summary": "Prometheus metrics of every web and worker process.",
        "description": "For operators, not the SPA: served only with `Authorization: Bearer "
                       "<METRICS_TOKEN>`. Without `METRICS_TOKEN` set the route answers 404 "
                       "and the metrics are served on `METRICS_BIND` only.",
        "responses": {
            "200": _text("text/plain", "Prometheus text exposition format.",
                         'sonicus_http_requests_total{route="/api/health",method="GET",'
                         'status="200"} 1.0'),
            "401": _error("`missing_token`: the metrics token was not presented."),
            "404": _error("`not_found`: `METRICS_TOKEN` is not set.")}}},
    "/ws/analytics": {"get": {
        "tags": ["analytics"], "operationId": "openAnalyticsSocket",
        "summary": "Live analytics over a WebSocket.",
        "description": "A WebSocket handshake. The token comes as the subprotocol pair "
                       "`bearer, <token>` or as `?access_token=`; the messages and close codes "
                       "are described by the AsyncAPI document at `/api/asyncapi.json`.",
        "responses": {
            "101": {"description": "Switching Protocols: the socket is open."},
            "400": _error("`validation_error`: not a WebSocket handshake.")}}},
}


# ---- the whole document ------------------------------------------------------------------

def finish_document(spec: dict) -> dict:
    """The served OpenAPI document, from the one flask-smorest builds (left unchanged)."""
    doc = copy.deepcopy(spec)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for path, item in OTHER_ROUTES.items():
        doc.setdefault("paths", {}).setdefault(path, copy.deepcopy(item))
    for path, item in doc.get("paths", {}).items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            operation.setdefault("operationId",
                                 OPERATION_IDS.get(operation_key(method, path))
                                 or generated_operation_id(method, path))
            if operation.get("summary"):
                operation["summary"] = plain_text(operation["summary"])
            if operation.get("description"):
                operation["description"] = commonmark(operation["description"])
            _document_errors(method, path, operation)
            _paginate(operation, schemas)
            for parameter in operation.get("parameters", ()):
                if parameter.get("description"):
                    parameter["description"] = commonmark(parameter["description"])
                if "schema" in parameter and "example" not in parameter:
                    value = example_for(parameter.get("name"), parameter["schema"])
                    if value is not None:
                        parameter["example"] = value
    _drop_unused_schemas(doc)
    nullable_refs(schemas)
    for schema in schemas.values():
        add_examples(schema)
        for prop in schema.get("properties", {}).values():
            if prop.get("description"):
                prop["description"] = commonmark(prop["description"])
    for tag in doc.get("tags", ()):
        if tag.get("description"):
            tag["description"] = commonmark(tag["description"])
    return doc


SPEC_KEY = "sonicus_openapi_spec"


class DocumentedApi(Api):
    """The app's ``Api``: serves the finished document, each app its own (the one ``Api``
    object keeps only the latest app's spec: a test that builds a second app would
    otherwise change the first one's document)."""

    def init_app(self, app, *, spec_kwargs=None):
        super().init_app(app, spec_kwargs=spec_kwargs)
        app.extensions[SPEC_KEY] = self.spec

    def openapi_document(self, app=None) -> dict:
        app = app or flask.current_app
        return finish_document(app.extensions.get(SPEC_KEY, self.spec).to_dict())

    def _openapi_json(self):
        return flask.current_app.response_class(
            flask.json.dumps(self.openapi_document(), indent=2, sort_keys=False),
            mimetype="application/json")

    def _init_spec(self, **kwargs):
        super()._init_spec(**kwargs)
        # What a page's ``pagination`` is (the page envelopes refer to it).
        self.spec.components.schema("Pagination", schema=PaginationSchema)
