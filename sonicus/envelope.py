"""The response envelope of the API contract, its schemas, pagination and error handling.

Every JSON response is ``{success, data, message, errors, pagination}``; errors add ``code``.
Views return plain objects; the Blueprint subclass wraps them, and the Api subclass turns
every HTTP error (ours, flask-smorest's 422, Flask's 404/405, an unexpected 500) into the
same envelope.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from dataclasses import dataclass
from http import HTTPStatus
from inspect import iscoroutinefunction

import flask_smorest
import marshmallow as ma
from apispec import BasePlugin
from flask import Response, g, request
from werkzeug.exceptions import HTTPException

from .validation import QueryArgsSchema

# Every machine-readable ``code`` an error answer can carry: THE list (the OpenAPI document's
# enum of ``ErrorEnvelope.code``; a test checks every code the code base raises is here).
ERROR_CODES = {
    "validation_error": "The request or a field is not valid; `errors` names the field.",
    "missing_token": "No access token was sent.",
    "invalid_token": "The access token is invalid, expired or for another audience.",
    "payment_required": "The payment provider declined the charge.",
    "forbidden": "Not allowed: not an administrator, or not in the group the API requires.",
    "account_suspended": "The account is suspended.",
    "package_locked": "The package is above the caller's tier (see `required_tier`).",
    "email_not_verified": "Paid tiers and trials need a verified email.",
    "feature_not_in_tier": "The caller's tier does not include this feature.",
    "not_found": "No such resource of the caller's.",
    "method_not_allowed": "This method is not allowed here.",
    "conflict": "The resource is not in a state that allows this.",
    "trial_already_used": "The free trial was used before (one per person, ever).",
    "use_billing_portal": "A past-due subscription is fixed in the billing portal "
                          "(see `portal_url`).",
    "idempotency_key_in_use": "A request with this Idempotency-Key is still running.",
    "idempotency_key_reused": "This Idempotency-Key was used for another request.",
    "payload_too_large": "The request body is too large.",
    "unsupported_media_type": "The request body is not JSON.",
    "invalid_signature": "The webhook's signature, timestamp or body is not acceptable.",
    "daily_session_limit_reached": "Today's sessions of the tier are used up "
                                   "(see `resets_at`).",
    "rate_limited": "Too many requests; retry after `Retry-After` seconds.",
    "internal_error": "Something went wrong on the server.",
    "billing_unavailable": "The payment provider could not be reached.",
    "service_unavailable": "A dependency is unreachable; retry after `Retry-After`.",
    "range_not_satisfiable": "The requested byte range lies outside the file (development "
                             "media).",
    "error": "Any other HTTP error (its status says which).",
}

# Fields some error answers add beside ``code`` (documented on ``ErrorEnvelope``).
ERROR_EXTRAS = {
    "required_tier": ("package_locked", "The lowest tier that opens the package."),
    "resets_at": ("daily_session_limit_reached", "When the next user day starts."),
    "portal_url": ("use_billing_portal", "The provider's billing portal for this customer."),
}

# Paths the rate limits do not count (``ratelimit.py``); every other answer may be a 429.
RATE_LIMIT_EXEMPT_PATHS = frozenset(("/api/health", "/api/ready"))

DEFAULT_CODES = {
    400: "validation_error",
    401: "invalid_token",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}
DEFAULT_MESSAGES = {
    400: "The request is not valid.",
    401: "A valid access token is required.",
    404: "Not found.",
    405: "This method is not allowed here.",
    422: "The request is not valid.",
    500: "Something went wrong on our side.",
}


class ApiError(HTTPException):
    """An error with a machine-readable code, raised by services and views alike."""

    def __init__(self, status: int, code: str, message: str, *, errors=None,
                 headers=None, data=None):
        super().__init__(description=message)
        self.code = status
        self.data = {"code": code, "message": message, "errors": errors,
                     "headers": headers or {}, "extra": data or {}}


def fail(status: int, code: str, message: str, **kwargs):
    raise ApiError(status, code, message, **kwargs)


def not_found(what: str = "Resource"):
    raise ApiError(404, "not_found", f"{what} not found.")


def flatten_errors(messages, prefix: str = "") -> list[str]:
    """Turn marshmallow/webargs error structures into ``"field: message"`` strings."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            key = str(key)
            if not prefix and key in ("json", "query", "form", "path", "headers", "files"):
                out.extend(flatten_errors(value, ""))
            elif key == "_schema":
                out.extend(flatten_errors(value, prefix))
            else:
                out.extend(flatten_errors(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            out.extend(flatten_errors(item, prefix))
    else:
        out.append(f"{prefix}: {messages}" if prefix else str(messages))
    return out


# ---- schemas -------------------------------------------------------------------------------

class PaginationSchema(ma.Schema):
    page = ma.fields.Integer(required=True)
    per_page = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    pages = ma.fields.Integer(required=True)


def Null(**kwargs) -> ma.fields.Constant:  # noqa: N802  (a field factory)
    """A field that is always ``null`` (documented as such, not as "anything")."""
    return ma.fields.Constant(None, allow_none=True, required=True,
                              metadata={"enum": [None], **kwargs.pop("metadata", {})},
                              **kwargs)


def _error_extra(name: str) -> ma.fields.Field:
    code, description = ERROR_EXTRAS[name]
    if name == "resets_at":
        return ma.fields.DateTime(metadata={"description": f"With `{code}`: {description}"})
    return ma.fields.String(metadata={"description": f"With `{code}`: {description}"})


class ErrorEnvelopeSchema(ma.Schema):
    """Every error answer; some add one of the ``ERROR_EXTRAS`` beside ``code``."""

    success = ma.fields.Boolean(required=True, metadata={"enum": [False], "example": False})
    data = Null()
    message = ma.fields.String(required=True, metadata={"example": "The request is not valid."})
    errors = ma.fields.List(ma.fields.String(), required=True,
                            validate=ma.validate.Length(min=1),
                            metadata={"example": ["timezone: Not a valid IANA time zone."]})
    pagination = Null()
    code = ma.fields.String(required=True, validate=ma.validate.OneOf(tuple(ERROR_CODES)),
                            metadata={"example": "validation_error"})
    required_tier = _error_extra("required_tier")
    resets_at = _error_extra("resets_at")
    portal_url = _error_extra("portal_url")


class PageArgsSchema(QueryArgsSchema):
    """Query arguments of every list route; list routes' own query schemas extend it."""

    page = ma.fields.Integer(load_default=1, validate=ma.validate.Range(min=1, max=100000))
    per_page = ma.fields.Integer(load_default=20, validate=ma.validate.Range(min=1, max=100))


class ResponseSchema(ma.Schema):
    """An output schema. An immutable result (a frozen object with a ``dump_memo`` dict, such
    as the signed-in caller, kept for seconds and shared by requests) is dumped once per
    schema and reused; anything else is dumped every time."""

    def dump(self, obj, *, many=None):
        memo = getattr(obj, "dump_memo", None)
        if memo is None:
            return super().dump(obj, many=many)
        key = (type(self), many)
        dumped = memo.get(key)
        if dumped is None:
            dumped = memo[key] = super().dump(obj, many=many)
        return dumped


@dataclass(frozen=True)
class Page:
    """One page of a list: what list services return; the Blueprint turns it into ``data``
    (the items) and the envelope's ``pagination``."""

    items: list
    total: int
    page: int
    per_page: int

    @property
    def pagination(self) -> dict:
        pages = math.ceil(self.total / self.per_page) if self.total else 0
        return {"page": self.page, "per_page": self.per_page, "total": self.total,
                "pages": pages}


_envelopes: dict[tuple, type[ma.Schema]] = {}


def envelope_schema(schema: ma.Schema | None) -> type[ma.Schema]:
    """The documented envelope around ``schema`` (cached: one class per name)."""
    if schema is None:
        name, data_field = "EmptyEnvelope", Null()
    else:
        many = bool(getattr(schema, "many", False))
        base = type(schema).__name__.removesuffix("Schema")
        name = f"{base}{'List' if many else ''}Envelope"
        data_field = ma.fields.Nested(type(schema), many=many, required=True)
    if name not in _envelopes:
        # ``pagination`` is null here; a paginated list route's answer is documented with
        # the ``...PageEnvelope`` that ``openapi.py`` derives (``pagination`` required).
        _envelopes[name] = type(name, (ma.Schema,), {
            "success": ma.fields.Boolean(required=True, metadata={"enum": [True]}),
            "data": data_field,
            "message": ma.fields.String(allow_none=True, required=True),
            "errors": Null(),
            "pagination": Null(),
        })
    return _envelopes[name]


def envelope(data=None, *, message=None, pagination=None) -> dict:
    return {"success": True, "data": data, "message": message, "errors": None,
            "pagination": pagination}


def set_message(message: str) -> None:
    """Set the envelope's human message for the current response."""
    g.envelope_message = message


ERROR_DESCRIPTIONS = {
    400: "`validation_error`: the body is not JSON, or nests too deeply.",
    401: "`missing_token` or `invalid_token`: sign in again.",
    402: "`payment_required`: the provider declined the charge.",
    403: "`account_suspended`, or `forbidden`: not in the group the API requires.",
    404: "`not_found`: no such resource of the caller's.",
    409: "`conflict`: the resource is not in a state that allows this.",
    413: "`payload_too_large`: the body is over `MAX_CONTENT_LENGTH`.",
    422: "`validation_error`: a field is invalid; `errors` names it.",
    429: "`rate_limited`: too many requests; retry after `Retry-After` seconds.",
    502: "`billing_unavailable`: the payment provider could not be reached.",
    503: "`service_unavailable`: a dependency is unreachable; retry after `Retry-After`.",
}


def doc_only(decorator):
    """A flask-smorest decorator that only documents (``doc``, ``alt_response``): the
    function itself, given the documentation flask-smorest's layer would carry, instead of
    that layer (which asks ``current_app.ensure_sync`` again on every call of the view) or
    any other call through."""

    def decorate(func):
        documented = decorator(func)
        if iscoroutinefunction(func):
            return documented
        func._apidoc = documented._apidoc  # a copy: flask-smorest never changes func's own
        return func

    return decorate


# Set on a view wrapped by ``Blueprint.response``: it calls ``g.before_view`` itself.
SETTLES_CLAIM = "sonicus_settles_claim"


class Blueprint(flask_smorest.Blueprint):
    def errors(self, *statuses):
        """Document the error statuses a route can answer, each with the error envelope.

        A status is a number (its usual description) or ``(number, description)``.
        """
        def decorate(func):
            for item in statuses:
                status, description = item if isinstance(item, tuple) else (item, None)
                func = self.alt_response(status, description=description)(func)
            return func
        return decorate

    def alt_response(self, status_code, response=None, *, schema=None, description=None,
                     **kwargs):
        """Error statuses are documented with the error envelope unless told otherwise."""
        if response is None and schema is None and int(status_code) >= 400:
            response = {"schema": ErrorEnvelopeSchema, "content_type": None,
                        "description": description or ERROR_DESCRIPTIONS.get(int(status_code))
                        or HTTPStatus(int(status_code)).phrase}
        return doc_only(super().alt_response(status_code, response, schema=schema,
                                             description=description, **kwargs))

    def response(self, status_code, schema=None, **kwargs):
        """A view may return a ``Page``: its items become ``data``, the rest ``pagination``.

        Right before the view function runs (its arguments parsed), ``g.before_view`` is
        called when a sign-in decorator left one (a claim of an ``Idempotency-Key`` still
        on its way: auth.py); what it returns is answered instead of running the view."""
        documented = super().response(status_code, schema, **kwargs)

        def decorator(func):
            @functools.wraps(func)
            def unpage(*args, **kw):
                before_view = g._get_current_object().__dict__.pop("before_view", None)
                if before_view is not None:
                    instead = before_view()
                    if instead is not None:
                        return instead
                result = func(*args, **kw)
                if isinstance(result, Page):
                    g.pagination = result.pagination
                    return result.items
                return result
            setattr(unpage, SETTLES_CLAIM, True)
            return documented(unpage)
        return decorator

    @staticmethod
    def _make_doc_response_schema(schema):
        return envelope_schema(schema)

    @staticmethod
    def _prepare_response_content(data):
        state = g._get_current_object().__dict__
        return envelope(data, message=state.get("envelope_message"),
                        pagination=state.get("pagination"))


def paginate(db, statement, args: dict) -> Page:
    """Run one page of a select (``args``: the list route's ``page`` and ``per_page``)."""
    page, per_page = args["page"], args["per_page"]
    result = db.paginate(statement, page=page, per_page=per_page, error_out=False,
                         max_per_page=100)
    return Page(list(result.items), result.total or 0, page, per_page)


def error_body(status: int, code: str, message: str, errors=None, extra=None) -> dict:
    body = {"success": False, "data": None, "message": message, "errors": errors,
            "pagination": None, "code": code}
    if extra:
        body.update(extra)
    return body


def _error_parts(error, status: int, data: dict) -> tuple[str, list]:
    """The message and ``errors`` of an error answer: ``errors`` is never empty (at least the
    message); a 500 says nothing of the exception."""
    if status == 500:
        return DEFAULT_MESSAGES[500], [DEFAULT_MESSAGES[500]]
    errors = data.get("errors")
    if errors is None and "messages" in data:
        errors = flatten_errors(data["messages"])
    elif isinstance(errors, dict):
        errors = flatten_errors(errors)
    if status > 500:
        message = data.get("message") or DEFAULT_MESSAGES.get(status) or error.name
    else:
        message = data.get("message") or DEFAULT_MESSAGES.get(status) or error.description
    if errors:
        return message, list(errors)
    if status in (400, 422) and error.description:
        return message, [error.description]
    return message, [message]


class IdempotencyKeyDocs(BasePlugin):
    """Documents ``Idempotency-Key`` once, as a parameter of every signed-in write."""

    PARAMETER = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        "example": "5f0c9a5e-7b1d-4c2e-9f53-0c2f4b6f2a10",
        "description": (
            "Makes the write safe to retry (1..255 printable ASCII characters, scoped to the "
            "caller, kept 24 h). The same key with the same method, path and body answers the "
            "first answer again, with `Idempotent-Replayed: true`, and does nothing again; "
            "with another method, path or body: 422 `idempotency_key_reused`; while the "
            "first is still running: 409 `idempotency_key_in_use`. Answers of 500 and above "
            "are not kept."),
    }

    def init_spec(self, spec):
        spec.components.parameter("IdempotencyKey", "header", self.PARAMETER)

    def operation_helper(self, path=None, operations=None, **kwargs):
        for method, operation in (operations or {}).items():
            if method.upper() in WRITE_METHODS and operation.get("security"):
                operation.setdefault("parameters", []).append("IdempotencyKey")


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorEnvelopeSchema

    def _init_spec(self, *, extra_plugins=None, **kwargs):
        super()._init_spec(extra_plugins=[*(extra_plugins or ()), IdempotencyKeyDocs()],
                           **kwargs)

    def handle_http_exception(self, error):
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        code = data.get("code") or DEFAULT_CODES.get(status, "error")
        message, errors = _error_parts(error, status, data)
        headers = dict(data.get("headers") or {})
        if status == 405 and getattr(error, "valid_methods", None):
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        body = error_body(status, code, message, errors, data.get("extra"))
        return body, status, headers


# ---- retry-safe writes: the HTTP side of ``services.idempotency`` ----------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# The headers of an answer that a replay repeats (the rest are the replaying request's own).
KEPT_HEADERS = ("Content-Type", "Location", "Retry-After")
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` when it is a write that sends one; 422 naming the
    header when the value is not 1..255 printable ASCII characters."""
    req = request._get_current_object()
    if req.method not in WRITE_METHODS:
        return None
    value = req.headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if _IDEMPOTENCY_KEY.fullmatch(value) is None:
        raise ApiError(422, "validation_error", "The Idempotency-Key header is not valid.",
                       errors=[f"{IDEMPOTENCY_HEADER}: must be 1 to 255 printable ASCII "
                               "characters."])
    return value


def request_fingerprint() -> str:
    """SHA-256 of the request's method, path with query string, and body (as sent)."""
    environ = request.environ
    digest = hashlib.sha256(request.method.encode("ascii"))
    digest.update(b" ")
    digest.update((environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
                  .encode("latin-1", "replace"))
    digest.update(b"?")
    digest.update(request.query_string)
    digest.update(b"\n")
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def kept_headers(response: Response) -> dict[str, str]:
    headers = response.headers
    return {name: headers[name] for name in KEPT_HEADERS if name in headers}


def replay_response(status: int, body: str, headers: dict[str, str]) -> Response:
    """The kept answer of a write, again, marked as a replay."""
    response = Response(body, status=status, headers=headers)
    response.headers[REPLAYED_HEADER] = "true"
    return response
