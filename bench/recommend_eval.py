"""Recommendations: offline quality on a synthetic population, and the job's and GET's speed.

    .venv/bin/python bench/recommend_eval.py           # quality: 5,000 users, 300,000 sessions
    .venv/bin/python bench/recommend_eval.py --scale   # speed: 100,000 users, 1,000,000 sessions

Builds the bench database (BENCH_DATABASE_URL, default ``bench_recs``) from scratch with COPY.

The synthetic world: 200 packages in six categories, six goals. A package's true lift for a
listener is its base effect, plus a package-specific effect for each goal (large and varied for
the goal its category serves: some packages truly help that goal group, some do not), plus an
effect per starting-mood band, plus the listener's own taste. What a listener reports is that
lift plus their own rating bias (N(0, 1.2) per user) plus noise (N(0, 1.5) per session),
rounded and clipped to 1..10. Listeners pick a package by popularity (35%; independent of what
helps), from their goal's category by popularity (35%), or out of habit (30%: one they played
before, the more likely the better it felt, ``exp(mean felt lift)``; what they felt is the true
lift plus noise, without the rating bias). 12% of sessions are under a minute (half of them
claiming a jump to mood 10) and 3% are refunded taps: none of these count. A "trap" package,
truly -1 for everyone, gets one 10-second "+8" session (1 -> 9) from a fifth of the users.

Holdout: each user with at least six counting sessions (with moods) loses their latest three to
the holdout; the model is trained (the platform job, on PostgreSQL) on the rest. Relevance: a
held-out package is relevant when its true lift for the user's group (their goal and starting-
mood band, without their own taste, bias or noise) is above 0. NDCG@5 and hit rate@5 are over
the top five of each ranking, against those relevant held-out packages (users with none are
skipped). "Catalog NDCG@5" grades every package by max(0, true group lift) instead: how much
good the top five would do, whatever the user played next.

Rankings: the new recommender through the service code the GET uses
(``services.recommendations.rank_packages``), the old dashboard ordering (own average mood
change > 0 first, then favourite categories, then popularity; worse last) and plain popularity.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

os.environ.setdefault("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench_recs")
os.environ.setdefault("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")

GOALS = ("sleep", "focus", "relaxation", "stress", "anxiety", "energy")
BANDS = (("low", 3.0, 0.30), ("mid", 5.5, 0.45), ("high", 8.0, 0.25))
HOLDOUT = 3
TOP = 5
EPOCH = datetime(2026, 5, 1, tzinfo=UTC)


class World:
    """The synthetic truth: effects per package, goal and band; users; their sessions."""

    def __init__(self, users: int, packages: int, sessions: int, seed: int = 11):
        rng = self.rng = random.Random(seed)
        self.n_packages = packages
        self.trap = packages - 1  # index of the trap package
        self.category = [GOALS[p % len(GOALS)] for p in range(packages)]
        base = [rng.gauss(0.1, 0.4) for _ in range(packages)]
        match = [rng.gauss(1.0, 1.2) for _ in range(packages)]
        self.effect = [{g: base[p] + (match[p] if self.category[p] == g else 0.0)
                        + rng.gauss(0, 0.5) for g in GOALS} for p in range(packages)]
        self.band_effect = [{b: rng.gauss(0, 0.4) for b, _m, _w in BANDS}
                            for _ in range(packages)]
        for g in GOALS:
            self.effect[self.trap][g] = -1.0
        for b, _m, _w in BANDS:
            self.band_effect[self.trap][b] = 0.0
        order = list(range(packages))
        rng.shuffle(order)
        self.weight = [0.0] * packages
        for rank, p in enumerate(order):
            self.weight[p] = 1.0 / (rank + 5) ** 0.9
        self.weight[self.trap] = 0.0
        self.by_category = {g: [p for p in range(packages) if self.category[p] == g
                                and p != self.trap] for g in GOALS}
        self.users = []
        for _u in range(users):
            goal = rng.choice(GOALS)
            band, mood, _w = rng.choices(BANDS, weights=[w for *_x, w in BANDS])[0]
            self.users.append({"goal": goal, "band": band, "mood": mood,
                               "bias": rng.gauss(0, 1.2),
                               "goals": [goal] if rng.random() < 0.9 else [],
                               "favorites": [goal] if rng.random() < 0.5 else []})
        self.taste: dict[tuple[int, int], float] = {}
        self.sessions_target = sessions

    def group_lift(self, u: int, p: int) -> float:
        user = self.users[u]
        return self.effect[p][user["goal"]] + self.band_effect[p][user["band"]]

    def true_lift(self, u: int, p: int) -> float:
        key = (u, p)
        if key not in self.taste:
            self.taste[key] = self.rng.gauss(0, 0.5)
        return self.group_lift(u, p) + self.taste[key]

    def sessions(self):
        """Every session, per user in time order: dicts with the columns to store."""
        rng = self.rng
        n_users = len(self.users)
        raw = [rng.lognormvariate(0, 0.8) for _ in range(n_users)]
        scale = self.sessions_target / sum(raw)
        all_ids = list(range(self.n_packages))
        for u, user in enumerate(self.users):
            n = max(2, round(raw[u] * scale))
            felt: dict[int, list[float]] = {}
            moment = EPOCH + timedelta(hours=rng.randrange(24 * 30))
            step = timedelta(hours=max(1.0, 24 * 150 / n))
            if rng.random() < 0.2:  # the trap: one 10-second session claiming +8
                yield self._row(u, self.trap, moment - timedelta(days=1), 10, True, 1, 9)
            for _ in range(n):
                r = rng.random()
                if r < 0.35:
                    p = rng.choices(all_ids, weights=self.weight)[0]
                elif r < 0.7 or not felt:
                    pool = self.by_category[user["goal"]]
                    p = rng.choices(pool, weights=[self.weight[q] for q in pool])[0]
                else:
                    known = sorted(felt)
                    p = rng.choices(known, weights=[
                        math.exp(min(5.0, sum(felt[q]) / len(felt[q]))) for q in known])[0]
                moment += step * rng.uniform(0.5, 1.5)
                kind = rng.random()
                before = min(10, max(1, round(user["mood"] + rng.gauss(0, 1.2))))
                if kind < 0.12:  # under a minute: counts for nothing
                    after = 10 if rng.random() < 0.5 else before
                    yield self._row(u, p, moment, rng.randrange(5, 56), True, before, after)
                    continue
                if kind < 0.15:  # a refunded tap
                    yield self._row(u, p, moment, rng.randrange(1, 30), False, before,
                                    min(10, before + 3))
                    continue
                if rng.random() < 0.15:  # no mood given
                    yield self._row(u, p, moment, rng.randrange(300, 1800), True, None, None)
                    continue
                feeling = self.true_lift(u, p) + rng.gauss(0, 1.5)
                felt.setdefault(p, []).append(feeling)
                lift = feeling + user["bias"]
                after = min(10, max(1, round(before + lift)))
                yield self._row(u, p, moment, rng.randrange(300, 1800), True, before, after)

    @staticmethod
    def _row(u, p, started, listened, quota, before, after):
        return {"u": u, "p": p, "started": started, "listened": listened, "quota": quota,
                "before": before, "after": after}


def counts(row) -> bool:
    return row["quota"] and row["listened"] >= 60 and row["before"] is not None


# ---- the database ----------------------------------------------------------------------------

def make_app():
    from bench_analytics_common import bench_env, ensure_database

    ensure_database(os.environ["BENCH_DATABASE_URL"])
    os.environ.update(bench_env())
    os.environ["DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]
    os.environ["REDIS_URL"] = os.environ["BENCH_REDIS_URL"]
    from sonicus import create_app

    return create_app()


def _copy(cursor, table: str, columns: tuple[str, ...], rows) -> None:
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    buf.seek(0)
    cursor.copy_expert(f"COPY sonicus.{table} ({', '.join(columns)}) FROM STDIN", buf)


def load(app, world: World, train: list[dict]) -> tuple[list[int], list[int]]:
    """Reset the schema and COPY the packages, users and training sessions in; returns the
    package ids and user ids by index."""
    import json

    from bench_analytics_common import reset_schema
    from sqlalchemy import text

    from sonicus.extensions import db

    reset_schema(app)
    plays = defaultdict(int)
    for row in train:
        plays[row["p"]] += 1
    now = datetime.now(UTC).isoformat()
    with app.app_context():
        raw = db.engine.raw_connection()
        try:
            cur = raw.cursor()
            _copy(cur, "sound_packages",
                  ("slug", "title", "description", "category", "minimum_tier", "published",
                   "duration_seconds", "track_count", "popularity", "created_at", "updated_at"),
                  ((f"package-{p}", f"Package {p}", "", world.category[p], "public", "true",
                    1800, 1, plays[p], now, now) for p in range(world.n_packages)))
            _copy(cur, "users",
                  ("oidc_sub", "email", "email_verified", "timezone", "day_start_hour",
                   "preferences", "role", "is_active", "created_at", "updated_at"),
                  ((f"dev|u{u}@example.com", f"u{u}@example.com", "true", "UTC", 0,
                    json.dumps({"goals": user["goals"], "favorite_categories": user["favorites"]}),
                    "user", "true", now, now) for u, user in enumerate(world.users)))
            cur.execute("SELECT id FROM sonicus.sound_packages ORDER BY id")
            package_ids = [r[0] for r in cur.fetchall()]
            cur.execute("SELECT id FROM sonicus.users ORDER BY id")
            user_ids = [r[0] for r in cur.fetchall()]

            def session_rows():
                for row in train:
                    started = row["started"]
                    ended = started + timedelta(seconds=row["listened"])
                    yield (user_ids[row["u"]], package_ids[row["p"]], "starter", "ended",
                           started.isoformat(), started.date().isoformat(), ended.isoformat(),
                           row["listened"], "true" if row["listened"] >= 720 else "false",
                           "true" if row["quota"] else "false", row["before"], row["after"],
                           "completed" if row["listened"] >= 720 else "stopped")

            _copy(cur, "user_sessions",
                  ("user_id", "package_id", "tier", "status", "started_at", "local_day",
                   "ended_at", "listened_seconds", "completed", "counts_toward_quota",
                   "mood_before", "mood_after", "end_reason"), session_rows())
            raw.commit()
        finally:
            raw.close()
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return package_ids, user_ids


def run_job(app) -> tuple[float, dict]:
    from sonicus.services.recommendation_model import rebuild_recommendation_model

    with app.app_context():
        t0 = time.perf_counter()
        figures = rebuild_recommendation_model()
        return time.perf_counter() - t0, figures


# ---- the rankings ----------------------------------------------------------------------------

def old_ordering(world: World, train_by_user, popularity, u: int) -> list[int]:
    """The dashboard's previous logic: own average mood change > 0 first (largest first), then
    no mood data (favourite categories first), then by popularity; unchanged or worse last."""
    sums: dict[int, list[float]] = {}
    for row in train_by_user[u]:
        if counts(row):
            entry = sums.setdefault(row["p"], [0.0, 0])
            entry[0] += row["after"] - row["before"]
            entry[1] += 1
    favorites = set(world.users[u]["favorites"])

    def key(p):
        avg = sums[p][0] / sums[p][1] if p in sums else None
        outcome = 0 if avg is not None and avg > 0 else 1 if avg is None else 2
        return (outcome, -(avg or 0.0), 0 if world.category[p] in favorites else 1,
                -popularity[p], p)

    return sorted(range(world.n_packages), key=key)[:TOP]


def dcg(ranked, relevance) -> float:
    return sum(relevance.get(p, 0.0) / math.log2(i + 2) for i, p in enumerate(ranked[:TOP]))


def quality(args) -> None:
    world = World(args.users, args.packages, args.sessions)
    t0 = time.perf_counter()
    by_user = defaultdict(list)
    for row in world.sessions():
        by_user[row["u"]].append(row)
    train, held = [], {}
    for u, rows in by_user.items():
        counting = [i for i, row in enumerate(rows) if counts(row)]
        if len(counting) >= 2 * HOLDOUT:
            out = set(counting[-HOLDOUT:])
            held[u] = [rows[i] for i in sorted(out)]
            by_user[u] = [row for i, row in enumerate(rows) if i not in out]
        train.extend(by_user[u])
    print(f"generated {len(train) + sum(map(len, held.values())):,} sessions for "
          f"{len(world.users):,} users ({len(train):,} to train on, "
          f"{sum(map(len, held.values())):,} held out) in {time.perf_counter() - t0:.1f} s")

    app = make_app()
    t0 = time.perf_counter()
    package_ids, user_ids = load(app, world, train)
    print(f"loaded with COPY in {time.perf_counter() - t0:.1f} s")
    seconds, figures = run_job(app)
    print(f"platform job: {seconds:.2f} s; k_user {figures['k_user']:.2f}, k_package "
          f"{figures['k_package']:.2f}, noise variance {figures['noise']:.2f}, between-user "
          f"variance {figures['between_users']:.2f}")

    index_of = {pid: i for i, pid in enumerate(package_ids)}
    popularity = defaultdict(int)
    for row in train:
        popularity[row["p"]] += 1
    by_popularity = sorted(range(world.n_packages), key=lambda p: (-popularity[p], p))[:TOP]

    from sonicus.extensions import db
    from sonicus.services.recommendations import rank_packages

    totals = {name: {"ndcg": 0.0, "hit": 0, "catalog": 0.0, "trap_first": 0}
              for name in ("new", "old", "popularity")}
    evaluated, latencies = 0, []
    with app.app_context():
        for u, held_rows in held.items():
            relevant = {row["p"]: 1.0 for row in held_rows if world.group_lift(u, row["p"]) > 0}
            user = world.users[u]
            t1 = time.perf_counter()
            ranked = rank_packages(user_ids[u], "starter",
                                   {"goals": user["goals"], "favorite_categories":
                                    user["favorites"]}, TOP)
            latencies.append(time.perf_counter() - t1)
            db.session.remove()
            rankings = {"new": [index_of[r[0].package_id] for r in ranked[:TOP]],
                        "old": old_ordering(world, by_user, popularity, u),
                        "popularity": by_popularity}
            graded = {p: max(0.0, world.group_lift(u, p)) for p in range(world.n_packages)}
            ideal_catalog = dcg(sorted(graded, key=lambda p: -graded[p]), graded)
            for name, top in rankings.items():
                totals[name]["trap_first"] += top[0] == world.trap
                totals[name]["catalog"] += dcg(top, graded) / ideal_catalog \
                    if ideal_catalog else 0.0
            if not relevant:
                continue
            evaluated += 1
            ideal = dcg(list(relevant), relevant)
            for name, top in rankings.items():
                totals[name]["ndcg"] += dcg(top, relevant) / ideal
                totals[name]["hit"] += any(p in relevant for p in top)

    users = len(held)
    print(f"\n{evaluated:,} users with a relevant held-out package (of {users:,} with a "
          f"holdout); rank_packages p50 {statistics.median(latencies) * 1000:.1f} ms")
    print("| ranking | NDCG@5 | hit rate@5 | catalog NDCG@5 | trap first |")
    print("|---|---|---|---|---|")
    for name, label in (("new", "new recommender"), ("old", "old dashboard ordering"),
                        ("popularity", "popularity")):
        t = totals[name]
        print(f"| {label} | {t['ndcg'] / evaluated:.3f} | {t['hit'] / evaluated:.3f} | "
              f"{t['catalog'] / users:.3f} | {t['trap_first']} |")
    ratio = totals["new"]["ndcg"] / max(totals["popularity"]["ndcg"], 1e-9)
    print(f"\nnew / popularity NDCG@5: {ratio:.2f}x (aim >= 1.25x); the trap first for the "
          f"new recommender: {totals['new']['trap_first']} users (aim 0)")


# ---- speed -----------------------------------------------------------------------------------

def scale(args) -> None:
    from bench_analytics_common import percentile, start_gunicorn, stop_process, wait_http

    app = make_app()
    if not args.get_only:
        world = World(args.users, args.packages, args.sessions)
        t0 = time.perf_counter()
        train = list(world.sessions())
        print(f"generated {len(train):,} sessions for {len(world.users):,} users in "
              f"{time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        load(app, world, train)
        print(f"loaded with COPY in {time.perf_counter() - t0:.1f} s")
        runs = [run_job(app)[0] for _ in range(args.job_runs)]
        print(f"platform job (rebuild_recommendation_model) on {len(train):,} sessions: "
              + ", ".join(f"{s:.1f} s" for s in runs)
              + " (first into empty tables, then again) (aim <= 30 s)")

    import http.client

    from sonicus import devtokens

    proc, port = start_gunicorn(threads=4)
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        rng = random.Random(5)
        chosen = rng.sample(range(args.users), args.clients_users)
        tokens = [devtokens.mint(app, email=f"u{u}@example.com") for u in chosen]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

        def get(path, token):
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            res = conn.getresponse()
            body = res.read()
            assert res.status == 200, body[:300]

        paths = ("/api/user/recommendations?limit=10", "/api/user/profile")
        for token in tokens:  # sign-in (first request of each token) and warm-up
            for path in paths:
                get(path, token)
        latencies = {path: [] for path in paths}
        for i in range(args.requests):  # alternating, so both see the same machine
            for path in paths:
                t1 = time.perf_counter()
                get(path, tokens[i % len(tokens)])
                latencies[path].append((time.perf_counter() - t1) * 1000)
        conn.close()
    finally:
        stop_process(proc)
    for path in paths:
        values = latencies[path]
        print(f"GET {path}, one client, {args.requests} requests over {len(tokens)} users: "
              f"p50 {percentile(values, 50):.1f} ms, p95 {percentile(values, 95):.1f} ms, "
              f"p99 {percentile(values, 99):.1f} ms")
    print("(aim: recommendations p95 <= 20 ms; the profile route, the cheapest signed-in "
          "route, measured alternately in the same run, shows what the machine gives)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", action="store_true",
                        help="speed: the platform job and the GET on a large population")
    parser.add_argument("--users", type=int)
    parser.add_argument("--packages", type=int, default=200)
    parser.add_argument("--sessions", type=int)
    parser.add_argument("--job-runs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients-users", type=int, default=100)
    parser.add_argument("--get-only", action="store_true",
                        help="--scale: time the GET on the data already loaded")
    args = parser.parse_args()
    if args.scale:
        args.users = args.users or 100_000
        args.sessions = args.sessions or 1_000_000
        scale(args)
    else:
        args.users = args.users or 5_000
        args.sessions = args.sessions or 300_000
        quality(args)


if __name__ == "__main__":
    main()
