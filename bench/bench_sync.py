"""Offline sync: time per batch and SQL statements per batch, on PostgreSQL.

    .venv/bin/python bench/bench_sync.py [--batches 10] [--items 100]
        [--database postgresql://postgres@127.0.0.1:5432/bench_offline]
        [--redis redis://127.0.0.1:6379/2]

What it does: creates the bench database if missing and migrates it from scratch, seeds a
package and a pro user (their subscription history moved 30 days back, so every upload is
judged as pro), then posts ``POST /api/user/sessions/sync`` through the app in this process
(Flask's test client: parsing, validation, the service, the envelope; no network) with fresh,
non-overlapping items, and reports:

  A. the time per batch of ``--items`` new sessions (p50 / max over ``--batches``);
  B. the same batches posted again (every item ``unchanged``);
  C. the SQL statements of one batch of 10 and one of 100 new items (bounded: the same).

With ``--redis`` the analytics refresh is enqueued (as in production); without it the
refresh runs inline, inside the measured request.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sessions import make_bench_app, reset_database  # noqa: E402

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/bench_offline"


def _items(package_id: int, start, count: int) -> list[dict]:
    out = []
    for index in range(count):
        started = start + timedelta(minutes=3 * index)
        out.append({"client_id": str(uuid.uuid4()), "package_id": package_id,
                    "started_at": started.isoformat(),
                    "ended_at": (started + timedelta(minutes=2)).isoformat(),
                    "listened_seconds": 120, "completed": False, "position_seconds": 90,
                    "mood_before": 4, "mood_after": 6})
    return out


def _seed(app, client, headers) -> int:
    from sqlalchemy import update

    from sonicus import clock
    from sonicus.extensions import db
    from sonicus.models import SoundPackage, SubscriptionEvent, Track, UserSubscription

    assert client.get("/api/user/profile", headers=headers).status_code == 200  # signs up
    with app.app_context():
        db.session.execute(update(UserSubscription).values(tier="pro"))
        package = SoundPackage(slug="bench-offline", title="Bench", category="sleep",
                               minimum_tier="public", published=True, duration_seconds=1800,
                               track_count=1, created_at=clock.now() - timedelta(days=30))
        package.tracks.append(Track(position=0, title="One", duration_seconds=1800,
                                    media_path="sleep/bench/01.mp3"))
        db.session.add(package)
        db.session.commit()
        package_id = package.id
        db.session.execute(update(SubscriptionEvent).values(
            at=clock.now() - timedelta(days=30)))
        db.session.commit()
        db.session.remove()
    return package_id


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--database", default=DEFAULT_DB)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--profile", action="store_true",
                        help="print where the time of the new batches goes (cProfile)")
    args = parser.parse_args(argv)
    if args.redis:
        os.environ["REDIS_URL"] = args.redis
    app = make_bench_app(args.database)
    if args.redis:
        app.config["REDIS_URL"] = args.redis
    reset_database(app, args.database)
    from sonicus.devtokens import mint

    with app.app_context():
        token = mint(app, email="bench-offline@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    client = app.test_client()
    package_id = _seed(app, client, headers)

    from sqlalchemy import event

    from sonicus import clock
    from sonicus.extensions import db

    with app.app_context():
        engine = db.engine
    statements: list[str] = []
    timings: dict[str, float] = {}
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: (
                     statements.append(statement),
                     conn.info.__setitem__("began", time.perf_counter())))
    event.listen(engine, "after_cursor_execute",
                 lambda conn, cursor, statement, *rest: timings.__setitem__(
                     statement[:70], timings.get(statement[:70], 0.0)
                     + time.perf_counter() - conn.info["began"]))

    cpu = []

    def post(items) -> tuple[float, list[str], int]:
        statements.clear()
        began, began_cpu = time.perf_counter(), time.process_time()
        res = client.post("/api/user/sessions/sync", json={"sessions": items}, headers=headers)
        took = time.perf_counter() - began
        cpu.append(time.process_time() - began_cpu)
        assert res.status_code == 200, res.get_json()
        return took, [r["status"] for r in res.get_json()["data"]["results"]], len(statements)

    client.get("/api/user/profile", headers=headers)  # the caller is known (pro now)
    now = clock.now()
    batches = []
    for index in range(args.batches):  # 5 hours of listening per batch, going back in time
        batches.append(_items(package_id, now - timedelta(hours=6 * (index + 2)), args.items))
    timings.clear()
    firsts, agains, counts = [], [], []
    profiler = cProfile.Profile() if args.profile else None
    for items in batches:
        if profiler is not None:
            profiler.enable()
        took, statuses, count = post(items)
        if profiler is not None:
            profiler.disable()
        assert statuses == ["created"] * len(items), statuses
        firsts.append(took)
        counts.append(count)
    for items in batches:
        took, statuses, _count = post(items)
        assert statuses == ["unchanged"] * len(items), statuses
        agains.append(took)
    new_cpu = cpu[:args.batches]
    batch_timings = dict(timings)
    small = _items(package_id, now - timedelta(hours=6 * (args.batches + 3)), 10)
    _took, _statuses, small_count = post(small)

    # The same number of sessions online, one request each (start, then complete), in the
    # same run: the ratio says what a batch saves whatever the machine's load.
    online = []
    for _ in range(min(args.items, 100)):
        began = time.perf_counter()
        res = client.post("/api/user/sessions", json={"package_id": package_id},
                          headers=headers)
        assert res.status_code == 201, res.get_json()
        done = client.post(f"/api/user/sessions/{res.get_json()['data']['id']}/complete",
                           json={"listened_seconds": 0, "completed": False}, headers=headers)
        assert done.status_code == 200, done.get_json()
        online.append(time.perf_counter() - began)

    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
        print("SQL time of the new batches, by statement:")
        for statement, spent in sorted(batch_timings.items(), key=lambda kv: -kv[1])[:12]:
            print(f"{spent * 1000:8.1f} ms  {statement!r}")

    def ms(values, f):
        return f"{f(values) * 1000:.1f} ms"

    print(f"A. {args.batches} batches of {args.items} new items: "
          f"p50 {ms(firsts, statistics.median)}, max {ms(firsts, max)} per batch "
          f"({statistics.median(firsts) / args.items * 1000:.2f} ms per item); "
          f"CPU of this process p50 {ms(new_cpu, statistics.median)}")
    print(f"B. the same batches again (all unchanged): p50 {ms(agains, statistics.median)}, "
          f"max {ms(agains, max)}")
    print(f"C. SQL statements per batch: {small_count} for 10 new items, "
          f"{statistics.median(counts):.0f} for {args.items} (min {min(counts)}, "
          f"max {max(counts)})")
    print(f"D. the same {len(online)} sessions online (a start and a completion each): "
          f"{sum(online) * 1000:.0f} ms in all; one batch takes "
          f"{statistics.median(firsts) / sum(online) * 100:.0f}% of that")


if __name__ == "__main__":
    main()
