"""Retry-safe writes as HTTP sees them: which requests may send an ``Idempotency-Key``
(``WRITE_METHODS``) and the values it accepts (``idempotency_key``), the request's fingerprint
(method, path with query string, body), the headers a kept answer keeps, the replay of a kept
answer (``Idempotent-Replayed: true``), and the header as the OpenAPI document describes it
(``IdempotencyKeyDocs``). The claim in the request: ``retry_safe.py``; the rules and the table:
``services/idempotency.py``.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import datetime, timedelta

from apispec import BasePlugin
from flask import Response, request

from .api_errors import ApiError

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
# The headers of an answer that a replay repeats (the rest are the replaying request's own).
KEPT_HEADERS = ("Content-Type", "Location", "Retry-After")
_KEPT_BY_LOWER = {name.lower(): name for name in KEPT_HEADERS}
# Kept beside a Retry-After of delta-seconds: the moment it points at (ISO 8601, UTC). A replay
# answers Retry-After counted from the replay to that moment, never sends this one.
RETRY_AT = "Retry-After-At"
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")


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
    """SHA-256 of the request's method, path and body (as sent). The query string is not
    part of it: no write reads one, and unknown query arguments (a cache-buster) are ignored
    on every route, so a retry that adds or changes one is the same request."""
    environ = request.environ
    digest = hashlib.sha256(request.method.encode("ascii"))
    digest.update(b" ")
    digest.update((environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
                  .encode("latin-1", "replace"))
    # "?\n" as when the query string was part of it and empty: keys kept before still match
    digest.update(b"?\n")
    digest.update(request.get_data(cache=True))
    return digest.hexdigest()


def kept_headers(response: Response, now: datetime) -> dict[str, str]:
    """The answer's ``KEPT_HEADERS`` (the first of each), from one pass over its headers:
    werkzeug answers a lookup of a header that is not there by building an exception. A
    Retry-After of delta-seconds is kept with the moment it points at (``RETRY_AT``)."""
    kept: dict[str, str] = {}
    for name, value in response.headers.items():
        canonical = _KEPT_BY_LOWER.get(name.lower())
        if canonical is not None and canonical not in kept:
            kept[canonical] = value
    wait = kept.get("Retry-After")
    if wait is not None and wait.isdigit():
        kept[RETRY_AT] = (now + timedelta(seconds=int(wait))).isoformat()
    return kept


def _retry_after_now(headers: dict[str, str], now: datetime) -> dict[str, str]:
    """The kept headers as a replay sends them: a Retry-After kept with its moment
    (``RETRY_AT``) is the seconds from now to that moment (0 once it has passed), so a
    replay never tells a client to wait for a time already past or longer than is left."""
    if RETRY_AT not in headers:
        return headers
    headers = dict(headers)
    try:
        moment = datetime.fromisoformat(headers.pop(RETRY_AT))
    except (TypeError, ValueError):
        return headers
    left = (moment - now).total_seconds()
    headers["Retry-After"] = str(max(0, math.ceil(left)))
    return headers


def replay_response(status: int, body: str, headers: dict[str, str],
                    now: datetime) -> Response:
    """The kept answer of a write, again, marked as a replay; its Retry-After, if any,
    counted from ``now``."""
    response = Response(body, status=status, headers=_retry_after_now(headers, now))
    response.headers[REPLAYED_HEADER] = "true"
    return response
