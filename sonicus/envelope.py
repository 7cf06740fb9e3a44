"""The response envelope of the API contract: every JSON response is ``{success, data,
message, errors, pagination}``; errors add ``code``.

Views return plain objects (a list's ``Page``: ``pagination.py``); the Blueprint subclass wraps
them, and documents each route's answers and error statuses with the envelope's schemas; the
Api subclass turns every HTTP error (ours, flask-smorest's 422, Flask's 404/405, an unexpected
500) into the same envelope. What an error answer says (its code, message and ``errors``):
``api_errors.py``.
"""

from __future__ import annotations

import functools
from http import HTTPStatus
from inspect import iscoroutinefunction

import flask_smorest
import marshmallow as ma
from flask import current_app, g, has_request_context, request
from webargs import core as webargs_core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import RequestEntityTooLarge

from .api_errors import (
    DEFAULT_CODES,
    DEFAULT_MESSAGES,
    DEFAULT_RETRY_AFTER,
    ERROR_CODES,
    ERROR_DESCRIPTIONS,
    ERROR_EXTRAS,
    ApiError,
    body_too_large,
    error_body,
    error_parts,
)
from .idempotency_http import IdempotencyKeyDocs
from .pagination import Page
from .validation import NoBodySchema, load_json_body


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

# The methods whose requests carry a body (writes).
WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))


def documents_a_body(operation_doc: dict) -> bool:
    """Whether a view method's documentation (flask-smorest's ``_apidoc``) has a request body:
    a body schema (``blp.arguments`` in ``json``), or one described by hand (``blp.doc``,
    the billing webhook, which reads its signed body itself)."""
    parameters = operation_doc.get("arguments", {}).get("parameters", ())
    return (any(p.get("in") == "json" for p in parameters)
            or "requestBody" in operation_doc.get("manual_doc", {}))


# view method -> documents_a_body(its documentation); the methods are module-level objects.
_takes_a_body: dict = {}
_NO_BODY = NoBodySchema()


def _route_takes_a_body(req) -> bool:
    view = current_app.view_functions[req.url_rule.endpoint]
    view_class = getattr(view, "view_class", None)
    method = getattr(view_class, req.method.lower(), None) if view_class else view
    takes = _takes_a_body.get(method)
    if takes is None:
        takes = _takes_a_body[method] = documents_a_body(getattr(method, "_apidoc", {}))
    return takes


class BodyParser(FlaskParser):
    """webargs' parser, reading a JSON body with ``validation.load_json_body``. A body of
    another type is refused (400) instead of being read as no body at all, which would let a
    write go ahead with what it asked for dropped; an empty one is no body, whatever its type."""

    def _raw_load_json(self, req):
        if is_json_request(req):
            return load_json_body(req.get_data(cache=True))
        if req.get_data(cache=True).strip():
            raise ApiError(400, "validation_error", DEFAULT_MESSAGES[400], errors=[
                "body: Must be JSON, sent with Content-Type: application/json."])
        return webargs_core.missing

    def _handle_invalid_json_error(self, error, req, *args, **kwargs):
        """A body that is not JSON, or not UTF-8, names the body and where it went wrong."""
        if isinstance(error, UnicodeDecodeError):
            detail = f"Not UTF-8 text (byte {error.start})."
        else:
            detail = f"Not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})."
        raise ApiError(400, "validation_error", DEFAULT_MESSAGES[400],
                       errors=[f"body: {detail}"])


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()

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

        A write whose route documents no request body takes none: what it is sent is read
        as ``NoBodySchema`` (nothing or ``{}``; a field is a 422 naming it, a body that is not
        JSON a 400), like any body, before the view.

        Right before the view function runs (its arguments parsed), ``g.before_view`` is
        called when a sign-in decorator left one (a claim of an ``Idempotency-Key`` still
        on its way: auth.py); what it returns is answered instead of running the view. None
        is left for a view marked ``retry_safe.no_effect_before_commit``: its claim is read
        before its first commit instead."""
        documented = super().response(status_code, schema, **kwargs)
        parser = self.ARGUMENTS_PARSER

        def decorator(func):
            @functools.wraps(func)
            def unpage(*args, **kw):
                req = request._get_current_object()
                if req.method in WRITE_METHODS and req.get_data(cache=True) \
                        and not _route_takes_a_body(req):
                    parser.parse(_NO_BODY, req, location="json")
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


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorEnvelopeSchema

    def _init_spec(self, *, extra_plugins=None, **kwargs):
        super()._init_spec(extra_plugins=[*(extra_plugins or ()), IdempotencyKeyDocs()],
                           **kwargs)

    def handle_http_exception(self, error):
        status = error.code or 500
        data = getattr(error, "data", None) or {}
        code = data.get("code") or DEFAULT_CODES.get(status, "error")
        if isinstance(error, RequestEntityTooLarge) and not data:
            data = body_too_large(request.max_content_length if has_request_context() else None)
        message, errors = error_parts(error, status, data)
        headers = dict(data.get("headers") or {})
        if status == 405 and getattr(error, "valid_methods", None):
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        if status in DEFAULT_RETRY_AFTER:
            headers.setdefault("Retry-After", DEFAULT_RETRY_AFTER[status])
        body = error_body(status, code, message, errors, data.get("extra"))
        return body, status, headers
