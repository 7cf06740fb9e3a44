"""Access tokens: a Bearer JWT validated into its claims (``TokenVerifier``) against the
provider's signing keys (``JWKSCache``: fetched lazily, refetched on an unknown ``kid`` at most
once per ``min_refresh_seconds``, kept when a fetch fails), with the algorithm, ``iss``, ``aud``,
``exp``, ``nbf`` and the identity claims checked; a valid token is remembered by its SHA-256
until it expires. The app's verifier is built from its config (``init_verifier``, no network
until the first token) and found by ``get_verifier``; a request's token digest is computed once
(``request_token_digest``: the rate limits and the sign-in both key on it). What a request's
token becomes (the caller, or a 401/503 in the envelope): ``auth.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict

import requests
from flask import current_app
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from . import devtokens
from .validation import is_hostile_text

log = logging.getLogger("sonicus.auth")  # the sign-in's log lines keep one logger name

MAX_SUBJECT_LENGTH = 255  # users.oidc_sub
# With no keys at all, a failed fetch is tried again at most this often: meanwhile sign-in
# answers 503 at once instead of every request asking the provider (and queueing behind it).
COLD_RETRY_SECONDS = 5
# A discovery document or key set larger than this is refused (they are a few kilobytes).
MAX_DOCUMENT_BYTES = 1 << 20
ALLOWED_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                      "ES256", "ES384", "ES512", "EdDSA")


class TokenRejected(Exception):
    """The token is not acceptable; the message is safe to show."""


class KeysUnavailable(Exception):
    """No signing keys could be had at all (provider down and nothing cached)."""


class JWKSCache:
    """The provider's signing keys, fetched lazily and refetched on an unknown ``kid``.

    Refetches are rate-limited; a failed fetch keeps the keys already cached. With no keys
    yet, a failed fetch is tried again at most every ``COLD_RETRY_SECONDS`` (capped by
    ``min_refresh_seconds``), and requests that waited for a fetch that failed do not fetch
    again: until then they are answered ``KeysUnavailable`` at once.
    """

    def __init__(self, jwks_url=None, issuer=None, *, min_refresh_seconds=60, timeout=5,
                 static_keys=None, max_age_seconds=600):
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.min_refresh_seconds = min_refresh_seconds
        self.max_age_seconds = max_age_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        # static_keys: a callable returning a JWKS dict, loaded on first use (no I/O before).
        self._static_loader = static_keys
        self._static = static_keys is not None
        self._keys: KeySet | None = None
        self._last_fetch = 0.0
        self._failed_at: float | None = None  # the last fetch failed with nothing cached
        self._fetched_at = 0.0  # the last fetch that succeeded
        self._raw = None  # the key set as last fetched
        # Counts the key sets seen: a token validated under an earlier one is checked again.
        self.generation = 0

    def _resolve_jwks_url(self) -> str:
        if self.jwks_url:
            return self.jwks_url
        discovery = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        self.jwks_url = self._get_json(discovery)["jwks_uri"]
        return self.jwks_url

    def _get_json(self, url: str):
        """The JSON document at ``url``, read within ``timeout`` seconds in all: ``requests``'
        timeout bounds each wait for bytes, not the whole answer, so a provider that trickles
        its answer out would otherwise hold the fetch (and every sign-in waiting for it)
        for as long as it likes. Checked between reads: done or given up within two
        ``timeout``s."""
        deadline = time.monotonic() + self.timeout
        with requests.get(url, timeout=self.timeout, stream=True) as response:
            response.raise_for_status()
            body = bytearray()
            while chunk := response.raw.read1(65536, decode_content=True):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError("document too large")
                if time.monotonic() > deadline:
                    raise TimeoutError("document not received in time")
        return json.loads(body)

    def _fetch(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            raw = self._get_json(self._resolve_jwks_url())
            keys = KeySet.import_key_set(raw)
            if raw != self._raw:
                self._raw, self.generation = raw, self.generation + 1
            self._keys, self._fetched_at = keys, time.monotonic()
        except Exception as exc:  # network, HTTP or parse errors: keep what we have
            log.warning("JWKS fetch failed: %s", type(exc).__name__)
            if self._keys is None:
                self._failed_at = time.monotonic()
                raise KeysUnavailable() from exc
        self._failed_at = None

    def key_for(self, kid: str | None):
        keys = self._keys
        if keys is not None:  # known kids never wait behind a refetch
            self._refresh_when_old()
            try:
                return keys.get_by_kid(kid)
            except (JoseError, ValueError):
                pass
        arrived = time.monotonic()
        self._refuse_while_cold(arrived)
        with self._lock:
            if self._keys is None:
                if self._static:
                    self._keys = KeySet.import_key_set(self._static_loader())
                else:
                    self._refuse_while_cold(arrived)
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

    def _refresh_when_old(self) -> None:
        """Keys older than ``max_age_seconds`` are fetched again in the background (one fetch
        at a time; the cached keys serve meanwhile), so that a key the provider removed stops
        working within that time even when no unknown ``kid`` comes to refetch them."""
        now = time.monotonic()
        if self._static or now - self._fetched_at < self.max_age_seconds \
                or now - self._last_fetch < self.min_refresh_seconds:
            return
        if not self._lock.acquire(blocking=False):
            return  # a fetch is running
        try:
            threading.Thread(target=self._refresh_then_release, name="jwks-refresh",
                             daemon=True).start()
        except Exception:
            self._lock.release()
            raise

    def _refresh_then_release(self) -> None:
        try:
            if time.monotonic() - self._fetched_at >= self.max_age_seconds:
                self._fetch()
        except Exception as exc:  # pragma: no cover (_fetch keeps the keys it has)
            log.warning("JWKS refresh failed: %s", type(exc).__name__)
        finally:
            self._lock.release()

    def _refuse_while_cold(self, arrived: float) -> None:
        """No keys, and a fetch failed since this request arrived or too recently to try
        again: ``KeysUnavailable`` without asking the provider."""
        failed_at = self._failed_at
        if self._keys is None and failed_at is not None and (
                failed_at >= arrived
                or arrived - failed_at < min(COLD_RETRY_SECONDS, self.min_refresh_seconds)):
            raise KeysUnavailable()


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
        self._cache: OrderedDict[str, tuple[dict, float, int]] = OrderedDict()
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
        generation = self.keys.generation
        with self._lock:
            hit = self._cache.get(digest)
            if hit is not None:
                claims, expires, checked_under = hit
                # Checked again under a new key set: its key may have been removed.
                if now < expires + self.leeway and checked_under == generation:
                    return claims, digest
                del self._cache[digest]
        claims = self._decode(token)
        nbf = claims.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + self.leeway:
            raise TokenRejected("Token is not valid yet.")
        with self._lock:
            self._cache[digest] = (claims, float(claims["exp"]), generation)
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


def init_verifier(app) -> None:
    """Build the verifier for this app from its config (no network until the first token)."""
    cfg = app.config
    if cfg.get("OIDC_ISSUER"):
        keys = JWKSCache(cfg.get("OIDC_JWKS_URL"), cfg["OIDC_ISSUER"],
                         min_refresh_seconds=cfg["OIDC_JWKS_MIN_REFRESH_SECONDS"],
                         timeout=cfg["OIDC_HTTP_TIMEOUT_SECONDS"],
                         max_age_seconds=cfg["OIDC_JWKS_MAX_AGE_SECONDS"])
        issuer, audience = cfg["OIDC_ISSUER"], cfg.get("OIDC_AUDIENCE")
    elif cfg.get("DEV_TOKEN_ISSUER"):
        issuer, audience = devtokens.issuer(app), devtokens.AUDIENCE
        keys = JWKSCache(static_keys=lambda: devtokens.public_jwks(app))
    else:
        keys, issuer, audience = None, None, None
    app.extensions["sonicus_token_verifier"] = (
        TokenVerifier(keys, issuer, audience, leeway=cfg["OIDC_LEEWAY_SECONDS"])
        if keys is not None else None)


def get_verifier() -> TokenVerifier:
    verifier = current_app._get_current_object().extensions.get("sonicus_token_verifier")
    if verifier is None:
        raise KeysUnavailable()
    return verifier
