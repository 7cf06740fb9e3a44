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
import socket
import time

from flask import Blueprint, current_app, g, request
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.utilities import LocalProtocolError

from ..api_errors import ApiError
from ..auth import caller_until_from_token
from ..extensions import db, sock
from ..metrics import socket_closed, socket_opened
from .broker import (
    ADMITTED,
    FIRST_START_WAIT_SECONDS,
    TOO_MANY_IN_PROCESS,
    get_broker,
    init_broker,
)
from .connection import Connection, text_frame, write_within
from .leases import CLOSE_TOO_MANY_SOCKETS
from .loop import read_after_the_rest
from .publish import CLOSE_FORBIDDEN, CLOSE_INVALID_TOKEN

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TOO_BIG = 1009
SUBSCRIBE_WAIT_SECONDS = 2.0
RECEIVE_BYTES = 4096
# After the server's close, what the peer still sends is read (and dropped) this long at most
# before the connection closes: a close with unread data answers it with a TCP reset
CLOSE_LINGER_SECONDS = 2.0


class HandlerReads:
    """simple-websocket's ``thread_class`` (``SOCK_SERVER_OPTIONS``): its reader thread is
    never started, the socket's handler reads instead (``read_until_closed``). One greenlet per
    socket instead of two, no selector, no thread object and its locks."""

    name = "sonicus-socket"

    def __init__(self, target=None, **_kwargs):
        pass

    def start(self) -> None:
        pass


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
            frames, self.pending = [text_frame(first), *self.pending], []
            self.started = True
            if self.closed or not self.ws.connected:  # closed meanwhile (a suspension)
                return
            try:
                write_within(self.ws.sock, b"".join(frames))
            except Exception:  # gone, or takes nothing: the reader ends the socket
                self._lost()


SOCKET_ENDED = "sonicus.socket_ended"  # in the environ of a request a socket handler served


class EndSocketRequests:
    """WSGI middleware: under gunicorn, a request that became a socket ends with no HTTP
    answer (gunicorn is told the connection is dealt with).

    flask-sock's own response does that, but Flask turns any response of another class than
    the app's ``response_class`` into one (``force_type``), which drops it: gunicorn then
    wrote an HTTP answer onto the socket after its close (``Bad file descriptor``, an error
    and its traceback logged for every socket that closed)."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        answer = self.wsgi_app(environ, start_response)
        if environ.get(SOCKET_ENDED) and "gunicorn.socket" in environ:
            close = getattr(answer, "close", None)
            if close is not None:
                close()
            raise StopIteration  # gunicorn: the connection is closed, write nothing
        return answer


def read_until_closed(ws, conn: Connection, broker) -> None:
    """Read ``ws`` in its own handler until it closes: answer the client's pings and its close,
    ignore messages (the client has nothing to say; past ``max_message_size`` a message closes
    the socket with 1009). The process's keep-alive sweep (``KeepAlive.watch``) pings a peer
    that was silent for ``ping_interval`` seconds and closes one that lets a ping go unanswered
    for as long (1008): the read waits without a timeout (under gevent a timed wait costs a
    timeout, its timer and its exception, kept until the next ping, for every socket). Under
    gevent the reader is woken after whatever else is ready (``read_after_the_rest``). Every
    write takes the connection's send lock: the broker writes to the same socket."""
    sock, protocol = ws.sock, ws.ws
    sock.settimeout(None)
    read_after_the_rest(sock)
    if ws.ping_interval:
        broker.keepalive.watch(conn, ws.ping_interval)
    message_size = 0
    try:
        while ws.connected:
            data = sock.recv(RECEIVE_BYTES)
            if not data:
                return
            conn.heard_from()  # the peer is alive, whatever it sent
            with conn.send_lock:
                protocol.receive_data(data)
                events = list(protocol.events())
            for event in events:
                if isinstance(event, CloseConnection):
                    if protocol.state == ConnectionState.REMOTE_CLOSING:
                        conn.send_event(event.response())
                    elif protocol.state == ConnectionState.OPEN:
                        # a frame wsproto refused (1002 not masked or not a frame, 1007 not
                        # UTF-8): the peer is told why, not just hung up on
                        conn.close(event.code, event.reason)
                        broker.unregister(conn)
                        linger_after_close(sock, None)
                    ws.close_reason, ws.close_message = event.code, event.reason
                    return
                if isinstance(event, Ping):
                    conn.send_event(event.response())
                elif isinstance(event, (TextMessage, BytesMessage)):
                    message_size += len(event.data)
                    if ws.max_message_size and message_size > ws.max_message_size:
                        conn.close(CLOSE_TOO_BIG, "Message is too big")
                        broker.unregister(conn)  # its place is free while it lingers
                        linger_after_close(sock, protocol)
                        return
                    if event.message_finished:
                        message_size = 0
                elif isinstance(event, Pong):
                    pass
            # not kept while the socket waits for its next message
            data = events = event = None
    except (OSError, LocalProtocolError):
        return
    finally:
        ws.connected = False
        conn.closed = True
        try:
            sock.close()
        except OSError:
            pass


