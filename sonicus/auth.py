"""Sign-in of a request: its Bearer token validated (``tokens.py``) into the caller
(``caller.py``), and the decorators that require one (``require_user``, ``require_super_admin``:
they hand the view ``caller=`` and claim a write's ``Idempotency-Key`` once the caller is known).

Authlib's ResourceProtector answers a missing token or another scheme; a ``Bearer`` header is
checked without its layers (``authenticate_request``, on every signed-in request: keep it free of
call-through layers). A token seen moments ago is answered from the caller cache; otherwise the
local user is synced from the claims, writing only when something changed.
"""

from __future__ import annotations

import functools

import flask_smorest
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import MissingAuthorizationError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from flask import g, request

from . import clock
from .api_errors import ApiError
from .caller import Caller
from .caller_cache import get_caller_cache, init_caller_cache
from .envelope import SETTLES_CLAIM, doc_only
from .retry_safe import CLAIM_AT_COMMIT, claim_idempotency_key, replay_before_sign_up
from .services.subscriptions import next_change_at
from .services.users import sync_user_from_claims
from .tokens import (
    KeysUnavailable,
    TokenRejected,
    get_verifier,
    init_verifier,
    request_token_digest,
)

# Longest Authorization header (and socket token) read: tokens with many groups or long claims
# pass 8 KB; gunicorn.conf.py lets header fields of twice this through, so that a longer one
# gets the API's 431, not the server's own plain-text error.
MAX_TOKEN_BYTES = 16 * 1024
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
WWW_AUTHENTICATE_MISSING = {"WWW-Authenticate": "Bearer"}


class _ClaimsToken(dict):
    digest: str = ""

    def is_expired(self):
        return False

    def is_revoked(self):
        return False

    def get_scope(self):
        return self.get("scope")


class SonicusTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        try:
            claims, digest = get_verifier().verify_with_digest(
                token_string,
                request_token_digest(request._get_current_object().environ, token_string))
        except TokenRejected as exc:
            raise InvalidTokenError(description=str(exc)) from exc
        except KeysUnavailable as exc:
            raise ApiError(503, "service_unavailable",
                           "Sign-in is unavailable right now; try again shortly.") from exc
        token = _ClaimsToken(claims)
        token.digest = digest
        return token


class SonicusResourceProtector(ResourceProtector):
    def raise_error_response(self, error):
        if isinstance(error, MissingAuthorizationError) or _no_bearer_token():
            # RFC 6750 3.1: no credentials at all: the challenge carries no error code
            raise ApiError(401, "missing_token", "Sign in: an access token is required.",
                           headers=dict(WWW_AUTHENTICATE_MISSING))
        description = getattr(error, "description", None) or "A valid access token is required."
        raise ApiError(401, "invalid_token", description, headers=dict(WWW_AUTHENTICATE))


def _no_bearer_token() -> bool:
    """The request sent no token: no Authorization header, an empty one, or ``Bearer`` with
    nothing after it (a client whose token variable was empty). Anything else is a bad token."""
    value = (request.headers.get("Authorization") or "").strip()
    return value == "" or value.lower() == "bearer"


protector = SonicusResourceProtector()
_bearer_validator = SonicusTokenValidator()
protector.register_token_validator(_bearer_validator)


def init_auth(app) -> None:
    """Sign-in for this app: its token verifier and its caller cache (no network until the
    first token)."""
    init_verifier(app)
    init_caller_cache(app)


def caller_from_token(token: str) -> Caller:
    """Validate a raw token (a socket's) into the synced, active caller."""
    return caller_until_from_token(token)[0]


def token_too_large() -> ApiError:
    return ApiError(431, "token_too_large", "The access token is too large.",
                    errors=[f"Authorization: longer than {MAX_TOKEN_BYTES} bytes."])


