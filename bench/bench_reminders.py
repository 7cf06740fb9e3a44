"""Reminder figures: the scan that finds who is due (one SQL statement over 100,000 users with
push subscriptions), and sending through a push service stand-in (real VAPID signing and
aes128gcm encryption per push, one worker, keep-alive connections).

Builds (once) a PostgreSQL database with 100,000 users spread over 12 time zones, each with
reminders on (80% at a fixed time spread over the day, 20% "smart"; 30% with quiet hours, 30%
weekdays only) and a push subscription, and 1,000,000 listening sessions over 30 days (some
today: those users are not reminded).

    .venv/bin/python bench/bench_reminders.py                # build if needed, then measure
    .venv/bin/python bench/bench_reminders.py --regenerate   # rebuild the data first

Settings: BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/bench_reminders;
created when missing). The push service stand-in (tests/push_service.py) runs in a process of
its own and checks every VAPID signature, as a real one does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/bench_reminders")
ZONES = ["UTC", "Europe/London", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
         "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney", "Pacific/Auckland",
         "America/Sao_Paulo", "Africa/Lagos", "Asia/Singapore"]
STAND_IN = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.push_service import PushServiceStandIn
s = PushServiceStandIn()
print(s.port, flush=True)
while True:
    time.sleep(3600)
"""


def _zones_sql() -> str:
    return "ARRAY[" + ", ".join(f"'{z}'" for z in ZONES) + "]"


def generate(db, users: int, sessions: int, p256dh: str, auth: str) -> None:
    tables = ", ".join(f"sonicus.{t.name}" for t in db.metadata.sorted_tables)
    steps = [
        ("truncate", f"TRUNCATE {tables} RESTART IDENTITY CASCADE"),
        ("packages", """
            INSERT INTO sonicus.sound_packages (slug, title, description, category,
                minimum_tier, published, duration_seconds, track_count, popularity,
                created_at, updated_at)
            SELECT 'pack-' || i, 'Package ' || i, '', 'sleep', 'public', true, 1800, 1, 0,
                   now(), now()
            FROM generate_series(1, 20) AS i"""),
        ("users", f"""
            INSERT INTO sonicus.users (oidc_sub, email, email_verified, display_name,
                timezone, day_start_hour, preferences, role, is_active, created_at, updated_at)
            SELECT 'bench-' || i, 'listener' || i || '@example.com', true, 'Listener ' || i,
                   ({_zones_sql()})[1 + i % {len(ZONES)}], (i % 3), '{{}}', 'user', true,
                   now(), now()
            FROM generate_series(1, {users}) AS i"""),
        ("preferences", """
            INSERT INTO sonicus.reminder_preferences (user_id, enabled, remind_minute,
                days_mask, quiet_start_minute, quiet_end_minute, weekly_recap, smart_minute,
                smart_computed_at, updated_at)
            SELECT id, true, CASE WHEN id % 5 = 0 THEN NULL ELSE abs(hashint4(id)) % 1440 END,
                   CASE WHEN id % 10 < 3 THEN 31 ELSE 127 END,
                   CASE WHEN id % 10 >= 7 THEN 22 * 60 END,
                   CASE WHEN id % 10 >= 7 THEN 7 * 60 END, true,
                   CASE WHEN id % 5 = 0 THEN ((id * 7) % 24) * 60 END,
                   CASE WHEN id % 5 = 0 THEN now() END, now()
            FROM sonicus.users"""),
        ("subscriptions", f"""
            INSERT INTO sonicus.push_subscriptions (user_id, endpoint, p256dh, auth,
                created_at, updated_at)
            SELECT id, 'http://127.0.0.1:9/push/' || id, '{p256dh}', '{auth}', now(), now()
            FROM sonicus.users"""),
        ("sessions", f"""
            INSERT INTO sonicus.user_sessions (user_id, package_id, tier, status, started_at,
                local_day, ended_at, max_duration_seconds, listened_seconds, completed,
                counts_toward_quota)
            SELECT u.id, 1 + g.s % 20, 'starter', 'ended', g.t,
                   ((g.t AT TIME ZONE u.timezone) - make_interval(hours => u.day_start_hour))::date,
                   g.t + interval '20 minutes', 3600, 1200, g.s % 3 <> 0, true
            FROM (SELECT s, 1 + floor(random() * {users})::int AS uid,
                         now() - random() * interval '30 days' AS t
                  FROM generate_series(1, {sessions}) AS s) AS g
            JOIN sonicus.users u ON u.id = g.uid"""),
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=1_000_000)
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--scans", type=int, default=5)
    parser.add_argument("--pushes", type=int, default=2000)
    args = parser.parse_args()

    from flask_migrate import upgrade

    from bench.common import ensure_database
    from sonicus import create_app
    from sonicus.extensions import db
    from sonicus.services import reminder_claims, reminders
    from sonicus.services.webpush import b64url
    from tests.push_service import Browser

    ensure_database(DATABASE_URL)
    stand_in = subprocess.Popen([sys.executable, "-c", STAND_IN, str(ROOT)],
                                stdout=subprocess.PIPE, text=True)
    port = int(stand_in.stdout.readline())
    try:
        device = Browser(f"http://127.0.0.1:{port}/push/x")
        vapid = b64url(os.urandom(32))
        app = create_app({"SONICUS_ENV": "development", "DATABASE_URL": DATABASE_URL,
                          "REDIS_URL": None, "LOG_LEVEL": "WARNING",
                          "VAPID_PRIVATE_KEY": vapid,
                          "WEBPUSH_ALLOWED_ENDPOINTS": ["http://127.0.0.1:"]})
        with app.app_context():
            upgrade()
            count = db.session.execute(text(
                "SELECT count(*) FROM sonicus.push_subscriptions")).scalar()
            if args.regenerate or count != args.users:
                print(f"generating {args.users:,} users with reminders and subscriptions, "
                      f"{args.sessions:,} sessions")
                db.session.remove()
                started = time.perf_counter()
                generate(db, args.users, args.sessions, device.p256dh,
                         b64url(device.auth_secret))
                print(f"  {'total':<14} {time.perf_counter() - started:7.2f} s")
            db.session.execute(text(
                "UPDATE sonicus.push_subscriptions SET p256dh = :k, auth = :a, endpoint = "
                "'http://127.0.0.1:' || :port || '/push/' || user_id"),
                {"k": device.p256dh, "a": b64url(device.auth_secret), "port": port})
            db.session.execute(text("DELETE FROM sonicus.reminder_deliveries"))
            db.session.commit()
            with db.engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                    text("VACUUM ANALYZE sonicus.push_subscriptions"))
            measure(app, db, reminder_claims, reminders, args, port)
    finally:
        stand_in.terminate()
    return 0


