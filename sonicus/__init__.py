"""Sonicus: therapeutic sound subscriptions. ``create_app`` is the only entry point."""

from __future__ import annotations

import logging
from inspect import iscoroutinefunction
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from flask import Flask, abort
from flask.globals import request_ctx
from werkzeug.exceptions import NotFound
from werkzeug.routing import RequestRedirect, WebsocketMismatch

from config import ConfigError, load_config, normalise_database_url, validate_config

from . import models  # noqa: F401  (every table on the metadata)
from .api import register_api
from .auth import init_auth
from .cli import sonicus_cli
from .docs import blp as docs_blueprint
from .envelope import envelope
from .errors import init_error_reporting
from .extensions import api, db, migrate, sock
from .flask_classes import ApiRequest, ApiResponse, IdConverter
from .logs import install_log_redaction
from .metrics import init_metrics
from .ratelimit import init_rate_limits
from .realtime.routes import register_realtime
from .retry_safe import init_idempotency
from .services.analytics import analytics_for_user_id
from .services.socket_accounts import socket_close_codes, socket_settings_versions
from .web import init_web

__all__ = ["ConfigError", "create_app"]

log = logging.getLogger(__name__)


def _database_settings(app: Flask) -> None:
    url = app.config.get("DATABASE_URL")
    if not url:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        url = "sqlite:///" + str(Path(app.instance_path) / "sonicus.db")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    if url.startswith("sqlite"):
        options = {"execution_options": {"schema_translate_map": {"sonicus": None}},
                   "connect_args": {"check_same_thread": False, "timeout": 30}}
    else:
        # No pre-ping round trip per request: a dropped connection fails that request
        # with a 503 and the pool is invalidated, so the next one reconnects. Its size is
        # this process's share of PostgreSQL's connections (README, "Database connections");
        # a request that waits out the timeout for one answers 503 (``web.py``).
        options = {"pool_recycle": 1800, "pool_size": int(app.config["DATABASE_POOL_SIZE"]),
                   "max_overflow": int(app.config["DATABASE_MAX_OVERFLOW"]),
                   "pool_timeout": int(app.config["DATABASE_POOL_TIMEOUT_SECONDS"]),
                   "connect_args": {"connect_timeout": 5}}
    options.update(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    app.config.setdefault("SQLALCHEMY_TRACK_MODIFICATIONS", False)


def _api_settings(app: Flask) -> None:
    app.config.update(
        API_TITLE="Sonicus API",
        API_VERSION="1.0.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        # Swagger UI and ReDoc are served by ``docs.py`` from local assets (strict CSP).
        SOCK_SERVER_OPTIONS={"ping_interval": 25, "max_message_size": 64 * 1024,
                             "subprotocols": ["bearer"]},
        JSON_SORT_KEYS=False,
    )


class Sonicus(Flask):
    """Flask, remembering which handlers are coroutines instead of asking per request; with
    the API's request and response classes and ``<int:...>`` converter (``flask_classes.py``).
    Every answer it makes itself is an envelope: no routing redirects, a JSON ``OPTIONS``."""

    request_class = ApiRequest
    response_class = ApiResponse

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.url_map.converters["int"] = IdConverter
        self._is_sync: dict = {}

    def raise_routing_exception(self, request):
        """A path is answered at its one spelling: werkzeug's routing redirects (doubled
        slashes merged, a trailing slash added) are a 404 ``not_found`` envelope instead of a
        308 with an HTML page, which would send a client and its Authorization header on to
        another address (and a write's body with it)."""
        if isinstance(request.routing_exception, RequestRedirect):
            raise NotFound()
        if request.method == "OPTIONS" and isinstance(request.routing_exception,
                                                      WebsocketMismatch):
            # ``OPTIONS`` at a socket's address (werkzeug routes it as a handshake that is
            # missing) is answered like any other, with the methods of the socket's route
            rule, _args = request_ctx.url_adapter.match(websocket=True, return_rule=True)
            response = self.json.response(envelope())
            response.allow.update({*rule.methods, "OPTIONS"})
            abort(response)
        raise request.routing_exception

    def make_default_options_response(self):
        """``OPTIONS`` (a CORS preflight among others): an empty envelope, with ``Allow``."""
        response = self.json.response(envelope())
        response.allow.update(request_ctx.url_adapter.allowed_methods())
        return response

    def ensure_sync(self, func):
        # Flask asks for every hook and view of every request: most are the same objects
        # each time, answered by one lookup.
        try:
            is_sync = self._is_sync.get(func)
        except TypeError:  # not hashable: ask every time
            return super().ensure_sync(func)
        if is_sync is None:
            # a bound method (a new object per request for a MethodView): its function
            key = getattr(func, "__func__", func)
            is_sync = self._is_sync.get(key)
            if is_sync is None:
                is_sync = self._is_sync[key] = not iscoroutinefunction(func)
        return func if is_sync else self.async_to_sync(func)


def create_app(overrides: dict | None = None) -> Flask:
    """Build the app: settings, extensions, blueprints, errors, CLI and sockets. No I/O."""
    settings = load_config()
    if overrides:
        settings.update(overrides)
        if settings.get("DATABASE_URL"):
            settings["DATABASE_URL"] = normalise_database_url(settings["DATABASE_URL"])
        settings["TESTING"] = settings["SONICUS_ENV"] == "testing"
    app = Sonicus(__name__, static_folder=None,
                instance_path=settings.get("INSTANCE_PATH") or None)
    app.config.update(settings)
    _database_settings(app)
    _api_settings(app)
    validate_config(app.config)
    init_error_reporting(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent.parent / "migrations"))
    api.init_app(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    sock.init_app(app)
    init_auth(app)
    init_web(app)
    init_idempotency(app)  # after init_web: a kept answer is kept before the access line
    init_rate_limits(app)  # after init_web: its hook starts each request
    init_metrics(app)
    register_api(app, api)
    app.register_blueprint(docs_blueprint)
    register_realtime(app, snapshot=analytics_for_user_id, close_codes=socket_close_codes,
                      settings_versions=socket_settings_versions)
    install_log_redaction()
    app.cli.add_command(sonicus_cli)
    _log_stripe_api_base(app)
    return app


def _log_stripe_api_base(app: Flask) -> None:
    """Say once, at start, that Stripe's API is reached at another address (credentials in
    the address are not written)."""
    base = app.config.get("STRIPE_API_BASE")
    if not base:
        return
    parts = urlsplit(base)
    shown = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
    level = logging.WARNING if app.config["SONICUS_ENV"] == "production" else logging.INFO
    log.log(level, "STRIPE_API_BASE is set: Stripe's API is reached at %s", shown)
