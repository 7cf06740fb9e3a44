"""What a key decides besides running the request: the kept answer to replay, 409
``idempotency_key_in_use``, 422 ``idempotency_key_reused`` (``idempotency``, and
``erasure_keys`` for an erased account's key)."""

from __future__ import annotations

from dataclasses import dataclass

from ..api_errors import ApiError


@dataclass(frozen=True)
class KeptAnswer:
    """The answer the first request with a key gave, to replay."""

    status: int
    body: str
    headers: dict


def key_reused() -> ApiError:
    return ApiError(422, "idempotency_key_reused",
                    "This Idempotency-Key was used for another request.",
                    errors=["Idempotency-Key: was sent before with another method, path or "
                            "body; use a new key for a new request."])


def key_in_use() -> ApiError:
    return ApiError(409, "idempotency_key_in_use",
                    "A request with this Idempotency-Key is still running; retry shortly.",
                    errors=["Idempotency-Key: the first request with it has not answered yet."],
                    headers={"Retry-After": "1"})


def kept_answer(row) -> KeptAnswer:
    return KeptAnswer(row.response_status, row.response_body, dict(row.response_headers or {}))
