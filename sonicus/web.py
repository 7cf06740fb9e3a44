"""Cross-cutting HTTP concerns: request ids, structured logs, security headers, CORS, JSON
encoding, hostile input at the edge (JSON too deep, bytes that are not UTF-8 in a query,
path ids that are not ASCII digits of an ``integer``), and database outages answered as 503
(rate limits: ``ratelimit.py``)."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import sys
import threading
import time
from urllib.parse import parse_qsl

import orjson
from flask import Request, Response, g, request
from flask.json.provider import DefaultJSONProvider
from flask.logging import default_handler
from flask.sessions import SessionInterface
from flask_cors import CORS
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.local import LocalProxy
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter
from werkzeug.utils import cached_property

from .envelope import ApiError
from .extensions import api, db
from .validation import INT32_MAX, MAX_JSON_DEPTH, json_too_deep

access_log = logging.getLogger("sonicus.access")
log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")
_TOKEN_PARAM = re.compile(r"(?i)(access_token=)[^&\s\"']+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-site",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
# The docs pages (``docs.py``): everything from this origin. Scripts are files only (no inline
# script, no eval); the renderers set inline styles, ReDoc searches in a blob: worker.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; font-src 'self'; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/api/docs", "/api/redoc")


# Fields a log record may carry (``extra=``) that become fields of its JSON line.
LOG_FIELDS = ("request_id", "method", "path", "status", "duration_ms", "user_id", "client",
              "job_id", "job", "queue", "outcome")


def scrub(text: str) -> str:
    """Remove tokens and email addresses from a log line."""
    # Most lines hold none of them: every pattern needs "@", "=", "eyJ" or "bearer".
    if not ("@" in text or "=" in text or "eyJ" in text or "earer" in text.lower()):
        return text
    text = _BEARER.sub("Bearer [redacted]", text)
    text = _TOKEN_PARAM.sub(r"\1[redacted]", text)
    text = _JWT.sub("[redacted-jwt]", text)
    return _EMAIL.sub("[redacted-email]", text)


_scrubbed_constants: dict[str, str] = {}  # log messages without arguments, scrubbed


class JsonFormatter(logging.Formatter):
    """One JSON object per line; tokens and emails scrubbed from every message."""

    _second: tuple[int, str] = (-1, "")  # the last second formatted, as text (UTC)

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                           time.gmtime(second)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        msg = record.msg
        if not record.args and type(msg) is str:
            # a message without arguments (the access line's, most lines): scrubbed once
            message = _scrubbed_constants.get(msg)
            if message is None:
                message = scrub(msg)
                if len(_scrubbed_constants) < 1024:
                    _scrubbed_constants[msg] = message
        else:
            message = scrub(record.getMessage())
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        attrs = record.__dict__
        for key in LOG_FIELDS:
            value = attrs.get(key)
            if value is not None:
                # a path can carry an email address (``/api/no/such/a@b.example``)
                entry[key] = scrub(value) if key == "path" else value
        if record.exc_info:
            entry["exception"] = scrub(self.formatException(record.exc_info))
        try:
            if "request_id" not in entry and g and g.get("request_id"):
                entry["request_id"] = g.request_id
        except RuntimeError:
            pass
        try:
            return orjson.dumps(entry).decode()
        except TypeError:  # a field orjson does not encode
            return json.dumps(entry, separators=(",", ":"), default=str)


def configure_logging(app) -> None:
    """JSON lines from the ``sonicus`` loggers. Where the process has configured logging
    already (gunicorn's ``logconfig_dict``, a worker: ``logs.configure_process_logging``) the
    lines go to its root handler; otherwise (``flask run``, scripts) to Flask's stream handler."""
    default_handler.setFormatter(JsonFormatter())
    logging.Formatter.converter = time.gmtime
    logger = logging.getLogger("sonicus")
    logger.setLevel(app.config["LOG_LEVEL"])
    root_configured = any(isinstance(h.formatter, JsonFormatter)
                          for h in logging.getLogger().handlers)
    if root_configured:
        if default_handler in logger.handlers:
            logger.removeHandler(default_handler)
    elif default_handler not in logger.handlers:
        logger.addHandler(default_handler)
    if (app.config["SONICUS_ENV"] == "development" and not root_configured
            and os.environ.get("FLASK_RUN_FROM_CLI") == "true"):
        # The development server (`flask run`): its own lines in JSON too, minus its
        # per-request line (the app's access line is the one: each request logged once).
        werkzeug_log = logging.getLogger("werkzeug")
        if default_handler not in werkzeug_log.handlers:
            werkzeug_log.addHandler(default_handler)
        if not any(isinstance(f, _DropRequestLines) for f in werkzeug_log.filters):
            werkzeug_log.addFilter(_DropRequestLines())


class _DropRequestLines(logging.Filter):
    """werkzeug's ``"GET /path HTTP/1.1" 200 -`` line (the app logs each request already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.rstrip().endswith('"%s" %s %s'))


class FastJSONProvider(DefaultJSONProvider):
    """Flask's JSON responses, encoded by orjson: the same compact, key-sorted documents
    (non-ASCII written as UTF-8 rather than escaped), several times faster to produce.
    Dates and anything else orjson does not own go through Flask's ``default`` as before;
    a value orjson refuses, and indented output in debug, take Flask's own path."""

    _OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

    def response(self, *args, **kwargs):
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(*args, **kwargs)
        obj = self._prepare_response_obj(args, kwargs)
        options = self._OPTIONS | (orjson.OPT_SORT_KEYS if self.sort_keys else 0)
        try:
            body = orjson.dumps(obj, default=self.default, option=options)
        except TypeError:  # orjson.JSONEncodeError: e.g. an integer past 64 bits
            return super().response(*args, **kwargs)
        return self._app.response_class(body + b"\n", mimetype=self.mimetype)


class ApiResponse(Response):
    """Flask's response, handed to the server without copying its headers when nothing in
    them needs fixing (no ``Location``/``Content-Location`` to make absolute, a status that
    carries a body, ``Content-Length`` already set): werkzeug's copy re-validates every header
    of every answer, the security headers included."""

    def get_wsgi_headers(self, environ):
        status = self.status_code
        if status >= 200 and status not in (204, 304):
            has_length = False
            for name, _value in self.headers._list:
                lowered = name.lower()
                if lowered == "content-length":
                    has_length = True
                elif lowered in ("location", "content-location"):
                    has_length = False
                    break
            if has_length:
                return self.headers  # to_wsgi_list() makes the server's own list of it
        return super().get_wsgi_headers(environ)


class ApiRequest(Request):
    """Query arguments decoded so that bytes that are not UTF-8 (raw or percent-encoded)
    become unpaired surrogates, which the input schemas refuse by name, instead of failing
    the request (raw) or reaching a query as literal percent signs (encoded)."""

    @cached_property
    def args(self):
        text = self.query_string.decode("utf-8", "surrogateescape")
        return self.parameter_storage_class(
            parse_qsl(text, keep_blank_values=True, errors="surrogateescape"))


class IdConverter(IntegerConverter):
    """``<int:...>`` in routes: ASCII digits only (``\\d`` would take other scripts' digits)
    and no larger than an ``integer`` column; anything else matches no route (404)."""

    regex = r"[0-9]{1,10}"

    def __init__(self, map, fixed_digits=0, min=None, max=INT32_MAX, signed=False):
        super().__init__(map, fixed_digits=fixed_digits, min=min, max=max, signed=signed)


class _ProxiedAttribute:
    """``proxy.name``, read from the object behind a context proxy (``request``, ``g``,
    ``current_app``), found on the proxy's class. werkzeug's ``LocalProxy`` serves an attribute
    through ``__getattr__``, which Python calls only after the ordinary lookup failed: every
    such read formats and raises an ``AttributeError`` first (several thousand instructions,
    some twenty times a request between Flask, flask-smorest and the app). The result is the
    same object ``__getattr__`` would return; writes and deletes still go through the proxy."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return getattr(instance._get_current_object(), self.name)


# What every request reads through the context proxies (Flask's dispatch and hooks,
# flask-smorest's response wrapper, the app's own hooks).
PROXIED_ATTRIBUTES = ("environ", "headers", "method", "blueprints", "request", "ensure_sync",
                      "extensions", "json", "setdefault")


def _install_proxied_attributes() -> None:
    for name in PROXIED_ATTRIBUTES:
        if not hasattr(LocalProxy, name):
            setattr(LocalProxy, name, _ProxiedAttribute(name))


_install_proxied_attributes()


def refuse_deep_json(req):
    """A body nested deeper than ``MAX_JSON_DEPTH`` levels is refused before anything
    parses it (parsers recurse: 10,000 levels would exhaust the stack). Called by
    ``_start_request`` for the methods that carry a body."""
    body = req.get_data(cache=True)
    if body and json_too_deep(body):
        raise ApiError(400, "validation_error", "The request body is nested too deeply.",
                       errors=[f"body: JSON may nest at most {MAX_JSON_DEPTH} levels."])


class NoCookieSessions(SessionInterface):
    """The API is stateless (Bearer tokens): no cookie session is read or written."""

    def open_session(self, app, request):
        return None  # Flask substitutes its null session

    def save_session(self, app, session, response):
        return None


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


def _install_cors(app) -> list:
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


def _start_request():
    # g lives on the app context, which a caller may share across requests.
    state = g._get_current_object().__dict__
    if state:
        for name in ("caller", "current_user_id", "pagination", "envelope_message",
                     "rate_limit", "idempotency_claim"):
            state.pop(name, None)
    req = request._get_current_object()
    incoming = req.environ.get("HTTP_X_REQUEST_ID", "")
    # A correlation id, not a secret: no system call (uuid4 asks the kernel for entropy,
    # which under load means handing the interpreter lock to another thread and waiting).
    state["request_id"] = (incoming if _REQUEST_ID.fullmatch(incoming)
                           else f"{random.getrandbits(128):032x}")
    state["request_started"] = time.perf_counter()
    if req.method not in ("GET", "HEAD", "OPTIONS"):  # the methods that carry a body
        refuse_deep_json(req)


def _security_header_sets(app) -> dict[bool, list[tuple[str, str, str]]]:
    """The security headers as (lowercased name, name, value), keyed by "is a docs page".
    Built once: every response gets them (a route that set one of them keeps its own)."""
    production = app.config["SONICUS_ENV"] == "production"
    header_sets = {}
    for docs in (False, True):
        headers = dict(SECURITY_HEADERS)
        headers["Content-Security-Policy"] = DOCS_CSP if docs else API_CSP
        if production:
            headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
        header_sets[docs] = [(name.lower(), name, value) for name, value in headers.items()]
    return header_sets


# What every access record holds the same: the rest of a LogRecord's attributes, set once.
_ACCESS_RECORD = {"name": access_log.name, "msg": "request", "args": None,
                  "levelname": logging.getLevelName(logging.INFO), "levelno": logging.INFO,
                  "pathname": __file__, "filename": os.path.basename(__file__),
                  "module": os.path.splitext(os.path.basename(__file__))[0],
                  "exc_info": None, "exc_text": None, "stack_info": None, "lineno": 0,
                  "funcName": None}


_pid = [os.getpid()]  # this process's id, kept current across forks (no system call per line)
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def _access_record(request_id, method, path, status, client, duration_ms, user_id):
    """The access line's record: what ``Logger.makeRecord`` builds, without re-deriving the
    constant parts per request (and without walking the stack, as ``Logger.info`` would, for
    a file and line the JSON lines never show)."""
    record = logging.LogRecord.__new__(logging.LogRecord)
    attrs = record.__dict__
    attrs.update(_ACCESS_RECORD)
    now = time.time()
    attrs["created"] = now
    attrs["msecs"] = int((now - int(now)) * 1000) + 0.0
    attrs["relativeCreated"] = (now - logging._startTime) * 1000
    attrs["thread"] = threading.get_ident()
    attrs["threadName"] = threading.current_thread().name
    multiprocessing = sys.modules.get("multiprocessing")
    attrs["processName"] = (multiprocessing.current_process().name if multiprocessing
                            else "MainProcess")
    attrs["process"] = _pid[0]
    attrs["request_id"] = request_id
    attrs["method"] = method
    attrs["path"] = path
    attrs["status"] = status
    attrs["client"] = client
    attrs["duration_ms"] = duration_ms
    attrs["user_id"] = user_id
    return record


PRIVATE_PATHS = ("/api/user", "/api/admin", "/api/billing")  # answered with no-store


def _finish_request_hook(header_sets, cors_hooks=()):
    """The after-request hook: security headers from the prebuilt ``header_sets``, no-store
    on private paths, the request id, rate-limit headers, and the access log line; then, for
    a request that sends ``Origin``, the ``cors_hooks`` (``_install_cors``)."""
    # The constant headers to add, by (docs page, private path, the names a response set
    # already): few combinations (most answers set Content-Type and Content-Length only), so
    # each list is made once and reused.
    constant_headers: dict[tuple, list] = {}

    def _finish_request(response):
        headers = response.headers
        listed = headers._list
        names = tuple([name.lower() for name, _ in listed])
        req = request._get_current_object()
        path = req.path
        key = (path.startswith(DOCS_PATHS), path.startswith(PRIVATE_PATHS), names)
        extra = constant_headers.get(key)
        if extra is None:
            present = set(names)
            extra = [(name, value) for lowered, name, value in header_sets[key[0]]
                     if lowered not in present]
            if key[1] and "cache-control" not in present:
                extra.append(("Cache-Control", "no-store"))
            if len(constant_headers) < 256:
                constant_headers[key] = extra
        if "x-request-id" in names:
            del headers["X-Request-ID"]
            listed = headers._list
        state = g._get_current_object().__dict__
        # Appended as they are: every value here is a constant, digits, or a request id
        # that matched _REQUEST_ID (``Headers.extend`` re-validates each of them, which cost
        # more than the rest of this hook).
        listed.extend(extra)
        listed.append(("X-Request-ID", state.get("request_id", "")))
        rate_limit = state.get("rate_limit")  # (limit, remaining, reset) as text
        if rate_limit is not None:
            listed += [("X-RateLimit-Limit", rate_limit[0]),
                       ("X-RateLimit-Remaining", rate_limit[1]),
                       ("X-RateLimit-Reset", rate_limit[2])]
        if access_log.isEnabledFor(logging.INFO):
            started = state.get("request_started")
            environ = req.environ
            # Logger.handle, minus its call of an empty filter list
            handle = access_log.handle if access_log.filters or access_log.disabled \
                else access_log.callHandlers
            handle(_access_record(
                state.get("request_id"), environ["REQUEST_METHOD"], path, response.status_code,
                environ.get("REMOTE_ADDR"),
                round((time.perf_counter() - started) * 1000, 2) if started else None,
                state.get("current_user_id")))
        if cors_hooks and "HTTP_ORIGIN" in req.environ:
            for hook in cors_hooks:
                response = hook(response)
        return response

    return _finish_request


def _database_unavailable(error):
    try:
        db.session.rollback()
    except Exception:  # the connection may be gone
        pass
    log.error("database unavailable: %s", type(getattr(error, "orig", error)).__name__)
    return api.handle_http_exception(
        ApiError(503, "service_unavailable",
                 "The service is briefly unavailable; try again shortly.",
                 headers={"Retry-After": "2"}))


def _dbapi_error(error):
    if getattr(error, "connection_invalidated", False):
        return _database_unavailable(error)
    raise error


def _install_database_error_handlers(app) -> None:
    """A database outage (lost connection, pool exhausted) is answered as 503."""
    app.register_error_handler(PoolTimeoutError, _database_unavailable)
    app.register_error_handler(OperationalError, _database_unavailable)
    app.register_error_handler(DBAPIError, _dbapi_error)


def _remove_session_if_used(error=None) -> None:
    """flask-sqlalchemy's teardown, for a request that opened a session only: most reads are
    answered without one (cached callers), and removing a session that was never made still
    walks the scoped registry and raises and catches a ``KeyError``."""
    if db.session.registry.has():
        db.session.remove()


def _install_session_teardown(app) -> None:
    funcs = app.teardown_appcontext_funcs
    for i, func in enumerate(funcs):
        if getattr(func, "__self__", None) is db \
                and getattr(func, "__name__", "") == "_teardown_session":
            funcs[i] = _remove_session_if_used


def install_proxy_fix(app) -> None:
    """Behind ``TRUSTED_PROXY_COUNT`` proxies, the client is the address the outermost trusted
    proxy saw: ``REMOTE_ADDR`` (read by the rate limits and the access log) and the scheme come
    from their ``X-Forwarded-For``/``-Proto`` entries; entries a client added itself (to the left
    of those) are ignored. With 0 (the default) the headers are not read at all."""
    count = app.config.get("TRUSTED_PROXY_COUNT") or 0
    if count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count, x_proto=count, x_host=0,
                                x_port=0, x_prefix=0)


def init_web(app) -> None:
    configure_logging(app)
    install_proxy_fix(app)
    app.json = FastJSONProvider(app)
    app.session_interface = NoCookieSessions()
    cors_hooks = _install_cors(app)
    app.before_request(_start_request)
    app.after_request(_finish_request_hook(_security_header_sets(app), cors_hooks))
    _install_database_error_handlers(app)
    _install_session_teardown(app)


class RedactTokensFilter(logging.Filter):
    """Keeps ``?access_token=`` values out of access logs (werkzeug and gunicorn)."""

    @staticmethod
    def _redact(value):
        return _TOKEN_PARAM.sub(r"\1[redacted]", value) if isinstance(value, str) else value

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict):
            record.args = {k: self._redact(v) for k, v in args.items()}
        elif isinstance(args, tuple):
            record.args = tuple(self._redact(v) for v in args)
        if isinstance(record.msg, str) and "access_token=" in record.msg:
            record.msg = self._redact(record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokensFilter) for f in logger.filters):
            logger.addFilter(RedactTokensFilter())
