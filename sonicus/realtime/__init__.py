"""Live updates: the broker (publish, one subscriber per process) and the /ws routes."""

from __future__ import annotations

import logging
import re

from flask import Blueprint

_TOKEN_IN_QUERY = re.compile(r"(access_token=)[^&\s\"']*", re.IGNORECASE)


class RedactTokensFilter(logging.Filter):
    """Keeps ``?access_token=`` values out of access logs (werkzeug and gunicorn)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, dict):
            record.args = {k: _TOKEN_IN_QUERY.sub(r"\1[redacted]", v) if isinstance(v, str)
                           else v for k, v in args.items()}
        elif isinstance(args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1[redacted]", v) if isinstance(v, str)
                                else v for v in args)
        if isinstance(record.msg, str) and "access_token=" in record.msg:
            record.msg = _TOKEN_IN_QUERY.sub(r"\1[redacted]", record.msg)
        return True


def _install_log_redaction() -> None:
    for name in ("werkzeug", "gunicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokensFilter) for f in logger.filters):
            logger.addFilter(RedactTokensFilter())


def disconnect_user(user_id: int) -> bool:
    """Close the user's open sockets on every web process (used when an account is suspended)."""
    from .broker import disconnect_user as disconnect

    return disconnect(user_id)


def register_realtime(app) -> None:
    """Attach the WebSocket routes; nothing connects until the first socket arrives."""
    from .routes import register_socket_routes

    bp = Blueprint("realtime", __name__)
    register_socket_routes(bp)
    app.register_blueprint(bp)
    _install_log_redaction()
