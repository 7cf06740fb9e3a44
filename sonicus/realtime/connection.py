"""One open socket of one user (``Connection``): its send lock, its keep-alive state, and the
frames written to it (``text_frame``: one per message, for all of a user's sockets).

Every write to a socket is bounded (``write_within``): a peer that takes nothing for
``SEND_WAIT_SECONDS`` (it stopped reading, its buffers are full) is hung up. Writes happen on
the process's subscriber (a fan-out), its keep-alive sweep and its shutdown: a write waiting
without end on one such peer held up every other socket's updates until the keep-alive gave
up on it (two ping intervals, 50 s).
"""

from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time

from wsproto.events import CloseConnection

SEND_WAIT_SECONDS = 1.0  # longest wait for a peer to take one write; then it is hung up


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


def write_within(sock, data: bytes, seconds: float = SEND_WAIT_SECONDS) -> None:
    """Write all of ``data`` to ``sock`` within ``seconds``, else raise ``TimeoutError`` (with
    part of it maybe written: the socket must be hung up). The socket's own timeout stays as
    it is (its reader waits without one)."""
    view = memoryview(data)
    if type(sock).__module__.startswith("gevent."):  # waits through gevent's event loop
        try:  # what the kernel takes at once (all of it, but for a peer behind) needs no timer
            view = view[sock.send(view, 0, timeout=0.0):]
        except BlockingIOError:
            pass
        if view:
            with sys.modules["gevent"].Timeout(seconds, TimeoutError):
                sock.sendall(view)
        return
    deadline = time.monotonic() + seconds
    poller = None
    while view:
        try:
            view = view[sock.send(view, socket.MSG_DONTWAIT):]
            continue
        except BlockingIOError:
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the peer takes nothing")
        if poller is None:
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
        poller.poll(left * 1000)


def send_now(sock, view) -> int:
    """Write to ``sock`` what its kernel buffer takes at once, without waiting: how many bytes
    (0 when it takes nothing now)."""
    try:
        if type(sock).__module__.startswith("gevent."):
            return sock.send(view, 0, timeout=0.0)
        return sock.send(view, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0


def finish_writes(pending: list[tuple[object, memoryview]], seconds: float) -> list:
    """Write what is left to each of several sockets (``(sock, rest)``) at once, all within
    ``seconds`` in total (never one after the other); the sockets that did not take all of
    theirs (the peer reads nothing, or is gone)."""
    if not pending:
        return []
    deadline = time.monotonic() + seconds
    if type(pending[0][0]).__module__.startswith("gevent."):
        gevent = sys.modules["gevent"]
        writes = [(sock, gevent.spawn(write_within, sock, rest, seconds))
                  for sock, rest in pending]
        gevent.joinall([write for _sock, write in writes],
                       timeout=max(0.0, deadline - time.monotonic()) + 0.1)
        failed = []
        for sock, write in writes:
            if not write.successful():
                write.kill(block=False)
                failed.append(sock)
        return failed
    rests = {sock.fileno(): (sock, rest) for sock, rest in pending}
    failed = [sock for fd, (sock, _rest) in rests.items() if fd < 0]
    rests = {fd: entry for fd, entry in rests.items() if fd >= 0}
    while rests:
        poller = select.poll()
        for fd in rests:
            poller.register(fd, select.POLLOUT)
        left = deadline - time.monotonic()
        ready = poller.poll(max(0.0, left) * 1000) if left > 0 else []
        for fd, _events in ready:
            sock, rest = rests[fd]
            try:
                rest = rest[send_now(sock, rest):]
            except OSError:
                failed.append(sock)
                del rests[fd]
                continue
            if rest:
                rests[fd] = (sock, rest)
            else:
                del rests[fd]
        if left <= 0:
            failed.extend(sock for sock, _rest in rests.values())
            break
    return failed


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
        self.token_until: float | None = None  # Unix time its token runs out (then 4401)
        self.ended = False  # its handler is done with it
        self.opened = time.monotonic()  # the older of a user's sockets are kept past the cap

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
                write_within(self.ws.sock, frame)
                return True
            except Exception:
                self._lost()
                return False

    def send_event(self, event) -> bool:
        """A control frame built by the socket's wsproto connection (a ping, a pong, the
        answer to the client's close)."""
        with self.send_lock:
            if self.closed or not self.ws.connected:
                return False
            try:
                write_within(self.ws.sock, self.ws.ws.send(event))
                return True
            except Exception:
                self._lost()
                return False

    def _lost(self) -> None:
        """A write failed or timed out (a frame may be cut short): the socket is over, and
        its reader is woken to end it."""
        self.closed = True
        self.hang_up()

    def close(self, code: int, reason: str) -> None:
        """Send the close frame (``code``, ``reason``); the socket's reader reads the peer's
        answer. A peer that takes nothing is hung up."""
        with self.send_lock:
            if self.closed:
                return
            self.closed = True
            try:
                if not self.ws.connected:
                    return
                self.ws.connected = False
                write_within(self.ws.sock, self.ws.ws.send(CloseConnection(code, reason)))
            except Exception:  # already gone, or takes nothing
                self.hang_up()

    def close_without_waiting(self, code: int, reason: str, until: float) -> memoryview | None:
        """``close``, but writing only what the kernel takes at once: what is left of the close
        frame (empty: all sent), for the caller to finish with others' (``finish_writes``)
        or hang up; None when there is nothing to finish. A write under way holds the send
        lock: it is waited for until ``until`` (``time.monotonic()``) at most, then the socket
        is hung up (a shutdown's closes never wait on one socket after another)."""
        if not self.send_lock.acquire(timeout=max(0.0, until - time.monotonic())):
            self.closed = True
            self.hang_up()
            return None
        try:
            if self.closed:
                return None
            self.closed = True
            if not self.ws.connected:
                return None
            self.ws.connected = False
            frame = memoryview(self.ws.ws.send(CloseConnection(code, reason)))
            return frame[send_now(self.ws.sock, frame):]
        except Exception:  # already gone
            self.hang_up()
            return None
        finally:
            self.send_lock.release()

    def hang_up(self) -> None:
        """Wake the socket's reader, waiting without a timeout, with an end of stream (after a
        close frame already queued: a shutdown sends what was written first)."""
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed already
            pass
