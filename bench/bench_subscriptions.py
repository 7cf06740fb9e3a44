"""Benchmark of the subscription work: the expiry job and the billing webhook.

Runs against a real PostgreSQL database that it RESETS (drops schema ``sonicus``):
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<scratch db> \
        .venv/bin/python bench/bench_subscriptions.py [--subs 5000] [--webhooks 1000]

Measures:
1. expiry job, one worker: N ended trials (half with a card on file → converted, half →
   starter), wall time and rows per second;
2. expiry job, four workers at once on another N: wall time, and that each row was
   processed exactly once;
3. webhook: signed ``invoice.paid`` renewals for distinct users through the WSGI app
   (signature check + insert-first idempotency + row lock + event), events per second;
   then the same events replayed (duplicates) per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import stripe  # noqa: E402
from sqlalchemy import func, insert, select, text  # noqa: E402

from sonicus import create_app  # noqa: E402

SECRET = "whsec_bench"


def make_app():
    url = os.environ.get("BENCH_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test_subs")
    return create_app({"SONICUS_ENV": "testing", "DATABASE_URL": url, "REDIS_URL": None,
                       "OIDC_ISSUER": "https://id.invalid/application/o/sonicus/",
                       "OIDC_AUDIENCE": "bench", "BILLING_WEBHOOK_SECRET": SECRET,
                       "RATELIMIT_ENABLED": False, "DEV_TOKEN_ISSUER": False})


def reset(app):
    from flask_migrate import upgrade

    from sonicus.extensions import db

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
        upgrade()


def seed(app, start: int, n: int, **sub_fields) -> list[int]:
    from sonicus.extensions import db
    from sonicus.models import User, UserSubscription

    now = datetime.now(UTC)
    with app.app_context():
        users = [{"oidc_sub": f"bench-{i}", "email": f"bench{i}@example.com",
                  "email_verified": True, "timezone": "UTC", "day_start_hour": 0,
                  "preferences": {}, "role": "user", "is_active": True,
                  "created_at": now, "updated_at": now} for i in range(start, start + n)]
        ids = db.session.execute(insert(User).returning(User.id), users).scalars().all()
        rows = []
        for k, uid in enumerate(ids):
            row = {"user_id": uid, "created_at": now, "updated_at": now, "tier": "starter",
                   "status": "active", "trial_used": False, "cancel_at_period_end": False,
                   "payment_method_on_file": False, "complimentary": False}
            row.update({key: (value(k) if callable(value) else value)
                        for key, value in sub_fields.items()})
            rows.append(row)
        db.session.execute(insert(UserSubscription), rows)
        db.session.commit()
        db.session.remove()
        return list(ids)


def count_events(app, type_: str) -> int:
    from sonicus.extensions import db
    from sonicus.models import SubscriptionEvent

    with app.app_context():
        n = db.session.execute(select(func.count(SubscriptionEvent.id))
                               .where(SubscriptionEvent.type == type_)).scalar_one()
        db.session.remove()
        return n


def run_job(app):
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    with app.app_context():
        try:
            return process_due_subscriptions()
        finally:
            db.session.remove()


def bench_job(app, n: int) -> None:
    past = datetime.now(UTC) - timedelta(days=1)
    seed(app, 0, n, tier="premium", status="trialing", trial_used=True, trial_ends_at=past,
         provider="sandbox", payment_method_on_file=lambda k: k % 2 == 0)
    t0 = time.perf_counter()
    result = run_job(app)
    wall = time.perf_counter() - t0
    print(f"expiry job, 1 worker: {n} due trials in {wall:.2f} s "
          f"({n / wall:.0f} rows/s); outcomes {result['outcomes']}")
    t0 = time.perf_counter()
    again = run_job(app)
    print(f"  second run: {again['processed']} processed in {time.perf_counter() - t0:.3f} s")

    seed(app, n, n, tier="premium", status="trialing", trial_used=True, trial_ends_at=past,
         provider="sandbox")
    before = count_events(app, "trial_ended")
    results, barrier = [], threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(run_job(app))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = sum(r["processed"] for r in results)
    ended = count_events(app, "trial_ended") - before
    print(f"expiry job, 4 workers at once: {n} due trials in {wall:.2f} s "
          f"({n / wall:.0f} rows/s); per worker {[r['processed'] for r in results]}; "
          f"processed {done}, trial_ended events {ended} (expected {n})")


def bench_webhooks(app, n: int) -> None:
    now = datetime.now(UTC)
    end = now + timedelta(hours=1)
    ids = seed(app, 10 * n + 100000, n, tier="premium", status="active",
               provider="stripe", payment_method_on_file=True,
               current_period_start=end - timedelta(days=30), current_period_end=end)
    bodies = []
    for k, uid in enumerate(ids):
        event = {"id": f"evt_bench_{k}", "type": "invoice.paid", "created": int(now.timestamp()),
                 "data": {"object": {"id": f"in_{k}", "customer": f"cus_{k}",
                                     "amount_paid": 999, "metadata": {
                                         "sonicus_user_id": str(uid), "sonicus_tier": "premium"},
                                     "lines": {"data": [{"period": {
                                         "start": int(end.timestamp()),
                                         "end": int((end + timedelta(days=30)).timestamp())}}]}}}}
        bodies.append(json.dumps(event))
    client = app.test_client()

    def deliver(label):
        latencies = []
        t0 = time.perf_counter()
        for body in bodies:
            header = stripe.WebhookSignature.generate_signature_header(body, SECRET)
            s = time.perf_counter()
            resp = client.post("/api/billing/webhook", data=body,
                               headers={"Stripe-Signature": header,
                                        "Content-Type": "application/json"})
            latencies.append(time.perf_counter() - s)
            assert resp.status_code == 200, resp.get_json()
        wall = time.perf_counter() - t0
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p95 = latencies[int(len(latencies) * 0.95)] * 1000
        print(f"webhook {label}: {n} events in {wall:.2f} s ({n / wall:.0f}/s), "
              f"p50 {p50:.1f} ms, p95 {p95:.1f} ms")

    deliver("renewals (one thread)")
    print(f"  renewed events recorded: {count_events(app, 'renewed')} (expected {n})")
    deliver("replays (duplicates)")
    print(f"  renewed events after replay: {count_events(app, 'renewed')} (unchanged)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--subs", type=int, default=5000)
    parser.add_argument("--webhooks", type=int, default=1000)
    args = parser.parse_args()
    app = make_app()
    reset(app)
    bench_job(app, args.subs)
    bench_webhooks(app, args.webhooks)


if __name__ == "__main__":
    main()
