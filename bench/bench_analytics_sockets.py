"""Open analytics sockets held by ONE web process, and its memory (aim: 1,000 sockets).

    .venv/bin/python bench/bench_analytics_sockets.py [--sockets 1000] [--threads 1100]

Starts one gunicorn web process, ``-k gthread --threads N --worker-connections M`` (each
open socket holds one gthread thread, which also reads the socket), opens
``--sockets`` sockets for as many distinct listeners (each gets its snapshot), then sends
every listener one update through Redis pub/sub (``publish_to_user``, as a refresh job
does) and checks that each socket receives its own. Reports the web process's resident
memory and thread count before and after.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import websocket
from bench_analytics_common import (
    ensure_database,
    make_bench_app,
    reset_schema,
    start_gunicorn,
    stop_process,
    wait_http,
)


def process_figures(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"])


def web_worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1100)
    args = parser.parse_args()

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    from sonicus import devtokens
    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.realtime.publish import publish_to_user

    web, port = start_gunicorn(threads=args.threads, connections=args.sockets + 100)
    sockets = []
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        pid = web_worker_pid(web.pid)
        rss_idle, threads_idle = process_figures(pid)
        tokens = [devtokens.mint(app, email=f"socket-{i}@example.com")
                  for i in range(args.sockets)]
        started = time.perf_counter()
        for token in tokens:
            ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/analytics",
                                             subprotocols=["bearer", token], timeout=30)
            assert json.loads(ws.recv())["type"] == "analytics.snapshot"
            sockets.append(ws)
        opened_in = time.perf_counter() - started
        time.sleep(2)
        rss_open, threads_open = process_figures(pid)

        with app.app_context():
            ids = {u.email: u.id for u in db.session.query(User).all()}
            started = time.perf_counter()
            for i in range(args.sockets):
                uid = ids[f"socket-{i}@example.com"]
                publish_to_user(uid, {"type": "analytics.updated", "data": {"user_id": uid}})
        delivered = 0
        for i, ws in enumerate(sockets):
            message = json.loads(ws.recv())
            if message["data"]["user_id"] == ids[f"socket-{i}@example.com"]:
                delivered += 1
        fan_out = time.perf_counter() - started
        health = time.perf_counter()
        wait_http(f"http://127.0.0.1:{port}/api/health")
        health = (time.perf_counter() - health) * 1000
    finally:
        for ws in sockets:
            try:
                ws.close()
            except Exception:
                pass
        time.sleep(2)
        try:
            rss_closed, threads_closed = process_figures(web_worker_pid(web.pid))
        except Exception:
            rss_closed, threads_closed = float("nan"), -1
        stop_process(web)

    print(f"one gunicorn gthread process, --threads {args.threads}:")
    print(f"  idle: RSS {rss_idle:.0f} MiB, {threads_idle} threads")
    print(f"  {len(sockets)} open sockets (opened in {opened_in:.1f}s, each got its snapshot): "
          f"RSS {rss_open:.0f} MiB, {threads_open} threads "
          f"(~{(rss_open - rss_idle) * 1024 / max(1, len(sockets)):.0f} KiB per socket)")
    print(f"  one update per listener through Redis: {delivered}/{len(sockets)} delivered to "
          f"the right socket in {fan_out * 1000:.0f} ms; /api/health meanwhile {health:.0f} ms")
    print(f"  after closing all: RSS {rss_closed:.0f} MiB, {threads_closed} threads")


if __name__ == "__main__":
    main()