def caller_until_from_token(token: str) -> tuple[Caller, float]:
    """``caller_from_token``, and until when (Unix time) the token is accepted: its ``exp``
    and the verifier's leeway (an open socket closes then)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise ApiError(401, "invalid_token", "The access token is too large.",
                       headers=dict(WWW_AUTHENTICATE))
    verifier = get_verifier()
    try:
        claims = verifier.verify(token)
    except TokenRejected as exc:
        raise ApiError(401, "invalid_token", str(exc), headers=dict(WWW_AUTHENTICATE)) from exc
    except KeysUnavailable as exc:
        raise ApiError(503, "service_unavailable",
                       "Sign-in is unavailable right now; try again shortly.") from exc
    return _caller_of(claims), float(claims["exp"]) + verifier.leeway


def _caller_of(claims: dict, before_sign_up=None) -> Caller:
    """The caller these claims sign in (the user synced, the subscription as in force)."""
    user, sub = sync_user_from_claims(claims, before_sign_up)
    return Caller.of(user, sub, settles_at=next_change_at(sub))


def authenticate_request() -> Caller:
    """Validate the request's Bearer token into the caller.

    A token seen moments ago is answered from the per-process cache without touching the
    database; otherwise the user is synced from the claims.
    """
    state = g._get_current_object().__dict__
    caller = state.get("caller")
    if caller is not None:
        return caller
    req = request._get_current_object()
    header = req.environ.get("HTTP_AUTHORIZATION")
    if header and len(header) > MAX_TOKEN_BYTES:
        raise token_too_large()
    parts = header.split(None, 1) if header else ()
    try:
        if len(parts) == 2 and parts[0].lower() == _bearer_validator.TOKEN_TYPE:
            # What ``protector.validate_request`` does with a Bearer token, without its
            # layers: the token's claims; a token that is not valid raises as it would there.
            claims = _bearer_validator.authenticate_token(parts[1])
            if not claims:  # never for verified claims: the validator's own error then
                _bearer_validator.validate_token(claims, None, None)
        else:  # no header, or another scheme: the protector's own error
            claims = protector.validate_request(None, _BearerRequest(req.headers))
    except OAuth2Error as error:
        protector.raise_error_response(error)
    callers = get_caller_cache()
    caller = callers.get(claims.digest)
    if caller is None or (caller.settles_at is not None and caller.settles_at <= clock.now()):
        read_since = callers.generation
        # A retry of an erasure is its replay, not a new account (``replay_before_sign_up``).
        caller = _caller_of(dict(claims), replay_before_sign_up)
        callers.put(claims.digest, caller, read_since)
    state["caller"] = caller
    state["current_user_id"] = caller.id  # for logs
    return caller


class _BearerRequest:
    """What the protector reads of a request: its headers (no URL or body parsing)."""

    __slots__ = ("headers",)

    def __init__(self, headers):
        self.headers = headers


_signed_in = doc_only(flask_smorest.Blueprint.doc(security=[{"bearerAuth": []}]))


def require_user(func):
    """Any signed-in, active user in the required group; the view gets ``caller=``."""

    settles_later = getattr(func, SETTLES_CLAIM, False)
    at_commit = getattr(func, CLAIM_AT_COMMIT, False)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        caller = authenticate_request()
        replay = claim_idempotency_key(caller.id, settles_later, at_commit)
        if replay is not None:
            return replay
        return func(*args, caller=caller, **kwargs)

    return _signed_in(wrapper)


def require_super_admin(func):
    """Holders of the admin group only (everyone else gets 403); the view gets ``caller=``."""
    settles_later = getattr(func, SETTLES_CLAIM, False)
    at_commit = getattr(func, CLAIM_AT_COMMIT, False)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        caller = authenticate_request()
        if not caller.is_admin:
            raise ApiError(403, "forbidden", "Administrators only.")
        replay = claim_idempotency_key(caller.id, settles_later, at_commit)
        if replay is not None:
            return replay
        return func(*args, caller=caller, **kwargs)

    return _signed_in(wrapper)
