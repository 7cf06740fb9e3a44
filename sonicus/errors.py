"""Optional error reporting to Sentry (``SENTRY_DSN``), for web and worker processes alike.

Off unless ``SENTRY_DSN`` is set. Events carry no personal data: ``send_default_pii`` is off,
the Authorization and Cookie headers and query strings are dropped, and every string left in
an event (messages, exception values, breadcrumbs, URLs) goes through the logs' ``scrub``
(bearer tokens, JWTs, ``access_token=`` values, email addresses).
"""

from __future__ import annotations

import logging

import sentry_sdk
from sentry_sdk.integrations.flask import FlaskIntegration
from sentry_sdk.integrations.logging import LoggingIntegration
from sentry_sdk.integrations.rq import RqIntegration

from .log_format import scrub

log = logging.getLogger(__name__)

_DROPPED_HEADERS = frozenset(("authorization", "cookie", "sec-websocket-protocol",
                              "stripe-signature"))


def _scrubbed(value, depth: int = 0):
    if depth > 20:
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrubbed(v, depth + 1) for v in value]
    return value


def scrub_event(event: dict, hint=None) -> dict:
    """``before_send`` / ``before_breadcrumb``: nothing secret or personal leaves."""
    request = event.get("request")
    if isinstance(request, dict):
        headers = request.get("headers") or {}
        request["headers"] = {k: v for k, v in headers.items()
                              if k.lower() not in _DROPPED_HEADERS}
        request.pop("query_string", None)
        request.pop("cookies", None)
        request.pop("data", None)
    event.pop("user", None)
    return _scrubbed(event)


def init_error_reporting(app) -> bool:
    """Start Sentry for this process when ``SENTRY_DSN`` is set; True when started."""
    dsn = app.config.get("SENTRY_DSN")
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        environment=app.config.get("SONICUS_ENV"),
        release=app.config.get("SENTRY_RELEASE"),
        send_default_pii=False,
        traces_sample_rate=0.0,
        integrations=[FlaskIntegration(), RqIntegration(),
                      LoggingIntegration(level=logging.INFO, event_level=logging.ERROR)],
        before_send=scrub_event,
        before_breadcrumb=lambda crumb, hint: _scrubbed(crumb),
    )
    log.info("error reporting to Sentry is on")
    return True
