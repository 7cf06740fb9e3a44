"""The socket process's event loop (gevent), as realtime code meets it: whether this process
runs under it, how long work gives it a turn, and which greenlets it wakes first. Under
threads and the development server every function here does nothing.
"""

from __future__ import annotations

import sys


def under_gevent() -> bool:
    """True in a process whose sockets gevent patched (the socket process type)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def yield_to_loop() -> None:
    """Under gevent, wait until the event loop has polled its sockets and run every greenlet
    they woke at the default priority (``gevent.idle``: HTTP requests, handshakes; the
    sockets' readers come after, ``read_after_the_rest``); ``gevent.sleep(0)`` would only let
    greenlets that are ready already run, and the loop polls sockets only once its run of
    those is over (up to the switch interval, 5 ms, on every yield). Elsewhere (threads, the
    dev server) nothing."""
    if not under_gevent():
        return
    gevent = sys.modules["gevent"]
    if gevent.getcurrent() is not gevent.get_hub():
        gevent.idle()


# libev's priority for the watchers of the sockets' readers, below the default (0) of
# everything else: HTTP requests, handshakes, Redis, and the idle turns delivery waits for.
READER_PRIORITY = -1


def read_after_the_rest(sock) -> None:
    """Under gevent, have the event loop wake this socket's reader after whatever else is ready
    in the same turn (an HTTP request, a fan-out's next slice), never before. libev runs an
    idle watcher only in a turn with nothing of its priority or above ready: with the readers
    at the default priority, a fan-out waited in ``yield_to_loop`` for as long as some socket
    had something to read in every turn (peers that keep pinging, the pongs of a keep-alive
    pass: in a test, 1 write of 300 in 5 s while four peers pinged). Readers still run in
    every turn they are ready, after the rest. Elsewhere (threads, the dev server)
    nothing."""
    event = getattr(sock, "_read_event", None)  # gevent's socket: the watcher recv waits on
    if event is None or not under_gevent():
        return
    try:
        event.priority = READER_PRIORITY
    except AttributeError:  # a watcher that is active cannot change priority
        pass
