"""A push service and a browser, for tests and the reminder bench (real cryptography).

- ``PushServiceStandIn``: a threaded HTTP/1.1 server on 127.0.0.1 (keep-alive) that takes
  Web Push posts as a browser vendor's push service does: it checks the VAPID header
  (RFC 8292: ``vapid t=<JWT>,k=<key>``; ES256 signature with ``k``, ``aud`` the endpoint's
  origin, ``exp`` in the future and at most 24 h away, a ``sub``) and answers 401 when it is
  wrong, else 201, or what ``answer(path, *statuses)`` queued for that path (410, 429, 503...).
  Every post is kept in ``received``.
- ``Browser``: a PushSubscription as a browser makes one (a P-256 key pair, a 16-byte auth
  secret); ``decrypt(body)`` opens an aes128gcm message (RFC 8291) with its private key.

Loaded by conftest (fixtures ``push_service`` and ``browser``) and by bench/bench_reminders.py.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_vapid(authorization: str | None, origin: str, now: float | None = None) -> tuple:
    """``(claims, public_key)`` of a valid VAPID Authorization header; AssertionError says
    what is wrong."""
    now = time.time() if now is None else now
    assert authorization and authorization.startswith("vapid "), "no vapid Authorization"
    parts = dict(item.split("=", 1) for item in authorization[len("vapid "):].split(","))
    token, key = parts["t"].strip(), parts["k"].strip()
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64url_decode(key))
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(b64url_decode(header_b64))
    assert header.get("alg") == "ES256", f"alg {header.get('alg')}"
    signature = b64url_decode(signature_b64)
    assert len(signature) == 64, "ES256 signature must be r||s (64 bytes)"
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                               int.from_bytes(signature[32:], "big"))
    try:
        public.verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AssertionError("bad VAPID signature") from exc
    claims = json.loads(b64url_decode(claims_b64))
    assert claims.get("aud") == origin, f"aud {claims.get('aud')!r} is not {origin!r}"
    assert now < claims["exp"] <= now + 24 * 3600, f"exp {claims['exp']} out of range"
    assert str(claims.get("sub", "")).startswith(("mailto:", "https://")), "sub missing"
    return claims, key


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    status: int
    vapid_error: str | None = None
    vapid_key: str | None = None
    claims: dict = field(default_factory=dict)


class PushServiceStandIn:
    def __init__(self):
        self.received: list[Received] = []
        self.queued: dict[str, list[tuple[int, dict]]] = {}
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                origin = f"http://127.0.0.1:{stand_in.port}"
                record = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                  body, 201)
                try:
                    record.claims, record.vapid_key = check_vapid(
                        self.headers.get("Authorization"), origin)
                except (AssertionError, KeyError, ValueError) as exc:
                    record.vapid_error = str(exc) or type(exc).__name__
                    record.status = 401
                extra = {}
                with stand_in.lock:
                    queue = stand_in.queued.get(self.path)
                    if record.status == 201 and queue:
                        record.status, extra = queue.pop(0)
                    stand_in.received.append(record)
                self.send_response(record.status)
                for name, value in extra.items():
                    self.send_header(name, value)
                if record.status == 201:
                    self.send_header("Location", f"{origin}/message/{len(stand_in.received)}")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def endpoint(self, name: str) -> str:
        return f"{self.base}/push/{name}"

    def answer(self, endpoint: str, *statuses: int, headers: dict | None = None) -> None:
        """The next posts to ``endpoint`` get these statuses, in order (then 201)."""
        path = endpoint[len(self.base):]
        with self.lock:
            self.queued.setdefault(path, []).extend((s, dict(headers or {})) for s in statuses)

    def posts_to(self, endpoint: str) -> list[Received]:
        path = endpoint[len(self.base):]
        with self.lock:
            return [r for r in self.received if r.path == path]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Browser:
    """One browser's push subscription: its own P-256 key pair and auth secret."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        self.auth_secret = os.urandom(16)
        self.p256dh = b64url(self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))

    def subscription(self) -> dict:
        """What ``PushSubscription.toJSON()`` gives."""
        return {"endpoint": self.endpoint, "expirationTime": None,
                "keys": {"p256dh": self.p256dh, "auth": b64url(self.auth_secret)}}

    def decrypt(self, body: bytes) -> dict:
        """Open an aes128gcm push message (RFC 8291) and parse its JSON."""
        plain = http_ece.decrypt(body, private_key=self.private_key,
                                 auth_secret=self.auth_secret, version="aes128gcm")
        return json.loads(plain)
