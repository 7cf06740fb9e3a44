"""OIDC resource server: Bearer JWTs validated against the provider's JWKS.

Authlib's ResourceProtector parses the header; our validator decodes with joserfc, checks
iss/aud/exp/nbf and the algorithm, and caches validated tokens by hash until they expire.
The local user is synced from the claims, writing only when something changed.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import flask_smorest
import requests
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import MissingAuthorizationError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError
from flask import current_app, g, request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from . import clock, devtokens
from .api_errors import ApiError
from .caller_cache import get_caller_cache, init_caller_cache
from .envelope import SETTLES_CLAIM, doc_only
from .models import User, UserSubscription
from .models.subscription import ACTIVE, Onboarding
from .models.user import ROLE_ADMIN
from .retry_safe import claim_idempotency_key
from .services.users import sync_user_from_claims
from .tiers import STARTER
from .validation import is_hostile_text

log = logging.getLogger(__name__)

MAX_SUBJECT_LENGTH = 255  # users.oidc_sub
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                      "ES256", "ES384", "ES512", "EdDSA")
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
WWW_AUTHENTICATE_MISSING = {"WWW-Authenticate": "Bearer"}


class TokenRejected(Exception):
    """The token is not acceptable; the message is safe to show."""


class KeysUnavailable(Exception):
    """No signing keys could be had at all (provider down and nothing cached)."""


class JWKSCache:
    """The provider's signing keys, fetched lazily and refetched on an unknown ``kid``.

    Refetches are rate-limited; a failed fetch keeps the keys already cached.
    """

    def __init__(self, jwks_url=None, issuer=None, *, min_refresh_seconds=60, timeout=5,
                 static_keys=None):
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.min_refresh_seconds = min_refresh_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        # static_keys: a callable returning a JWKS dict, loaded on first use (no I/O before).
        self._static_loader = static_keys
        self._static = static_keys is not None
        self._keys: KeySet | None = None
        self._last_fetch = 0.0

    def _resolve_jwks_url(self) -> str:
        if self.jwks_url:
            return self.jwks_url
        discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = requests.get(discovery, timeout=self.timeout)
        response.raise_for_status()
        self.jwks_url = response.json()["jwks_uri"]
        return self.jwks_url

    def _fetch(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            response = requests.get(self._resolve_jwks_url(), timeout=self.timeout)
            response.raise_for_status()
            self._keys = KeySet.import_key_set(response.json())
        except Exception as exc:  # network, HTTP or parse errors: keep what we have
            log.warning("JWKS fetch failed: %s", type(exc).__name__)
            if self._keys is None:
                raise KeysUnavailable() from exc

    def key_for(self, kid: str | None):
        keys = self._keys
        if keys is not None:  # known kids never wait behind a refetch
            try:
                return keys.get_by_kid(kid)
            except (JoseError, ValueError):
                pass
        with self._lock:
            if self._keys is None:
                if self._static:
                    self._keys = KeySet.import_key_set(self._static_loader())
                else:
                    self._fetch()
            try:
                return self._keys.get_by_kid(kid)
            except (JoseError, ValueError):
                pass
            if self._static or time.monotonic() - self._last_fetch < self.min_refresh_seconds:
                raise TokenRejected("Unknown signing key.")
            self._fetch()
            try:
                return self._keys.get_by_kid(kid)
            except (JoseError, ValueError) as exc:
                raise TokenRejected("Unknown signing key.") from exc


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


REQUEST_DIGEST_KEY = "sonicus.token_digest"


def request_token_digest(environ, token: str) -> str:
    """``token_digest`` of a request's token, computed once per request (the rate limits and
    the sign-in both key on it)."""
    known = environ.get(REQUEST_DIGEST_KEY)
    if known is not None and known[0] == token:
        return known[1]
    digest = token_digest(token)
    environ[REQUEST_DIGEST_KEY] = (token, digest)
    return digest


class TokenVerifier:
    """Validates a JWT string into its claims; remembers valid tokens until they expire."""

    def __init__(self, keys: JWKSCache, issuer: str, audience: str, leeway: int = 30,
                 cache_size: int = 10000):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[dict, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _decode(self, token: str) -> dict:
        header = _unverified_header(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRejected("Token algorithm not accepted.")
        key = self.keys.key_for(header.get("kid"))
        try:
            decoded = jwt.decode(token, key, algorithms=[alg])
        except JoseError as exc:
            raise TokenRejected("Token signature is not valid.") from exc
        except Exception as exc:
            raise TokenRejected("Token is malformed.") from exc
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(
            leeway=self.leeway,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            exp={"essential": True},
            sub={"essential": True},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise TokenRejected(f"Token claims are not valid ({exc.error}).") from exc
        _check_identity_claims(claims)
        return claims

    def verify(self, token: str) -> dict:
        return self.verify_with_digest(token)[0]

    def verify_with_digest(self, token: str, digest: str | None = None) -> tuple[dict, str]:
        """The token's claims and its digest (the key it is cached and known by; pass it when
        it is known already)."""
        if digest is None:
            digest = token_digest(token)
        now = time.time()
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None:
                claims, expires = hit
                if now < expires + self.leeway:
                    return claims, digest
                del self._cache[digest]
        claims = self._decode(token)
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + self.leeway:
            raise TokenRejected("Token is not valid yet.")
        with self._lock:
            self._cache[digest] = (claims, float(claims["exp"]))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return claims, digest


def _check_identity_claims(claims: dict) -> None:
    """The claims stored on the user: a subject of 1..255 characters, and no NUL or unpaired
    surrogate in it, the email or the names (an invalid token, never a failed write)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_LENGTH \
            or is_hostile_text(subject):
        raise TokenRejected("Token subject is not valid.")
    for name in ("email", "name", "preferred_username"):
        value = claims.get(name)
        if isinstance(value, str) and is_hostile_text(value):
            raise TokenRejected(f"Token claim {name!r} is not valid.")


