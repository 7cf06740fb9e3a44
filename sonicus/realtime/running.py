"""The subscribers (brokers) running in this process, stopped at interpreter exit so that
none retries (and logs) while logging is being shut down, or at a test run's end."""

from __future__ import annotations

import atexit
import threading
import weakref

# Subscribers running in this process, stopped at interpreter exit so that none retries (and
# logs) while logging is being shut down.
_RUNNING: weakref.WeakSet = weakref.WeakSet()
_exit_hook = threading.Lock()
_exit_hook_registered = False


def stop_running_brokers(wait: float = 0.0) -> None:
    """Stop every subscriber of this process (at interpreter exit, or a test run's end), each
    given up to ``wait`` seconds to finish."""
    brokers = list(_RUNNING)
    for broker in brokers:
        broker.stop()
    for broker in brokers:
        listener = broker._listener
        if wait > 0 and listener is not None and listener.is_alive():
            listener.join(wait)


def running(broker) -> None:
    """``broker``'s subscriber runs in this process: stopped at its exit."""
    global _exit_hook_registered
    _RUNNING.add(broker)
    with _exit_hook:
        if not _exit_hook_registered:
            atexit.register(stop_running_brokers)
            _exit_hook_registered = True
