"""Year recap time for one listener with 100,000 sessions in that year (aim: under 300 ms).

    .venv/bin/python bench/bench_recap.py [--sessions 100000] [--others 200] [--runs 15]
                                          [--reuse]

Builds its bench database (BENCH_DATABASE_URL, default ``bench_recap``) from scratch: the
listener (Europe/Berlin, day starting at 03:00) with ``--sessions`` sessions spread over last
year, a few hundred in the year before (the previous period and the streak history), plus
``--others`` listeners with 100 sessions each. Times ``compute_recap(..., use_cache=False)``
(every figure computed in SQL, the cache bypassed: the user, the grouped scan of the year and
the year before, the day islands), the cached answer, and in the same run one plain scan of
the same rows summing one column: the floor any SQL computation of these figures pays.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench_recap")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")

from bench_analytics_common import (  # noqa: E402
    ensure_database,
    make_bench_app,
    percentile,
    reset_schema,
)


def seed(app, *, sessions: int, others: int, year: int, seed_value: int = 11) -> int:
    from sqlalchemy import insert, text

    from sonicus.extensions import db
    from sonicus.models import ListeningSession, SoundPackage, User

    rng = random.Random(seed_value)
    with app.app_context():
        db.session.execute(insert(SoundPackage), [
            {"slug": f"package-{i}", "title": f"Package {i}", "description": "",
             "category": f"category-{i % 8}", "minimum_tier": "public", "published": True,
             "duration_seconds": 1200, "track_count": 1, "popularity": 0}
            for i in range(40)])
        db.session.execute(insert(User), [
            {"oidc_sub": f"dev|recap-{i}@example.com", "email": f"recap-{i}@example.com",
             "email_verified": True, "timezone": "Europe/Berlin", "day_start_hour": 3,
             "preferences": {}, "role": "user", "is_active": True}
            for i in range(others + 1)])
        db.session.commit()
        package_ids = list(db.session.execute(
            text("SELECT id FROM sonicus.sound_packages")).scalars())
        user_ids = list(db.session.execute(
            text("SELECT id FROM sonicus.users ORDER BY id")).scalars())
        target = user_ids[0]
        first = date(year, 1, 1)
        skipped = {rng.randrange(365) for _ in range(40)}  # missed days: streaks, freezes
        listened_days = [n for n in range(365) if n not in skipped]

        def rows(user_id, count, start, days):
            for _ in range(count):
                offset = (rng.choice(listened_days) if user_id == target and start == first
                          else rng.randrange(days))
                day = start + timedelta(days=offset)
                started = datetime(day.year, day.month, day.day, rng.randrange(24),
                                   rng.randrange(60), tzinfo=UTC)
                listened = rng.randrange(30, 3600)
                with_mood = rng.random() < 0.6
                yield {"user_id": user_id, "package_id": rng.choice(package_ids),
                       "tier": "pro", "status": "ended", "started_at": started,
                       "local_day": day, "ended_at": started + timedelta(seconds=listened),
                       "listened_seconds": listened, "completed": rng.random() < 0.8,
                       "counts_toward_quota": rng.random() < 0.98,
                       "mood_before": rng.randint(1, 10) if with_mood else None,
                       "mood_after": rng.randint(1, 10) if with_mood else None}

        plan = [(target, sessions, first, 365), (target, 500, date(year - 1, 1, 1), 365)] + [
            (uid, 100, date(year - 1, 1, 1), 730) for uid in user_ids[1:]]
        batch = []
        for user_id, count, start, days in plan:
            for row in rows(user_id, count, start, days):
                batch.append(row)
                if len(batch) >= 5000:
                    db.session.execute(insert(ListeningSession), batch)
                    db.session.commit()
                    batch = []
        if batch:
            db.session.execute(insert(ListeningSession), batch)
            db.session.commit()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--others", type=int, default=200)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--reuse", action="store_true",
                        help="keep the bench database of an earlier run (no seeding)")
    args = parser.parse_args()

    year = date.today().year - 1
    ensure_database(os.environ["BENCH_DATABASE_URL"])
    app = make_bench_app()
    if args.reuse:
        target = 1
    else:
        reset_schema(app)
        started = time.perf_counter()
        target = seed(app, sessions=args.sessions, others=args.others, year=year)
        print(f"seeded {args.sessions} sessions in {year} for the listener and "
              f"{args.others * 100} for {args.others} others in "
              f"{time.perf_counter() - started:.1f}s")

    from sqlalchemy import text

    from sonicus.extensions import db
    from sonicus.services.recaps import compute_recap

    on = date(year, 6, 1)
    with app.app_context():
        for _ in range(2):
            compute_recap(target, "year", on, use_cache=False)
            db.session.remove()
        uncached, cached, scan = [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            recap = compute_recap(target, "year", on, use_cache=False)
            uncached.append((time.perf_counter() - t0) * 1000)
            db.session.remove()
            # the floor: one plain scan of the same rows, summing one column
            t0 = time.perf_counter()
            db.session.execute(text(
                "SELECT count(*), sum(listened_seconds) FROM sonicus.user_sessions "
                "WHERE user_id = :u AND local_day BETWEEN :a AND :b"),
                {"u": target, "a": date(year - 1, 1, 1), "b": date(year, 12, 31)}).one()
            scan.append((time.perf_counter() - t0) * 1000)
            db.session.remove()
        compute_recap(target, "year", on)
        for _ in range(args.runs):
            t0 = time.perf_counter()
            compute_recap(target, "year", on)
            cached.append((time.perf_counter() - t0) * 1000)
            db.session.remove()
    assert recap["sessions"] == args.sessions, recap["sessions"]
    print(f"year {year}: {recap['sessions']} sessions, {recap['minutes']} minutes, "
          f"{recap['active_days']} active days, longest streak {recap['longest_streak']}")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name, values in (("year recap, uncached (3 SQL statements)", uncached),
                         ("one plain scan of the same rows (the floor)", scan),
                         ("year recap, cached", cached)):
        print(f"{name}: median {statistics.median(values):.1f} ms, "
              f"p95 {percentile(values, 95):.1f} ms, min {min(values):.1f} ms, "
              f"max {max(values):.1f} ms over {len(values)} runs")


if __name__ == "__main__":
    main()
