"""Completion-to-socket latency with one worker (aim: p95 under 300 ms).

    .venv/bin/python bench/bench_analytics_latency.py [--sessions 1000] [--samples 100]

One gunicorn web process (gthread) holds the listener's socket; one ``worker.py`` (the
production forking worker with its scheduler) runs the jobs. Each sample completes a
session the way the sessions service does (ends it, ``mark_stale`` in the same transaction,
commit, ``request_refresh``) and measures from just before that commit until the socket
has received the ``analytics.updated`` that includes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime

import websocket
from bench_analytics_common import (
    ensure_database,
    make_bench_app,
    percentile,
    reset_schema,
    seed,
    start_gunicorn,
    start_worker,
    stop_process,
    wait_http,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000,
                        help="the listener's history before the run")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--simple-worker", action="store_true",
                        help="run the worker with --simple (no fork per job)")
    args = parser.parse_args()

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    target = seed(app, target_sessions=args.sessions, other_users=100, sessions_per_other=100)

    from sonicus import clock, devtokens
    from sonicus.extensions import db
    from sonicus.models import ListeningSession, User
    from sonicus.services.analytics import mark_stale, request_refresh

    web, port = start_gunicorn()
    worker = start_worker(*(["--simple"] if args.simple_worker else []))
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        with app.app_context():
            email = db.session.get(User, target).email
            package_id = db.session.query(ListeningSession.package_id).filter_by(
                user_id=target).first()[0]
        token = devtokens.mint(app, email=email)
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/analytics",
                                         subprotocols=["bearer", token], timeout=10)
        snapshot = json.loads(ws.recv())
        assert snapshot["type"] == "analytics.snapshot"
        expected = snapshot["data"]["total_sessions"]
        time.sleep(2)  # the worker is up and listening
        latencies = []
        for _ in range(args.samples):
            with app.app_context():
                now = clock.now()
                row = ListeningSession(
                    user_id=target, package_id=package_id, tier="pro", status="open",
                    started_at=now, local_day=clock.local_day(now, "Europe/Berlin", 3))
                db.session.add(row)
                db.session.commit()
                expected += 1
                row.status, row.completed, row.listened_seconds = "ended", True, 300
                row.ended_at = datetime.now(UTC)
                mark_stale(target)
                t0 = time.perf_counter()
                db.session.commit()
                request_refresh(target)
            while True:
                message = json.loads(ws.recv())
                if (message["type"] == "analytics.updated"
                        and message["data"]["total_sessions"] >= expected):
                    break
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
        ws.close()
    finally:
        stop_process(worker)
        stop_process(web)
    print(f"history {args.sessions} sessions, {len(latencies)} completions, one "
          f"{'simple' if args.simple_worker else 'forking'} worker: "
          f"p50 {statistics.median(latencies):.0f} ms, p95 {percentile(latencies, 95):.0f} ms, "
          f"max {max(latencies):.0f} ms")


if __name__ == "__main__":
    main()
