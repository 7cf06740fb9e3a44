"""The app's HTTP edge, wired by ``init_web``: request ids, security headers, no-store on
private paths, the access log line, JSON nested too deep refused before it is parsed, the
client's address behind trusted proxies, and database outages answered as 503. What it
installs from elsewhere: the app's log lines (``logs.configure_logging``), the JSON provider
and the cookie-less sessions (``flask_classes.py``, with the request class, which takes query
bytes that are not UTF-8, and the route converter, which takes path ids of ASCII digits
only), and CORS (``origins.py``). Rate limits: ``ratelimit.py``.
"""

from __future__ import annotations

import logging
import os
import random
import re
import sys
import threading
import time

from flask import current_app, g, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.middleware.proxy_fix import ProxyFix

from .api_errors import ApiError, body_too_large
from .extensions import api, db
from .flask_classes import FastJSONProvider, NoCookieSessions
from .logs import configure_logging
from .origins import install_cors
from .validation import MAX_JSON_DEPTH, json_too_deep

access_log = logging.getLogger("sonicus.access")
log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")

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


def refuse_deep_json(req):
    """A body nested deeper than ``MAX_JSON_DEPTH`` levels is refused before anything
    parses it (parsers recurse: 10,000 levels would exhaust the stack). Called by
    ``_start_request`` for the methods that carry a body."""
    body = req.get_data(cache=True)
    if body and json_too_deep(body):
        raise ApiError(400, "validation_error", "The request body is nested too deeply.",
                       errors=[f"body: JSON may nest at most {MAX_JSON_DEPTH} levels."])


# Set on a view method (``takes_bodies_up_to``) whose valid bodies can outgrow
# ``MAX_CONTENT_LENGTH``: the limit for its requests instead (never a lower one).
BODY_LIMIT = "sonicus_body_limit"


def takes_bodies_up_to(limit: int):
    """Mark a view method (outermost decorator) that accepts bodies up to ``limit`` bytes:
    what its schema allows (an offline sync of 100 items with notes) must not be a 413."""

    def mark(view):
        setattr(view, BODY_LIMIT, limit)
        return view

    return mark


def _raise_body_limit(req) -> None:
    """Before the body is read: a marked view's own limit, when above the app's."""
    view = current_app.view_functions.get(req.endpoint) if req.endpoint else None
    view_class = getattr(view, "view_class", None)
    method = getattr(view_class, req.method.lower(), None) if view_class else view
    limit = getattr(method, BODY_LIMIT, None)
    if limit is not None and req.max_content_length is not None \
            and limit > req.max_content_length:
        req.max_content_length = limit


def refuse_unsized_overflow(req) -> None:
    """A body sent without a length (chunked) is read up to ``MAX_CONTENT_LENGTH`` and cut
    there without a word (werkzeug refuses only a declared length over it): one byte more
    waiting in the input makes it 413, as a declared length would, instead of a parser's 400
    on the cut body. Called by ``_start_request`` for the methods that carry a body."""
    limit = req.max_content_length
    if req.content_length is not None or limit is None:
        return
    if len(req.get_data(cache=True)) >= limit and req.environ["wsgi.input"].read(1):
        too_large = body_too_large(limit)
        raise ApiError(413, "payload_too_large", too_large["message"],
                       errors=too_large["errors"])


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
        _raise_body_limit(req)
        refuse_unsized_overflow(req)
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


# Answered with no-store: personal data, and the catalog, whose answers are the caller's
# (access, in_library, signed stream URLs that only an open package gets).
PRIVATE_PATHS = ("/api/user", "/api/admin", "/api/billing", "/api/packages", "/api/categories")


def _finish_request_hook(header_sets, cors_hooks=()):
    """The after-request hook: security headers from the prebuilt ``header_sets``, no-store
    on private paths, the request id, rate-limit headers, and the access log line; then, for
    a request that sends ``Origin``, the ``cors_hooks`` (``origins.install_cors``)."""
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
    cors_hooks = install_cors(app)
    app.before_request(_start_request)
    app.after_request(_finish_request_hook(_security_header_sets(app), cors_hooks))
    _install_database_error_handlers(app)
    _install_session_teardown(app)


