"""The browser app's origins: CORS for the API (``install_cors``: from which origins, the
headers an SPA sends and reads), and the addresses the browser may be sent back to
(``is_app_url``: checkout and portal returns; never anywhere else).
"""

from __future__ import annotations

import re

from flask_cors import CORS

# What a browser app may send and read across origins (API.md: CORS).
CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID",
                      "traceparent", "tracestate", "baggage", "sentry-trace"]
CORS_EXPOSE_HEADERS = ["X-Request-ID", "Retry-After", "X-RateLimit-Limit",
                       "X-RateLimit-Remaining", "X-RateLimit-Reset", "Idempotent-Replayed"]
# Development: a dev server of the SPA on this machine, on any port (Vite: 5173).
DEVELOPMENT_ORIGINS = [re.compile(r"^http://localhost(:[0-9]{1,5})?$"),
                       re.compile(r"^http://127\.0\.0\.1(:[0-9]{1,5})?$")]


def cors_origins(config) -> list:
    """The origins a browser app may call the API from: ``CORS_ORIGINS``, and in
    development also ``http://localhost`` and ``http://127.0.0.1`` on any port."""
    origins = list(config.get("CORS_ORIGINS") or [])
    if config.get("SONICUS_ENV") == "development":
        origins += DEVELOPMENT_ORIGINS
    return origins


def _under(url: str, base: str) -> bool:
    base = base.rstrip("/")
    return bool(base) and (url == base or url.startswith((base + "/", base + "?", base + "#")))


def is_app_url(config, url: str) -> bool:
    """Whether the browser may be sent to ``url`` (checkout and portal return addresses): it
    starts with ``PUBLIC_BASE_URL`` or an origin of ``cors_origins`` (in development also a
    local dev server). Never anywhere else: that would be an open redirect."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    for origin in [config.get("PUBLIC_BASE_URL") or "", *cors_origins(config)]:
        if isinstance(origin, str):
            if _under(url, origin):
                return True
            continue
        scheme, sep, rest = url.partition("://")
        host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        if sep and "@" not in host and origin.match(f"{scheme}://{host}"):
            return True
    return False


def install_cors(app) -> list:
    """CORS for ``/api/*`` (and the development media files) from ``cors_origins``: the
    headers an SPA sends (tokens, idempotency keys, tracing) and reads (request id, rate
    limits, ``Retry-After``, ``Idempotent-Replayed``). No cookies: tokens are Bearer.

    Returns flask-cors's after-request hooks when they are only for requests that send
    ``Origin`` (see below), in the order they run: the finishing hook runs them (they ran
    right after it anyway), so other requests do not go through a hook of theirs at all."""
    origins = cors_origins(app.config)
    if not origins:
        return []
    hooks = app.after_request_funcs.setdefault(None, [])
    before = list(hooks)
    CORS(app, resources={r"/api/*": {"origins": origins},
                         r"/dev-media/*": {"origins": origins}},
         allow_headers=CORS_ALLOW_HEADERS, expose_headers=CORS_EXPOSE_HEADERS,
         supports_credentials=False, max_age=600)
    # flask-cors answers a request without ``Origin`` (any request but a browser's
    # cross-origin one) with its literal origins, or nothing at all when they are all
    # patterns: then its per-request work is skipped for such requests.
    if any(isinstance(origin, str) for origin in origins):
        return []
    added = [hook for hook in hooks if hook not in before]
    for hook in added:
        hooks.remove(hook)
    return added[::-1]  # Flask runs after-request hooks last registered first