def _unverified_header(token: str) -> dict:
    try:
        part = token.split(".")[0]
        part += "=" * (-len(part) % 4)
        header = json.loads(base64.urlsafe_b64decode(part.encode("ascii")))
    except Exception as exc:
        raise TokenRejected("Token is malformed.") from exc
    if not isinstance(header, dict):
        raise TokenRejected("Token is malformed.")
    return header


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
    """Build the verifier for this app from its config (no network until the first token)."""
    cfg = app.config
    if cfg.get("OIDC_ISSUER"):
        keys = JWKSCache(cfg.get("OIDC_JWKS_URL"), cfg["OIDC_ISSUER"],
                         min_refresh_seconds=cfg["OIDC_JWKS_MIN_REFRESH_SECONDS"],
                         timeout=cfg["OIDC_HTTP_TIMEOUT_SECONDS"])
        issuer, audience = cfg["OIDC_ISSUER"], cfg.get("OIDC_AUDIENCE")
    elif cfg.get("DEV_TOKEN_ISSUER"):
        issuer, audience = devtokens.issuer(app), devtokens.AUDIENCE
        keys = JWKSCache(static_keys=lambda: devtokens.public_jwks(app))
    else:
        keys, issuer, audience = None, None, None
    init_caller_cache(app)
    app.extensions["sonicus_token_verifier"] = (
        TokenVerifier(keys, issuer, audience, leeway=cfg["OIDC_LEEWAY_SECONDS"])
        if keys is not None else None)


def get_verifier() -> TokenVerifier:
    verifier = current_app._get_current_object().extensions.get("sonicus_token_verifier")
    if verifier is None:
        raise KeysUnavailable()
    return verifier


# ---- the caller ---------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Caller:
    """Who is signed in, as read at sign-in: immutable, shared by the requests of one token
    for a few seconds (``caller_cache``). For reading only: a service that changes the user
    takes ``caller.id`` and locks what it changes."""

    id: int
    email: str
    display_name: str | None
    email_verified: bool
    role: str
    timezone: str
    day_start_hour: int
    # The day settings in force before the shown ones, until this instant (clock.day_settings_at).
    prior_timezone: str | None
    prior_day_start_hour: int | None
    day_settings_effective_at: datetime | None
    preferences: Mapping
    created_at: datetime
    tier: str
    status: str
    onboarding: Onboarding
    dump_memo: dict = field(default_factory=dict, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def pending_day_settings_effective_at(self) -> datetime | None:
        """When the shown day settings take effect; None when they are in force already."""
        return clock.pending_day_settings_at(self, clock.now())

    @classmethod
    def of(cls, user: User, sub: UserSubscription | None) -> Caller:
        tier = sub.tier if sub is not None else STARTER
        status = sub.status if sub is not None else ACTIVE
        return cls(
            id=user.id, email=user.email, display_name=user.display_name,
            email_verified=bool(user.email_verified), role=user.role, timezone=user.timezone,
            day_start_hour=user.day_start_hour, prior_timezone=user.prior_timezone,
            prior_day_start_hour=user.prior_day_start_hour,
            day_settings_effective_at=user.day_settings_effective_at,
            preferences=MappingProxyType(copy.deepcopy(user.merged_preferences)),
            created_at=user.created_at, tier=tier, status=status,
            onboarding=Onboarding.of(bool(user.email_verified), sub))


def caller_from_token(token: str) -> Caller:
    """Validate a raw token (a socket's) into the synced, active caller."""
    try:
        claims = get_verifier().verify(token)
    except TokenRejected as exc:
        raise ApiError(401, "invalid_token", str(exc), headers=dict(WWW_AUTHENTICATE)) from exc
    except KeysUnavailable as exc:
        raise ApiError(503, "service_unavailable",
                       "Sign-in is unavailable right now; try again shortly.") from exc
    return Caller.of(*sync_user_from_claims(claims))


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
    if caller is None:
        read_since = callers.generation
        caller = Caller.of(*sync_user_from_claims(dict(claims)))
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

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        caller = authenticate_request()
        replay = claim_idempotency_key(caller.id, settles_later)
        if replay is not None:
            return replay
        return func(*args, caller=caller, **kwargs)

    return _signed_in(wrapper)


def require_super_admin(func):
    """Holders of the admin group only (everyone else gets 403); the view gets ``caller=``."""
    settles_later = getattr(func, SETTLES_CLAIM, False)

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        caller = authenticate_request()
        if not caller.is_admin:
            raise ApiError(403, "forbidden", "Administrators only.")
        replay = claim_idempotency_key(caller.id, settles_later)
        if replay is not None:
            return replay
        return func(*args, caller=caller, **kwargs)

    return _signed_in(wrapper)
