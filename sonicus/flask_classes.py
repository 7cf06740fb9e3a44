"""The classes the app uses in place of Flask's and werkzeug's defaults: the request
(``ApiRequest``: query bytes that are not UTF-8 reach the input schemas), the response
(``ApiResponse``: headers handed to the server uncopied), the JSON provider
(``FastJSONProvider``: orjson), the ``<int:...>`` converter (``IdConverter``: ASCII digits of
an ``integer``), the session interface (``NoCookieSessions``: none), and the attributes the
context proxies serve without a failed lookup first (installed when this module is imported).
"""

from __future__ import annotations

from urllib.parse import parse_qsl

import orjson
from flask import Request, Response
from flask.json.provider import DefaultJSONProvider
from flask.sessions import SessionInterface
from werkzeug.local import LocalProxy
from werkzeug.routing import IntegerConverter
from werkzeug.utils import cached_property

from .validation import INT32_MAX


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


class NoCookieSessions(SessionInterface):
    """The API is stateless (Bearer tokens): no cookie session is read or written."""

    def open_session(self, app, request):
        return None  # Flask substitutes its null session

    def save_session(self, app, session, response):
        return None