def linger_after_close(sock, protocol) -> None:
    """After the server's close frame, with the peer still sending (the rest of a message too
    big): closing the connection now would answer what it sends with a TCP reset, which can
    reach the client before it reads the close frame (its data is then lost with the reset,
    and the client never learns the code: 1009 seen as a dropped connection). So the server
    stops writing (a FIN after the close frame) and reads and drops what comes until the peer
    answers the close (parsed by ``protocol`` when given) or hangs up, for at most
    ``CLOSE_LINGER_SECONDS``."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    deadline = time.monotonic() + CLOSE_LINGER_SECONDS
    while (left := deadline - time.monotonic()) > 0:
        try:
            sock.settimeout(left)
            data = sock.recv(RECEIVE_BYTES * 16)
        except OSError:  # the wait is over (a timeout is one), or the peer is gone
            return
        if not data:
            return
        if protocol is None:
            continue
        try:
            protocol.receive_data(data)
            if any(isinstance(event, CloseConnection) for event in protocol.events()):
                return  # the peer answered the close: nothing more comes
        except Exception:  # not frames any more: just drain
            protocol = None


def socket_token() -> str | None:
    token = request.args.get("access_token")
    if token:
        return token
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() == "bearer" and offered[1]:
        return offered[1]
    return None


def _check_handshake(headers) -> None:
    """What the WebSocket handshake needs beyond the upgrade itself (routing checks that): a
    client's malformed request is its 400 naming the header, not an error of ours later."""
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        raise ApiError(400, "validation_error", "Unsupported WebSocket version.",
                       errors=["Sec-WebSocket-Version: must be 13."],
                       headers={"Sec-WebSocket-Version": "13"})
    if not headers.get("Host", "").strip():  # the handshake is an HTTP/1.1 request
        raise ApiError(400, "validation_error", "Missing Host header.",
                       errors=["Host: required for a WebSocket handshake."])
    if not headers.get("Sec-WebSocket-Key", "").strip():
        raise ApiError(400, "validation_error", "Missing WebSocket key.",
                       errors=["Sec-WebSocket-Key: required for a WebSocket handshake."])


