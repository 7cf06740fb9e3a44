"""``GET /ws/analytics``: the caller's analytics, live.

The token is checked before the upgrade (``?access_token=`` or the subprotocol pair
``bearer, <token>``), in the ordinary request cycle. A browser cannot read the HTTP status
of a refused handshake, so a bad token completes the handshake only to close at once with
code 4401 (4403 for a suspended account, 1013 when sign-in is unavailable): nothing is
registered and no data is sent.

A good token: the socket is registered for its user, the process's subscriber is ready, the
server sends ``analytics.snapshot``, then ``analytics.updated`` after every refresh. Updates
arriving before the snapshot is out wait behind it. The database connection is returned to
the pool before the socket starts waiting; pings keep the connection alive
(``SOCK_SERVER_OPTIONS["ping_interval"]``).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, current_app, g, request

from ..auth import caller_from_token
from ..envelope import ApiError
from ..extensions import db, sock
from ..metrics import socket_closed, socket_opened
from .broker import (
    ADMITTED,
    FIRST_START_WAIT_SECONDS,
    TOO_MANY_IN_PROCESS,
    Connection,
    get_broker,
    init_broker,
)
from .publish import CLOSE_FORBIDDEN

log = logging.getLogger(__name__)

CLOSE_INVALID_TOKEN = 4401
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_MANY_SOCKETS = 4429  # this user has WS_MAX_SOCKETS_PER_USER open already
SUBSCRIBE_WAIT_SECONDS = 2.0


class SnapshotFirstConnection(Connection):
    """Holds back updates until the snapshot has been sent, then sends them in order."""

    def __init__(self, ws, user_id):
        super().__init__(ws, user_id)
        self.started = False
        self.pending: list[bytes] = []

    def send_frame(self, frame: bytes) -> bool:
        with self.send_lock:
            if not self.started:
                self.pending.append(frame)
                return True
        return super().send_frame(frame)

    def start(self, first: str) -> None:
        with self.send_lock:
            self.ws.send(first)
            for frame in self.pending:
                self.ws.sock.sendall(frame)
            self.pending = []
            self.started = True


def socket_token() -> str | None:
    token = request.args.get("access_token")
    if token:
        return token
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() == "bearer" and offered[1]:
        return offered[1]
    return None


def authenticate_socket() -> None:
    """Before the upgrade: resolve the user, or the close code the socket will get."""
    if request.endpoint != "realtime.analytics_socket":
        return
    # No permessage-deflate: its zlib state is ~2x the rest of an idle socket, and the
    # messages are small JSON (the handshake reads the offer from the environ).
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    g.ws_user = None
    g.ws_refusal = (CLOSE_INVALID_TOKEN, "invalid token")
    token = socket_token()
    if not token:
        return
    try:
        g.ws_user = caller_from_token(token)
        g.ws_refusal = None
    except ApiError as exc:
        if exc.code == 403:
            g.ws_refusal = (CLOSE_FORBIDDEN, "forbidden")
        elif exc.code >= 500:
            g.ws_refusal = (CLOSE_TRY_AGAIN_LATER, "sign-in unavailable")
    finally:
        # The caller is immutable: no database connection is held through the handshake
        # (under gevent, thousands of handshakes would queue for the pool).
        db.session.remove()


def analytics_socket(ws):
    refusal = g.get("ws_refusal")
    if refusal is not None or g.get("ws_user") is None:
        code, reason = refusal or (CLOSE_INVALID_TOKEN, "invalid token")
        ws.close(reason=code, message=reason)
        return
    user = g.ws_user
    broker = get_broker()
    conn = SnapshotFirstConnection(ws, user.id)
    # Past this process's cap, refuse (1013) rather than starve HTTP; past the user's cap
    # across every process, refuse with 4429.
    admitted = broker.admit(conn, current_app.config["WS_MAX_SOCKETS_PER_PROCESS"],
                            current_app.config["WS_MAX_SOCKETS_PER_USER"])
    if admitted != ADMITTED:
        db.session.remove()
        if admitted == TOO_MANY_IN_PROCESS:
            log.warning("live updates: socket refused, %s open in this process",
                        broker.local_socket_count())
            ws.close(reason=CLOSE_TRY_AGAIN_LATER, message="too many sockets; try again later")
        else:
            ws.close(reason=CLOSE_TOO_MANY_SOCKETS, message="too many sockets for this user")
        return
    socket_opened()
    try:
        broker.wait_ready(SUBSCRIBE_WAIT_SECONDS)
        try:
            data = broker.snapshot(user.id) or {}
        except Exception as exc:
            # After the upgrade an error must not become an HTTP answer written onto the
            # socket (under gevent the server would then read it alongside the socket's
            # reader): the client is told to come back later.
            log.warning("live updates: snapshot failed: %s", type(exc).__name__)
            ws.close(reason=CLOSE_TRY_AGAIN_LATER, message="try again later")
            return
        finally:
            db.session.remove()  # a waiting socket must not hold a pooled connection
        conn.start(json.dumps({"type": "analytics.snapshot", "data": data},
                              separators=(",", ":"), default=str))
        while ws.connected:
            # The client has nothing to say; reading notices the close (and answers pings).
            ws.receive(timeout=None)
    finally:
        socket_closed()
        conn.closed = True
        broker.unregister(conn)
        db.session.remove()


def start_subscriber() -> None:
    """Before every request: this process's subscriber runs (started by the first request
    of a process unless gunicorn's ``post_worker_init`` started it already)."""
    get_broker().start(wait=FIRST_START_WAIT_SECONDS)


def register_realtime(app, snapshot) -> None:
    """The broker and the WebSocket routes. Nothing connects at creation: the subscriber
    starts in the serving process (``start_subscriber``), never in a worker or the CLI.

    ``snapshot(user_id)``: the user's current analytics (the broker never imports services).
    """
    init_broker(app, snapshot)
    app.before_request(start_subscriber)
    bp = Blueprint("realtime", __name__)
    bp.before_request(authenticate_socket)
    sock.route("/ws/analytics", bp=bp)(analytics_socket)
    app.register_blueprint(bp)
