"""The API's errors: ``ApiError`` (raised by services and views alike, with a machine-readable
code), THE list of codes (``ERROR_CODES``) and the fields some errors add (``ERROR_EXTRAS``), and
what the answer of any HTTP error says: the code and message a status has by default, ``errors``
never empty and at most ``ERRORS_LISTED`` lines (``error_parts``), a 500 saying nothing of the
exception, the body (``error_body``).
What each error status means in the OpenAPI document is here too (``ERROR_DESCRIPTIONS``). The
error envelope's schema and the handler that answers: ``envelope.py``.
"""

from __future__ import annotations

from werkzeug.exceptions import HTTPException
from werkzeug.routing import WebsocketMismatch

# The most lines an answer's ``errors`` lists; a last line counts the others. Above what a
# whole sync batch of bad items needs (``validation.bounded_errors``: 100 items of 11 lines).
ERRORS_LISTED = 1200

# Every machine-readable ``code`` an error answer can carry: THE list (the OpenAPI document's
# enum of ``ErrorEnvelope.code``; a test checks every code the code base raises is here).
ERROR_CODES = {
    "validation_error": "The request or a field is not valid; `errors` names the field.",
    "missing_token": "No access token was sent.",
    "invalid_token": "The access token is invalid, expired or for another audience.",
    "payment_required": "The payment provider declined the charge, or the tier that would "
                        "open this was chosen and its payment has not arrived.",
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
    "token_too_large": "The access token is longer than the API reads (16 KiB): 431.",
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
    431: "token_too_large",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
}
# When an answer of these statuses says nothing itself, it tells the client to try again in
# this many seconds (API.md: 502/503 carry ``Retry-After``).
DEFAULT_RETRY_AFTER = {502: "5", 503: "2"}
DEFAULT_MESSAGES = {
    400: "The request is not valid.",
    401: "A valid access token is required.",
    404: "Not found.",
    405: "This method is not allowed here.",
    422: "The request is not valid.",
    500: "Something went wrong on our side.",
}


ERROR_DESCRIPTIONS = {
    400: "`validation_error`: the body is not JSON, or nests too deeply.",
    401: "`missing_token` or `invalid_token`: sign in again.",
    402: "`payment_required`: the provider declined the charge, or a tier's payment has not "
         "arrived.",
    403: "`account_suspended`, or `forbidden`: not in the group the API requires.",
    404: "`not_found`: no such resource of the caller's.",
    409: "`conflict`: the resource is not in a state that allows this.",
    413: "`payload_too_large`: the body is over `MAX_CONTENT_LENGTH`.",
    422: "`validation_error`: a field is invalid; `errors` names it.",
    429: "`rate_limited`: too many requests; retry after `Retry-After` seconds.",
    502: "`billing_unavailable`: the payment provider could not be reached; retry after "
         "`Retry-After`.",
    503: "`service_unavailable`: a dependency is unreachable; retry after `Retry-After`.",
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


# What an error about a whole location (a schema's own, not one field's) names.
_WHOLE = {"json": "body", "form": "body", "files": "body", "query": "query",
          "path": "path", "headers": "headers"}


def flatten_errors(messages, prefix: str = "", whole: str = "") -> list[str]:
    """Turn marshmallow/webargs error structures into ``"field: message"`` strings; an error
    of a whole location names it (``body: Invalid input type.`` for a body that is not a JSON
    object)."""
    out: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            key = str(key)
            if not prefix and key in _WHOLE:
                out.extend(flatten_errors(value, "", _WHOLE[key]))
            elif key == "_schema":
                out.extend(flatten_errors(value, prefix or whole))
            else:
                out.extend(flatten_errors(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            out.extend(flatten_errors(item, prefix))
    else:
        out.append(f"{prefix}: {messages}" if prefix else str(messages))
    return out


def body_too_large(limit: int | None) -> dict:
    """What a 413 says: the body, and the limit it went over when one is known."""
    return {"message": "The request body is too large.",
            "errors": [f"body: at most {limit} bytes." if limit else "body: too large."]}


def error_body(status: int, code: str, message: str, errors=None, extra=None) -> dict:
    body = {"success": False, "data": None, "message": message, "errors": errors,
            "pagination": None, "code": code}
    if extra:
        body.update(extra)
    return body


def error_parts(error, status: int, data: dict) -> tuple[str, list]:
    """The message and ``errors`` of an error answer: ``errors`` is never empty (at least the
    message); a 500 says nothing of the exception."""
    if status == 500:
        return DEFAULT_MESSAGES[500], [DEFAULT_MESSAGES[500]]
    if isinstance(error, WebsocketMismatch):  # a socket's address asked without a handshake
        return ("This address takes a WebSocket connection.",
                ["Upgrade: must be websocket (a WebSocket handshake)."])
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
        errors = list(errors)
        if len(errors) > ERRORS_LISTED:
            errors[ERRORS_LISTED:] = [f"{len(errors) - ERRORS_LISTED} more errors not listed."]
        return message, errors
    if status in (400, 422) and error.description:
        return message, [error.description]
    return message, [message]
