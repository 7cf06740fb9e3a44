"""The API described for people and for code generators, served by the app alone: no page or
asset comes from another host, so the docs work offline and under a strict CSP.

- ``/api/docs``: Swagger UI (assets from the ``swagger-ui-bundle`` package);
- ``/api/redoc``: ReDoc (``static/redoc/redoc.standalone.js``, vendored from the npm package
  ``redoc``: no pip package ships it without pulling in another web framework);
- ``/api/openapi.json``: the OpenAPI document (flask-smorest, finished by ``openapi.py``);
- ``/api/asyncapi.json``: the WebSocket ``/ws/analytics`` as an AsyncAPI 3 document, its
  payload schemas taken from the OpenAPI document (one source for both).

The pages hold no inline script: the web layer gives them a ``script-src 'self'`` policy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    render_template_string,
    send_from_directory,
)
from swagger_ui_bundle import swagger_ui_path

from .extensions import api

STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
# What the pages load, and nothing else is served from these folders.
SWAGGER_UI_ASSETS = frozenset(("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"))
REDOC_ASSETS = frozenset(("redoc.standalone.js",))
DOCS_PREFIXES = ("/api/docs", "/api/redoc")
ASSET_MAX_AGE = 3600

blp = Blueprint("docs", __name__, url_prefix="/api")

_SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" type="image/png"
      href="{{ url_for('docs.swagger_asset', name='favicon-32x32.png') }}">
<link rel="stylesheet" href="{{ url_for('docs.swagger_asset', name='swagger-ui.css') }}">
</head><body>
<div id="swagger-ui" data-spec-url="{{ spec_url }}"></div>
<script src="{{ url_for('docs.swagger_asset', name='swagger-ui-bundle.js') }}"></script>
<script src="{{ url_for('docs.swagger_init') }}"></script>
</body></html>
"""

