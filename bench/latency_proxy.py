"""A TCP proxy that adds a fixed one-way delay each way: what a database on another machine
costs in round trips, on one machine without ``tc netem``.

    .venv/bin/python -m bench.latency_proxy --listen 15432 --target 127.0.0.1:5432 --delay-ms 0.25

Each chunk read is written to the other side ``--delay-ms`` after it arrived, in order (a
link with latency, not a bandwidth limit). Threads with ``time.sleep``, not asyncio, whose
timers wait in whole milliseconds; with 0.25 ms each way a ``SELECT 1`` round trip measured
0.82 ms here (thread wake-ups add to the delay). Point a benchmark's database at it, e.g.
``bench_idempotency --database postgresql://postgres@127.0.0.1:15432/bench_idem_far``.
"""

from __future__ import annotations

import argparse
import collections
import socket
import threading
import time


def _pump(source: socket.socket, target: socket.socket, delay: float) -> None:
    queue: collections.deque = collections.deque()
    ready = threading.Condition()

    def deliver() -> None:
        while True:
            with ready:
                while not queue:
                    ready.wait()
                due, data = queue.popleft()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                target.sendall(data)
            except OSError:
                break
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    while True:
        try:
            data = source.recv(65536)
        except OSError:
            data = b""
        with ready:
            queue.append((time.monotonic() + delay, data or None))
            ready.notify()
        if not data:
            break
    sender.join()


def serve(listen: int, target: tuple[str, int], delay: float) -> None:
    server = socket.create_server(("127.0.0.1", listen))
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(target)
        except OSError:
            client.close()
            continue
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump, args=(client, upstream, delay), daemon=True).start()
        threading.Thread(target=_pump, args=(upstream, client, delay), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--target", default="127.0.0.1:5432")
    parser.add_argument("--delay-ms", type=float, default=0.25)
    args = parser.parse_args()
    host, port = args.target.rsplit(":", 1)
    serve(args.listen, (host, int(port)), args.delay_ms / 1000)


if __name__ == "__main__":
    main()
