"""One open socket of one user (``Connection``): its send lock, its keep-alive state, and the
frames written to it (``text_frame``: one per message, for all of a user's sockets).
"""

from __future__ import annotations

import socket
import struct
import threading
import time


def text_frame(text: str) -> bytes:
    """A server's unmasked, unfragmented, uncompressed text frame (RFC 6455, 5.2).

    Built once per message for all of a user's sockets and written straight to each socket:
    going through wsproto for every socket cost more than the system call (sockets here never
    negotiate permessage-deflate, so a plain frame is what wsproto would write too)."""
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x81, 126, size)
    else:
        header = struct.pack("!BBQ", 0x81, 127, size)
    return header + payload


class Connection:
    """One open socket of one user, with its own send lock."""

    def __init__(self, ws, user_id: int):
        self.ws = ws
        self.user_id = user_id
        self.send_lock = threading.Lock()
        self.closed = False
        self.lease: str | None = None  # its member in the user's leases (Redis)
        self.heard = time.monotonic()  # when the peer last sent anything
        self.pinged = 0.0  # when the ping it has not answered yet went out (0: none)
        self.kept_alive = False  # the broker's keep-alive sweep pings it

    def heard_from(self) -> None:
        """The peer sent something (whatever it is, it is alive)."""
        self.heard = time.monotonic()
        self.pinged = 0.0

    def send(self, text: str) -> bool:
        return self.send_frame(text_frame(text))

    def send_frame(self, frame: bytes) -> bool:
        with self.send_lock:
            if self.closed or not self.ws.connected:
                return False
            try:
                self.ws.sock.sendall(frame)
                return True
            except Exception:
                self.closed = True
                return False

    def send_event(self, event) -> bool:
        """A control frame built by the socket's wsproto connection (a ping, a pong, the
        answer to the client's close)."""
        with self.send_lock:
            if self.closed or not self.ws.connected:
                return False
            try:
                self.ws.sock.sendall(self.ws.ws.send(event))
                return True
            except Exception:
                self.closed = True
                return False

    def close(self, code: int, reason: str) -> None:
        with self.send_lock:
            if self.closed:
                return
            self.closed = True
            try:
                self.ws.close(reason=code, message=reason)
            except Exception:  # already gone
                pass

    def hang_up(self) -> None:
        """Wake the socket's reader, waiting without a timeout, with an end of stream (after a
        close frame already queued: a shutdown sends what was written first)."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed already
            pass