# ReDoc's standalone bundle renders every <redoc spec-url> element by itself: no script here.
_REDOC_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
</head><body>
<redoc spec-url="{{ spec_url }}" hide-download-button="false"></redoc>
<script src="{{ url_for('docs.redoc_asset', name='redoc.standalone.js') }}"></script>
</body></html>
"""


def _spec_url() -> str:
    return current_app.url_for("api-docs.openapi_json")


@blp.route("/docs")
def swagger_ui():
    return render_template_string(_SWAGGER_PAGE, title=f"{api.spec.title} (Swagger UI)",
                                  spec_url=_spec_url())


@blp.route("/docs/assets/<string:name>")
def swagger_asset(name: str):
    if name not in SWAGGER_UI_ASSETS:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, name, max_age=ASSET_MAX_AGE)


@blp.route("/docs/assets/swagger-init.js")
def swagger_init():
    return send_from_directory(STATIC / "docs", "swagger-init.js", max_age=ASSET_MAX_AGE)


@blp.route("/redoc")
def redoc():
    return render_template_string(_REDOC_PAGE, title=f"{api.spec.title} (ReDoc)",
                                  spec_url=_spec_url())


@blp.route("/redoc/assets/<string:name>")
def redoc_asset(name: str):
    if name not in REDOC_ASSETS:
        abort(404)
    return send_from_directory(STATIC / "redoc", name, max_age=ASSET_MAX_AGE)


@blp.route("/asyncapi.json")
def asyncapi_json():
    return jsonify(asyncapi_document(api.openapi_document(), current_app.config))


# ---- AsyncAPI ----------------------------------------------------------------------------

CLOSE_CODES = {
    "4401": "The token is missing, invalid or expired, or the account was erased: sign in "
            "again, then reconnect.",
    "4403": "The account is suspended or no longer allowed: do not reconnect.",
    "4429": "Too many open sockets for this user (`WS_MAX_SOCKETS_PER_USER`): close another "
            "tab's socket first.",
    "1013": "The server is busy (this process holds its maximum of sockets) or sign-in is "
            "unavailable: reconnect after a back-off.",
    "1001": "The server is shutting down or scaling in: reconnect at once (another process "
            "answers).",
}

MESSAGES = {
    "analyticsSnapshot": ("analytics.snapshot",
                          "The caller's analytics, sent once right after the socket opens."),
    "analyticsUpdated": ("analytics.updated",
                         "The caller's analytics after a refresh (a session completed, a "
                         "refresh asked for, or a resync after a gap), from whichever process "
                         "computed them."),
}


def json_schema(node):
    """An OpenAPI 3.0 schema as JSON Schema draft 7 (what AsyncAPI's default format is):
    ``nullable`` becomes a ``null`` alternative, ``example`` becomes ``examples``."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "example":
            out["examples"] = [value]
        elif key != "nullable":
            out[key] = json_schema(value)
    if node.get("nullable"):
        if isinstance(node.get("type"), str):
            out["type"] = [node["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        elif "type" not in node:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def _schema_closure(schemas: dict, roots: list[str]) -> dict:
    """``roots`` and every component schema they reference, as JSON Schema."""
    wanted, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name in wanted:
            continue
        wanted[name] = schema = json_schema(copy.deepcopy(schemas[name]))
        todo.extend(_refs(schema))
    return dict(sorted(wanted.items()))


def _refs(node):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            yield ref.rsplit("/", 1)[1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _server(config) -> dict:
    base = urlsplit(config.get("PUBLIC_BASE_URL") or "http://127.0.0.1:18100")
    return {"host": base.netloc, "protocol": "wss" if base.scheme == "https" else "ws",
            "description": "The API's own address (`PUBLIC_BASE_URL`); sockets need no "
                           "stickiness: every process delivers every user's updates.",
            "security": [{"$ref": "#/components/securitySchemes/accessTokenQuery"},
                         {"$ref": "#/components/securitySchemes/bearerSubprotocol"}]}


def asyncapi_document(openapi: dict, config) -> dict:
    """The AsyncAPI 3.0 document of ``/ws/analytics``; ``openapi`` is the finished OpenAPI
    document (its ``Analytics`` schema is the messages' ``data``)."""
    schemas = _schema_closure(openapi["components"]["schemas"], ["Analytics"])
    messages = {}
    for key, (name, summary) in MESSAGES.items():
        messages[key] = {
            "name": name, "title": name, "summary": summary,
            "contentType": "application/json",
            "payload": {"type": "object", "required": ["type", "data"],
                        "additionalProperties": False,
                        "properties": {"type": {"type": "string", "const": name},
                                       "data": {"$ref": "#/components/schemas/Analytics"}}},
        }
    close_codes = "\n".join(f"- `{code}`: {text}" for code, text in CLOSE_CODES.items())
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": f"{openapi['info']['title']}: live updates",
            "version": openapi["info"]["version"],
            "description": "The caller's analytics, pushed over a WebSocket. Text frames, one "
                           "JSON object each: `{type, data}`. The server pings every 25 s; a "
                           "client sends nothing.",
        },
        "defaultContentType": "application/json",
        "servers": {"api": _server(config)},
        "channels": {"analytics": {
            "address": "/ws/analytics",
            "title": "Analytics",
            "description": "Open with the access token (query `access_token` or the "
                           "subprotocol pair `bearer, <token>`); it is checked before the "
                           "upgrade. Tokens over ~8 KB must use the subprotocol: a request "
                           "line over 8190 bytes is refused (414) before the API sees it, "
                           "and a browser only sees the handshake fail. A refused token "
                           "still completes the handshake (a browser "
                           "cannot read a refused handshake's status) and is closed at once. "
                           f"Close codes:\n{close_codes}",
            "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
            "bindings": {"ws": {
                "method": "GET",
                "query": {"type": "object", "properties": {"access_token": {
                    "type": "string", "description": "The access token (JWT), when short "
                                                     "(the request line takes 8190 bytes); "
                                                     "else the subprotocol pair."}}},
                "bindingVersion": "0.1.0"}},
            "x-close-codes": CLOSE_CODES,
        }},
        "operations": {
            f"send{key[0].upper()}{key[1:]}": {
                "action": "send",
                "channel": {"$ref": "#/channels/analytics"},
                "summary": summary,
                "messages": [{"$ref": f"#/channels/analytics/messages/{key}"}],
            } for key, (_name, summary) in MESSAGES.items()
        },
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "accessTokenQuery": {"type": "httpApiKey", "in": "query",
                                     "name": "access_token",
                                     "description": "The access token in the query string."},
                "bearerSubprotocol": {
                    "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "The access token as the second subprotocol: "
                                   "`Sec-WebSocket-Protocol: bearer, <token>` (browsers: "
                                   "`new WebSocket(url, [\"bearer\", token])`)."},
            },
        },
    }
