"""What a log line is, in every process: one JSON object (``JsonFormatter``: the time, the
level, the logger, the message and the fields of ``LOG_FIELDS``), with bearer tokens, JWTs,
``access_token=`` values and email addresses scrubbed from it (``scrub``); the access lines of
werkzeug and gunicorn, which are not formatted here, lose their ``access_token=`` values
(``RedactTokensFilter``). Where each process sends its lines: ``logs.py``.
"""

from __future__ import annotations

import json
import logging
import re
import time

import orjson
from flask import g

_BEARER = re.compile(r"(?i)bearer\s+[A-Za-z0-9._~+/=-]+")
_TOKEN_PARAM = re.compile(r"(?i)(access_token=)[^&\s\"']+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")

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
