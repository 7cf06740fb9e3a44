"""Admin figures at scale: platform stats (cached and computed) and user search latency.

Builds (once) a PostgreSQL database with 100,000 users and 1,000,000 listening sessions using
set-based SQL (generate_series), then times the admin routes through the app's test client
(authentication, query, serialisation and envelope included; no network).

    .venv/bin/python bench/bench_admin.py                # build if needed, then measure
    .venv/bin/python bench/bench_admin.py --regenerate   # rebuild the data first

Settings: BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/bench_admin; the
database is created when missing), BENCH_REDIS_URL (default redis://127.0.0.1:6379/13).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text  # noqa: E402

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/bench_admin")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")

FIRST = ["Ana", "Ben", "Chloe", "David", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jonas",
         "Kira", "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara"]
LAST = ["Lopez", "Smith", "Nguyen", "Garcia", "Kowalski", "Okafor", "Rossi", "Muller",
        "Tanaka", "Silva", "Dubois", "Novak", "Jensen", "Haddad", "Costa", "Ivanova",
        "Brown", "Khan", "Moreau", "Weber", "Fischer", "Santos", "Yilmaz", "Olsen", "Park",
        "Ahmed", "Bianchi", "Cohen", "Dimitrov", "Evans", "Fontaine", "Gruber", "Horvat",
        "Ito", "Jovanovic", "Keller", "Larsen", "Meyer", "Nakamura", "Ortiz", "Petrov",
        "Quispe", "Reyes", "Schmidt", "Torres", "Uzun", "Vargas", "Wagner", "Xu", "Zimmer"]
DOMAINS = ["example.com", "mail.test", "inbox.example", "post.test"]


def _sql_array(values) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def generate(db, users: int, sessions: int, days: int) -> None:
    """Set-based generation: one INSERT ... SELECT generate_series per table."""
    tables = ", ".join(f"sonicus.{t.name}" for t in db.metadata.sorted_tables)
    steps = [
        ("truncate", f"TRUNCATE {tables} RESTART IDENTITY CASCADE"),
        ("packages", """
            INSERT INTO sonicus.sound_packages (slug, title, description, category, minimum_tier,
                published, duration_seconds, track_count, popularity, created_at, updated_at)
            SELECT 'pack-' || i, 'Package ' || i, '', (ARRAY['sleep','focus','calm'])[1 + i % 3],
                   (ARRAY['public','premium','pro_exclusive'])[1 + i % 3], true, 1800, 3, 0,
                   now(), now()
            FROM generate_series(1, 50) AS i"""),
        ("users", f"""
            INSERT INTO sonicus.users (oidc_sub, email, email_verified, display_name, oidc_name,
                timezone, day_start_hour, preferences, role, is_active, created_at, updated_at)
            SELECT 'bench-' || i,
                   lower(f) || '.' || lower(l) || i || '@' || ({_sql_array(DOMAINS)})[1 + i % 4],
                   true, f || ' ' || l, f || ' ' || l, 'UTC', 0, '{{}}', 'user', i % 500 <> 0,
                   now() - random() * interval '365 days', now()
            FROM (SELECT i, ({_sql_array(FIRST)})[1 + i % 20] AS f,
                         ({_sql_array(LAST)})[1 + (i / 20) % 50] AS l
                  FROM generate_series(1, {users}) AS i) AS names"""),
        ("subscriptions", """
            INSERT INTO sonicus.user_subscriptions (user_id, tier, status, trial_used,
                cancel_at_period_end, payment_method_on_file, complimentary, created_at,
                updated_at)
            SELECT id,
                   CASE WHEN id % 10 < 7 THEN 'starter' WHEN id % 10 < 9 THEN 'premium'
                        ELSE 'pro' END,
                   CASE WHEN id % 10 >= 7 AND id % 37 = 0 THEN 'trialing'
                        WHEN id % 10 >= 7 AND id % 53 = 0 THEN 'past_due'
                        WHEN id % 61 = 0 THEN 'canceled' ELSE 'active' END,
                   id % 5 = 0, false, id % 10 >= 7, id % 10 >= 7 AND id % 97 = 0, now(), now()
            FROM sonicus.users"""),
        ("sessions", f"""
            INSERT INTO sonicus.user_sessions (user_id, package_id, tier, status, started_at,
                local_day, ended_at, max_duration_seconds, listened_seconds, completed,
                counts_toward_quota)
            SELECT 1 + floor(random() * {users})::int, 1 + s % 50, 'starter',
                   CASE WHEN s % 20 = 0 THEN 'open' ELSE 'ended' END, t,
                   (t AT TIME ZONE 'UTC')::date,
                   CASE WHEN s % 20 = 0 THEN NULL ELSE t + interval '20 minutes' END,
                   3600, CASE WHEN s % 20 = 0 THEN 0 ELSE floor(random() * 1800)::int END,
                   s % 20 <> 0 AND s % 3 <> 0, true
            FROM (SELECT s, now() - random() * interval '{days} days' AS t
                  FROM generate_series(1, {sessions}) AS s) AS g"""),
        ("vacuum", "VACUUM ANALYZE"),
    ]
    with db.engine.connect() as conn:
        for name, sql in steps:
            started = time.perf_counter()
            if name == "vacuum":
                conn.commit()
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(text(sql))
            else:
                conn.execute(text(sql))
                conn.commit()
            print(f"  {name:<14} {time.perf_counter() - started:7.2f} s")


def percentile(values, p) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def report(label: str, samples: list[float], extra: str = "") -> None:
    ms = [s * 1000 for s in samples]
    print(f"{label:<44} n={len(ms):<4} p50={statistics.median(ms):8.1f} ms  "
          f"p95={percentile(ms, 95):8.1f} ms  max={max(ms):8.1f} ms {extra}")


def timed(client, path, headers, runs, query_fn=None):
    samples, last = [], None
    for i in range(runs):
        query = query_fn(i) if query_fn else None
        started = time.perf_counter()
        res = client.get(path, headers=headers, query_string=query)
        samples.append(time.perf_counter() - started)
        if res.status_code != 200:
            raise SystemExit(f"{path} {query}: {res.status_code} {res.get_data(as_text=True)}")
        last = res.json
    return samples, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90, help="sessions spread over this many days")
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--runs", type=int, default=300, help="runs per cached/search figure")
    parser.add_argument("--compute-runs", type=int, default=20)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from bench.common import ensure_database
    from sonicus import create_app, devtokens
    from sonicus.extensions import db, get_redis

    ensure_database(DATABASE_URL)
    app = create_app({"SONICUS_ENV": "development", "DATABASE_URL": DATABASE_URL,
                      "REDIS_URL": REDIS_URL, "DEV_TOKEN_ISSUER": True,
                      "RATELIMIT_ENABLED": False, "LOG_LEVEL": "WARNING"})
    with app.app_context():
        upgrade()
        counts = db.session.execute(text(
            "SELECT (SELECT count(*) FROM sonicus.users WHERE oidc_sub LIKE 'bench-%'),"
            " (SELECT count(*) FROM sonicus.user_sessions)")).one()
        if args.regenerate or tuple(counts) != (args.users, args.sessions):
            print(f"generating {args.users:,} users and {args.sessions:,} sessions "
                  f"over {args.days} days")
            db.session.remove()
            started = time.perf_counter()
            generate(db, args.users, args.sessions, args.days)
            print(f"  {'total':<14} {time.perf_counter() - started:7.2f} s")
        get_redis().flushdb()

    client = app.test_client()
    headers = {"Authorization": "Bearer " + devtokens.mint(app, email="bench-admin@example.com",
                                                           admin=True)}
    client.get("/api/user/profile", headers=headers)  # the admin exists; token cache warm

    print(f"\nPostgreSQL {DATABASE_URL.rsplit('/', 1)[-1]}, Redis cache {REDIS_URL}")
    samples, body = timed(client, "/api/admin/platform/stats", headers, args.compute_runs,
                          lambda i: {"refresh": "true"})
    report("stats, computed (GET ?refresh=true)", samples)
    data = body["data"]
    print(f"    users_total={data['users_total']:,} sessions_30d={data['sessions_30d']:,} "
          f"active_users_30d={data['active_users_30d']:,} mrr={data['mrr']}")
    samples, _ = timed(client, "/api/admin/platform/stats", headers, args.runs)
    report("stats, from the Redis cache (GET)", samples)

    rng = random.Random(7)
    ids = [rng.randint(1, args.users) for _ in range(args.runs)]

    def email_part(i):  # e.g. "ana.lopez1234": the way an operator pastes part of an email
        n = ids[i]
        return f"{FIRST[n % 20].lower()}.{LAST[(n // 20) % 50].lower()}{n}"

    searches = [
        ("search: email fragment (1-11 matches)", lambda i: {"q": email_part(i)}),
        ("search: surname (~2,000 matches)", lambda i: {"q": LAST[i % 50]}),
        ("search: full name (~100 matches)",
         lambda i: {"q": f"{FIRST[i % 20]} {LAST[(i * 7) % 50]}"}),
        ("search: 2 letters (prefix of email or name)", lambda i: {"q": FIRST[i % 20][:2]}),
        ("search: domain (~25,000 matches)", lambda i: {"q": "mail.test"}),
        ("list: no filter", lambda i: {"page": 1 + i % 5}),
        ("list: tier=pro", lambda i: {"tier": "pro"}),
        ("list: q=surname & tier=premium", lambda i: {"q": LAST[i % 50], "tier": "premium"}),
    ]
    for label, query in searches:
        samples, body = timed(client, "/api/admin/users", headers, args.runs, query)
        report(label, samples, f"(last total {body['pagination']['total']:,})")

    with app.app_context():
        from sonicus.models import User
        from sonicus.services.admin_users import _filtered

        for label, q in (("email fragment", email_part(0)), ("surname", "lopez"),
                         ("2-letter prefix", "ko")):
            for kind, statement in (
                    ("count", _filtered(select(func.count(User.id)), q, None, None)),
                    ("page", _filtered(select(User.id), q, None, None)
                     .order_by(User.id.desc()).limit(20))):
                sql = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
                plan = db.session.execute(text(f"EXPLAIN {sql}")).scalars().all()
                used = ", ".join(sorted({name for line in plan for name in (
                    "ix_users_search_trgm", "ix_users_email_prefix",
                    "ix_users_display_name_prefix") if name in line})) or plan[0].split("(")[0]
                print(f"plan of the {kind} query for a {label}: {used.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
