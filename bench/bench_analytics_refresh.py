"""Refresh job time for one listener with 100,000 sessions (aim: under 200 ms).

    .venv/bin/python bench/bench_analytics_refresh.py [--sessions 100000] [--runs 30]

Builds the bench database (BENCH_DATABASE_URL, default ``bench_analytics``) from scratch:
the listener's sessions over ~4 years plus 1,000 other listeners with 100 sessions each.
Times ``refresh_user_analytics`` (the job's body: compute in SQL, store, cache, publish).
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_analytics_common import (
    ensure_database,
    make_bench_app,
    percentile,
    reset_schema,
    seed,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    started = time.perf_counter()
    target = seed(app, target_sessions=args.sessions, other_users=args.others,
                  sessions_per_other=100)
    print(f"seeded {args.sessions} sessions for the listener and {args.others * 100} for "
          f"{args.others} others in {time.perf_counter() - started:.1f}s")

    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services.analytics import compute_user_analytics, refresh_user_analytics

    with app.app_context():
        for _ in range(3):
            refresh_user_analytics(target)
        job, compute = [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            data = refresh_user_analytics(target)
            job.append((time.perf_counter() - t0) * 1000)
            db.session.remove()
            user = db.session.get(User, target)
            t0 = time.perf_counter()
            compute_user_analytics(user)
            compute.append((time.perf_counter() - t0) * 1000)
            db.session.remove()
    assert data["total_sessions"] == args.sessions
    for name, values in (("refresh job (compute+store+cache+publish)", job),
                         ("compute only (4 SQL queries)", compute)):
        print(f"{name}: median {statistics.median(values):.1f} ms, "
              f"p95 {percentile(values, 95):.1f} ms, min {min(values):.1f} ms, "
              f"max {max(values):.1f} ms over {len(values)} runs")


if __name__ == "__main__":
    main()
