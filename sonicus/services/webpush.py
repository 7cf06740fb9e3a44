"""Web Push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payload encryption (RFC 8291),
through pywebpush.

- Where the server may post: only to an endpoint that starts with one of
  ``WEBPUSH_ALLOWED_ENDPOINTS`` (the browsers' push services by default), checked when a
  subscription is stored AND again right before every post; an address with credentials,
  a fragment, blanks or a bad port is never one. Redirects are never followed: a 3xx is a
  failure (``NoRedirectSession``), so a push service cannot send us elsewhere.
- The VAPID key: ``VAPID_PRIVATE_KEY`` (required in production); elsewhere a key generated
  once in the instance folder (``vapid_private_key.txt``, mode 0600, created atomically so
  that concurrent processes agree on one key).
- One ``requests.Session`` per thread: connections to a push service are kept alive.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import current_app
from py_vapid import Vapid02
from pywebpush import WebPusher

from config import parse_vapid_private_key

log = logging.getLogger(__name__)

KEY_FILE = "vapid_private_key.txt"
MAX_ENDPOINT_LENGTH = 2048
VAPID_LIFETIME_SECONDS = 12 * 3600  # a JWT's exp; push services refuse more than 24 h
VAPID_RENEW_SECONDS = 3600  # a cached JWT is re-signed when it has less than this left
_FORBIDDEN_CHARACTERS = frozenset(" \t\r\n\\@#\x00") | frozenset(chr(c) for c in range(32))

SENT, GONE, RETRY, FAILED, REFUSED = "sent", "gone", "retry", "failed", "refused"
WITHDRAWN = "withdrawn"  # not sent: its sender's ``held`` said it may no longer go


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (with or without padding); ValueError otherwise."""
    if not isinstance(text, str) or not text or any(c in "+/" for c in text):
        raise ValueError("not base64url")
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or "=" in stripped:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


# ---- where we may post ------------------------------------------------------------------------

def _authority_normalised(scheme: str, authority: str) -> str:
    """``authority`` (``host[:port]``, in lower case) as the plain name of the same server:
    one trailing dot of the host dropped (``fcm.googleapis.com.`` is the fully qualified
    spelling of ``fcm.googleapis.com``) and an explicit ``:443`` dropped under https (its
    default port). Any other port stays, so it never matches a prefix without it."""
    host, port = authority, None
    if authority.startswith("["):  # an IPv6 literal: its colons are not the port's
        end = authority.find("]")
        if end >= 0 and authority[end + 1:end + 2] == ":":
            host, port = authority[:end + 1], authority[end + 2:]
    elif ":" in authority:
        host, _, port = authority.partition(":")
    if host.endswith("."):
        host = host[:-1]
    if scheme == "https" and port == "443":
        port = None
    return host if port is None else f"{host}:{port}"