def measure(app, db, reminder_claims, reminders, args, port) -> None:
    today = datetime.now(UTC).replace(second=0, microsecond=0)
    print(f"\nPostgreSQL {DATABASE_URL.rsplit('/', 1)[-1]}: {args.users:,} users with "
          f"reminders on and a push subscription")

    # 1. A scan that finds a full hour's due users (the first run after an outage, or the
    #    catch-up window): then cleared, at another instant, N times.
    first, claimed = [], []
    for i in range(args.scans):
        moment = today + timedelta(minutes=97 * i)
        started = time.perf_counter()
        claimed = reminder_claims.claim_due_reminders(moment)
        first.append(time.perf_counter() - started)
        print(f"  scan at {moment:%H:%M} UTC: {len(claimed):>5} due, "
              f"{first[-1] * 1000:7.1f} ms")
        if i < args.scans - 1:
            db.session.execute(text("DELETE FROM sonicus.reminder_deliveries"))
            db.session.commit()
    # 2. Steady state: the next minutes, most of the hour already claimed.
    steady = []
    moment = today + timedelta(minutes=97 * (args.scans - 1))
    for minute in range(1, args.scans + 1):
        started = time.perf_counter()
        more = reminder_claims.claim_due_reminders(moment + timedelta(minutes=minute))
        steady.append(time.perf_counter() - started)
        print(f"  next minute +{minute}: {len(more):>5} due, {steady[-1] * 1000:7.1f} ms")
    started = time.perf_counter()
    db.session.execute(text("UPDATE sonicus.reminder_preferences SET smart_computed_at = NULL "
                            "WHERE remind_minute IS NULL AND user_id <= 25000"))
    db.session.commit()
    refresh_start = time.perf_counter()
    refreshed = reminder_claims.refresh_smart_times(batch=reminder_claims.SMART_BATCH)
    refresh = time.perf_counter() - refresh_start
    print(f"scan, an hour due at once: p50 {statistics.median(first) * 1000:.1f} ms, "
          f"max {max(first) * 1000:.1f} ms over {len(first)} instants")
    print(f"scan, minute after minute: p50 {statistics.median(steady) * 1000:.1f} ms, "
          f"max {max(steady) * 1000:.1f} ms")
    print(f"smart times refreshed: {refreshed} users in {refresh * 1000:.0f} ms "
          f"({time.perf_counter() - started:.2f} s with the reset)")

    # 3. Sending: one worker, batches of reminders.SEND_BATCH, through the stand-in: one push
    #    at a time, then WEBPUSH_CONCURRENCY in flight (the default, 8); a weekday's reminder,
    #    then Monday's, which computes each user's recap of last week (no Redis: not cached).
    ids = claimed[:args.pushes]
    n = len(ids)
    runs = (("weekday", 1, ids[:n // 6]), ("weekday", 8, ids[n // 6:n // 2]),
            ("Monday recap", 8, ids[n // 2:]))
    for kind, concurrency, subset in runs:
        db.session.execute(text("UPDATE sonicus.reminder_deliveries SET recap = :r "
                                "WHERE id = ANY(:ids)"),
                           {"r": kind != "weekday", "ids": subset})
        db.session.commit()
        app.config["WEBPUSH_CONCURRENCY"] = concurrency
        started = time.perf_counter()
        sent = 0
        for i in range(0, len(subset), reminders.SEND_BATCH):
            sent += reminders.deliver_reminders(subset[i:i + reminders.SEND_BATCH])
        elapsed = time.perf_counter() - started
        print(f"sending, {kind}, {concurrency} in flight: {sent} of {len(subset)} pushes in "
              f"{elapsed:.2f} s = {sent / elapsed:.0f} pushes/s on one worker")
    print(f"(VAPID and aes128gcm per push, streaks in one query per batch, keep-alive "
          f"sessions; stand-in on port {port}, its own process, checks every VAPID signature; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    sys.exit(main())