def authenticate_socket() -> None:
    """Before the upgrade: resolve the user, or the close code the socket will get."""
    if request.endpoint != "realtime.analytics_socket":
        return
    _check_handshake(request.headers)
    # No permessage-deflate: its zlib state is ~2x the rest of an idle socket, and the
    # messages are small JSON (the handshake reads the offer from the environ).
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    g.ws_user = None
    g.ws_refusal = (CLOSE_INVALID_TOKEN, "invalid token")
    g.ws_since = time.monotonic()  # a close of the account published from now on concerns it
    token = socket_token()
    if not token:
        return
    try:
        g.ws_user, g.ws_until = caller_until_from_token(token)
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
    request.environ[SOCKET_ENDED] = True  # upgraded: nothing may be written after the socket
    refusal = g.get("ws_refusal")
    if refusal is not None or g.get("ws_user") is None:
        code, reason = refusal or (CLOSE_INVALID_TOKEN, "invalid token")
        ws.close(reason=code, message=reason)
        return
    user_id = g.ws_user.id
    g.pop("ws_user")  # the caller (with its onboarding and preferences) is not kept per socket
    broker = get_broker()
    conn = SnapshotFirstConnection(ws, user_id)
    conn.token_until = g.pop("ws_until", None)  # the sweep closes it then (4401)
    # Past this process's cap, refuse (1013) rather than starve HTTP; past the user's cap
    # across every process, refuse with 4429.
    admitted = broker.admit(conn, current_app.config["WS_MAX_SOCKETS_PER_PROCESS"],
                            current_app.config["WS_MAX_SOCKETS_PER_USER"])
    # the account suspended or erased while this handshake signed in: its close, published
    # before the socket was registered, found nothing to close
    late = broker.accounts.closed_since(user_id, g.pop("ws_since", 0.0))
    if admitted == ADMITTED and late is not None:
        broker.unregister(conn)
        admitted = late
    if admitted != ADMITTED:
        db.session.remove()
        if isinstance(admitted, tuple):
            ws.close(reason=admitted[0], message=admitted[1])
        elif admitted == TOO_MANY_IN_PROCESS:
            log.warning("live updates: socket refused, %s open in this process",
                        broker.local_socket_count())
            ws.close(reason=CLOSE_TRY_AGAIN_LATER, message="too many sockets; try again later")
        else:
            ws.close(reason=CLOSE_TOO_MANY_SOCKETS, message="too many sockets for this user")
        return
    # wsproto's handshake (an h11 connection, the request and its headers) is done with: the
    # socket keeps the websocket connection only, which answers the same send/receive calls
    if getattr(ws.ws, "connection", None) is not None:
        ws.ws = ws.ws.connection
    socket_opened()
    try:
        broker.wait_ready(SUBSCRIBE_WAIT_SECONDS)
        try:
            first = snapshot_message(broker, user_id)
        except Exception as exc:
            # After the upgrade an error must not become an HTTP answer written onto the
            # socket (under gevent the server would then read it alongside the socket's
            # reader): the client is told to come back later.
            log.warning("live updates: snapshot failed: %s", type(exc).__name__)
            ws.close(reason=CLOSE_TRY_AGAIN_LATER, message="try again later")
            return
        finally:
            db.session.remove()  # a waiting socket must not hold a pooled connection
        conn.start(first)
        del first  # not kept while the socket waits
        if isinstance(getattr(ws, "thread", None), HandlerReads):
            read_until_closed(ws, conn, broker)
        else:  # simple-websocket's own reader runs (other SOCK_SERVER_OPTIONS)
            while ws.connected:
                # The client has nothing to say; reading notices the close.
                ws.receive(timeout=None)
    finally:
        socket_closed()
        conn.closed = conn.ended = True
        broker.unregister(conn)
        db.session.remove()


def snapshot_message(broker, user_id: int) -> str:
    """The ``analytics.snapshot`` message, as text (the figures are not kept as objects)."""
    return json.dumps({"type": "analytics.snapshot", "data": broker.snapshot(user_id) or {}},
                      separators=(",", ":"), default=str)


def _start_subscriber_hook(broker):
    def start_subscriber() -> None:
        """Before every request: this process's subscriber runs (started by the first
        request of a process unless gunicorn's ``post_worker_init`` started it already)."""
        broker.start(wait=FIRST_START_WAIT_SECONDS)

    return start_subscriber


def register_realtime(app, snapshot, close_codes=None, settings_versions=None) -> None:
    """The broker and the WebSocket routes. Nothing connects at creation: the subscriber
    starts in the serving process (``_start_subscriber_hook``), never in a worker or the CLI.

    ``snapshot(user_id)``: the user's current analytics (the broker never imports services);
    ``close_codes(user_ids)``: the close codes of those of these users whose sockets must
    close now (suspended, erased), by id; one query for all of them;
    ``settings_versions(user_ids)``: their settings versions, by id (caught up on after a gap).
    """
    broker = init_broker(app, snapshot, close_codes, settings_versions)
    app.wsgi_app = EndSocketRequests(app.wsgi_app)
    app.config["SOCK_SERVER_OPTIONS"] = {**app.config.get("SOCK_SERVER_OPTIONS", {}),
                                         "thread_class": HandlerReads}
    app.before_request(_start_subscriber_hook(broker))
    bp = Blueprint("realtime", __name__)
    bp.before_request(authenticate_socket)
    sock.route("/ws/analytics", bp=bp)(analytics_socket)
    app.register_blueprint(bp)