def _origin_folded(url: str) -> str:
    """``url`` with its scheme and authority in lower case (both are case-insensitive, RFC
    3986 sections 3.1 and 3.2.2: ``https://DB5P.notify.windows.com`` is a Windows push host)
    and the authority's plain name (``_authority_normalised``: no trailing dot, no ``:443``
    under https); the path and query as written (they are not)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends, default=len(rest))
    scheme = scheme.lower()
    return f"{scheme}://{_authority_normalised(scheme, rest[:end].lower())}{rest[end:]}"


def normalized_endpoint(endpoint: str) -> str:
    """The one spelling of a push subscription's endpoint, stored, looked up and posted to:
    scheme and host in lower case, one trailing dot of the host and https's default ``:443``
    dropped (``_origin_folded``: the spellings ``endpoint_problem`` takes for the same push
    service); the path and query byte for byte (they are the push service's, case-sensitive).
    ``https://FCM.googleapis.com.:443/fcm/send/abc`` is ``https://fcm.googleapis.com/fcm/send/abc``:
    one device, one row, one push. Migration 0016_push_endpoint_spelling brought the rows
    stored before to it (keep the two identical)."""
    return _origin_folded(endpoint)


def push_origin(endpoint: str) -> str:
    """The origin of the push service at ``endpoint`` as it names itself (RFC 6454: lower
    case, no default port; no trailing dot): the VAPID ``aud`` (RFC 8292)."""
    parts = urlsplit(_origin_folded(endpoint))
    return f"{parts.scheme}://{parts.netloc}"


def _matches(endpoint: str, host: str, prefix: str) -> bool:
    """Whether ``endpoint`` (its scheme and host folded, ``host`` its host[:port]) starts with
    ``prefix`` (folded alike), where ``https://*.<domain>/`` is any host under the domain."""
    scheme, sep, rest = prefix.partition("://*.")
    if not sep:
        return endpoint.startswith(prefix)
    domain, _, path = rest.partition("/")
    parts = urlsplit(endpoint)
    return (parts.scheme == scheme and parts.netloc == host
            and host.endswith("." + domain) and parts.path.startswith("/" + path))


def endpoint_problem(endpoint: str, allowed) -> str | None:
    """Why the server must not post to ``endpoint`` (a message), or None when it may. The
    scheme and host are matched folded (``_origin_folded``: lower case, one trailing dot and
    a default ``:443`` dropped); the endpoint is stored and posted to in that spelling
    (``normalized_endpoint``)."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        return f"Longer than {MAX_ENDPOINT_LENGTH} characters."
    if any(c in _FORBIDDEN_CHARACTERS for c in endpoint) or not endpoint.isascii():
        return "Not a push service's address (credentials, fragments and blanks are refused)."
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "Not a valid URL."
    folded = _origin_folded(endpoint)
    plain = urlsplit(folded)
    if not plain.hostname:
        return "Not a valid URL."
    host = plain.hostname
    if plain.port is not None:
        host = f"{host}:{plain.port}"
    if not any(_matches(folded, host, _origin_folded(prefix)) for prefix in allowed):
        return "Not a push service this server sends to (WEBPUSH_ALLOWED_ENDPOINTS)."
    return None


def allowed_endpoints() -> list[str]:
    return list(current_app.config.get("WEBPUSH_ALLOWED_ENDPOINTS") or [])


def p256dh_problem(value: str) -> str | None:
    """The browser's ECDH public key: base64url of an uncompressed P-256 point (65 bytes)."""
    try:
        raw = b64url_decode(value)
    except ValueError:
        return "Not base64url."
    if len(raw) != 65 or raw[0] != 4:
        return "Must be an uncompressed P-256 point (65 bytes)."
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        return "Not a point on P-256."
    return None


def auth_problem(value: str) -> str | None:
    try:
        raw = b64url_decode(value)
    except ValueError:
        return "Not base64url."
    return None if len(raw) == 16 else "Must be 16 bytes."


# ---- the VAPID key ------------------------------------------------------------------------------

class VapidSigner:
    """The application server's key: its public half for browsers, and VAPID headers per
    push service origin, signed once and reused until close to expiry."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, subject: str):
        self.vapid = Vapid02(private_key)
        self.subject = subject
        self.public_key = b64url(private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))
        self._headers: dict[str, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def headers_for(self, endpoint: str) -> dict:
        audience = push_origin(endpoint)
        now = time.time()  # the push service checks exp against real time, not our clock
        with self._lock:
            cached = self._headers.get(audience)
            if cached is not None and cached[0] - now > VAPID_RENEW_SECONDS:
                return cached[1]
            expires = int(now) + VAPID_LIFETIME_SECONDS
            headers = self.vapid.sign({"aud": audience, "exp": expires, "sub": self.subject})
            self._headers[audience] = (expires, headers)
            return headers


def _instance_key(instance_path: str) -> str:
    """The development key from the instance folder, generated there once (0600)."""
    folder = Path(instance_path)
    path = folder / KEY_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        secret = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".vapid-")  # created 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(b64url(secret.to_bytes(32, "big")) + "\n")
            os.chmod(temp, 0o600)
            try:
                os.link(temp, path)  # atomic: the first process's key wins
                log.info("generated a development VAPID key in %s", path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temp)
    return path.read_text().strip()


def vapid_signer(app=None) -> VapidSigner:
    """The app's signer (built on first use: no I/O in create_app)."""
    app = app or current_app._get_current_object()
    signer = app.extensions.get("sonicus_vapid")
    if signer is None:
        configured = app.config.get("VAPID_PRIVATE_KEY")
        if not configured and app.config["SONICUS_ENV"] == "production":
            raise RuntimeError("VAPID_PRIVATE_KEY is not set")
        text = configured or _instance_key(app.instance_path)
        signer = VapidSigner(parse_vapid_private_key(text), app.config["VAPID_SUBJECT"])
        app.extensions["sonicus_vapid"] = signer
    return signer


def vapid_public_key() -> str:
    return vapid_signer().public_key


# ---- sending ----------------------------------------------------------------------------

class NoRedirectSession(requests.Session):
    """A session that never follows a redirect (a 3xx is answered as it is)."""

    def request(self, method, url, **kwargs):
        kwargs["allow_redirects"] = False
        return super().request(method, url, **kwargs)


_local = threading.local()


def http_session() -> requests.Session:
    session = getattr(_local, "session", None)
    if session is None:
        session = _local.session = NoRedirectSession()
    return session


@dataclass(frozen=True)
class PushResult:
    outcome: str  # SENT, GONE (404/410: the subscription is dead), RETRY, FAILED, REFUSED
    status: int | None = None
    retry_after: float | None = None


def _retry_after(response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: our own backoff applies


def send_push(subscription, payload: bytes, *, topic: str | None = None,
              urgency: str = "normal") -> PushResult:
    """Encrypt ``payload`` for the subscription (``endpoint``, ``p256dh``, ``auth``) and post
    it to its push service with a VAPID header. Never raises for the push service's answer
    or its unreachability: the result says what happened."""
    config = current_app.config
    problem = endpoint_problem(subscription.endpoint, allowed_endpoints())
    if problem is not None:
        log.warning("push to a disallowed endpoint refused (subscription %s): %s",
                    subscription.id, problem)
        return PushResult(REFUSED)
    endpoint = normalized_endpoint(subscription.endpoint)  # as stored (the plain name)
    headers = dict(vapid_signer().headers_for(endpoint))
    headers["Urgency"] = urgency
    if topic:
        headers["Topic"] = topic
    info = {"endpoint": endpoint,
            "keys": {"p256dh": subscription.p256dh, "auth": subscription.auth}}
    try:
        response = WebPusher(info, requests_session=http_session()).send(
            payload, headers, ttl=int(config.get("WEBPUSH_TTL_SECONDS", 14400)),
            content_encoding="aes128gcm",
            timeout=float(config.get("WEBPUSH_TIMEOUT_SECONDS", 10.0)))
    except requests.RequestException as exc:
        log.warning("push service unreachable (subscription %s): %s", subscription.id,
                    type(exc).__name__)
        return PushResult(RETRY)
    status = response.status_code
    if status in (200, 201, 202):
        return PushResult(SENT, status)
    if status in (404, 410):
        return PushResult(GONE, status)
    if status == 429 or status >= 500:
        return PushResult(RETRY, status, _retry_after(response))
    log.warning("push refused by the push service (subscription %s): HTTP %s", subscription.id,
                status)
    return PushResult(FAILED, status)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _executor(size: int) -> ThreadPoolExecutor:
    """This process's sending threads (made again after a fork); each keeps its own
    keep-alive session."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != size:
            _pool = (os.getpid(), size, ThreadPoolExecutor(size, "sonicus-webpush"))
        return _pool[2]


def send_many(pushes: list[tuple], *, topic: str | None = None,
              held: Callable[[Any], AbstractContextManager[bool]] | None = None
              ) -> list[PushResult]:
    """``send_push`` for each ``(subscription, payload)``, ``WEBPUSH_CONCURRENCY`` at a time
    (waiting on push services, not on the CPU, is what bounds one worker); results in order.
    ``held(subscription)``: entered around each push, for as long as it is on its way; it
    says whether the push may still go (else ``WITHDRAWN``, nothing posted)."""
    app = current_app._get_current_object()
    size = int(app.config.get("WEBPUSH_CONCURRENCY", 8))

    def here(push) -> PushResult:
        if held is None:
            return send_push(push[0], push[1], topic=topic)
        with held(push[0]) as may_go:
            return send_push(push[0], push[1], topic=topic) if may_go \
                else PushResult(WITHDRAWN)

    if size <= 1 or len(pushes) <= 1:
        return [here(push) for push in pushes]

    def one(push):
        with app.app_context():
            return here(push)

    return list(_executor(size).map(one, pushes))
