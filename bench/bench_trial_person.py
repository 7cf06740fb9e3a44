"""Benchmark of the free trial's walk over a person's accounts (``services.person_emails``):
how long the one statement that asks whether the person used the trial takes (every
subscription view and dashboard asks it), and the trial's locks, when someone built a long
chain of accounts (each verified with its own address and the next one's) or many accounts
on one address.

Runs against a real PostgreSQL database that it RESETS (drops schema ``sonicus``):
    BENCH_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/<scratch db> \\
        .venv/bin/python bench/bench_trial_person.py [--chain 1000] [--others 20000] [--runs 50]

Shapes, each asked from the account at the far end from the one that used the trial:
- ``chain``: N live accounts, account i verified with addresses i and i + 1;
- ``erased chain``: the same accounts erased but the last (their tombstones link them);
- ``fan``: N accounts verified with one address;
- ``small``: a person of three accounts.
Each is measured with the walk's limit as shipped and with the limit lifted (the whole
person walked) to show what the limit saves: as the app waits for the answer, and in the
database alone (``EXPLAIN ANALYZE``: planning and execution). ``--others``: unrelated
accounts around them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert, text  # noqa: E402

from sonicus import create_app  # noqa: E402


def make_app():
    url = os.environ.get("BENCH_DATABASE_URL",
                         "postgresql://postgres@127.0.0.1:5432/test_trial_person")
    return create_app({"SONICUS_ENV": "testing", "DATABASE_URL": url, "REDIS_URL": None,
                       "OIDC_ISSUER": "https://id.invalid/application/o/sonicus/",
                       "OIDC_AUDIENCE": "bench", "RATELIMIT_ENABLED": False,
                       "DEV_TOKEN_ISSUER": False})


def reset(app):
    from flask_migrate import upgrade

    from sonicus.extensions import db

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
        upgrade()


def accounts(prefix: str, addresses: list[list[str]], trial_first: bool) -> list[int]:
    """One live account per entry, verified with those addresses; the first one used the
    trial when ``trial_first``. Their ids."""
    from sonicus.extensions import db
    from sonicus.models import User, UserSubscription, VerifiedEmail
    from sonicus.services.erasure import email_hash

    now = datetime.now(UTC)
    users = [{"oidc_sub": f"{prefix}-{i}", "email": emails[-1], "email_verified": True,
              "timezone": "UTC", "day_start_hour": 0, "preferences": {}, "role": "user",
              "is_active": True, "created_at": now, "updated_at": now}
             for i, emails in enumerate(addresses)]
    ids = db.session.execute(insert(User).returning(User.id), users).scalars().all()
    db.session.execute(insert(UserSubscription), [
        {"user_id": uid, "created_at": now, "updated_at": now, "tier": "starter",
         "status": "active", "trial_used": trial_first and k == 0,
         "cancel_at_period_end": False, "payment_method_on_file": False,
         "complimentary": False} for k, uid in enumerate(ids)])
    db.session.execute(insert(VerifiedEmail), [
        {"user_id": uid, "email_hash": email_hash(e), "verified_at": now}
        for uid, emails in zip(ids, addresses, strict=True) for e in emails])
    db.session.commit()
    return list(ids)


def erase(ids: list[int]) -> None:
    """Erase these accounts as an erasure does (tombstones, then the rows)."""
    from sqlalchemy import delete, select

    from sonicus.extensions import db
    from sonicus.models import User, UserSubscription
    from sonicus.services.erasure import add_tombstone

    now = datetime.now(UTC)
    for user in db.session.execute(select(User).where(User.id.in_(ids))).scalars():
        sub = db.session.execute(select(UserSubscription)
                                 .where(UserSubscription.user_id == user.id)).scalar_one()
        add_tombstone(user, sub, now)
    db.session.execute(delete(User).where(User.id.in_(ids)))
    db.session.commit()


def measure(user_id: int, email: str, runs: int) -> dict:
    """The check asked ``runs`` times: median and max ms as the app waits for it, median ms
    the database spends on it (planning and execution, from ``EXPLAIN ANALYZE``), its
    answer; and how many addresses a trial locks (in a transaction rolled back)."""
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql

    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services import person_emails

    times, server = [], []
    used = False
    subject = db.session.get(User, user_id).oidc_sub
    for _ in range(runs):
        started = time.perf_counter()
        used = person_emails.trial_used_by_the_person(user_id, email, subject)
        times.append((time.perf_counter() - started) * 1000)
        db.session.rollback()
    sql = str(select(person_emails.trial_used_by_the_person_clause(user_id, email, subject))
              .compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    for _ in range(runs):
        plan = db.session.execute(text("EXPLAIN (ANALYZE, SUMMARY) " + sql)).scalars().all()
        server.append(sum(float(line.split(":")[1].split()[0]) for line in plan
                          if line.startswith(("Planning Time", "Execution Time"))))
        db.session.rollback()
    user = db.session.get(User, user_id)
    locks = []
    real = db.session.execute

    def counting(statement, *args, **kwargs):
        if "pg_advisory_xact_lock" in str(statement):
            locks.append(1)
        return real(statement, *args, **kwargs)

    db.session.execute = counting
    try:
        person_emails.lock_trials_of_account(user)
    finally:
        del db.session.execute
        db.session.rollback()
    return {"median": statistics.median(times), "max": max(times),
            "server": statistics.median(server), "used": used, "locks": len(locks)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chain", type=int, default=1000)
    parser.add_argument("--others", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    app = make_app()
    reset(app)
    from sonicus.extensions import db
    from sonicus.services import person_emails

    n = args.chain
    with app.app_context():
        accounts("other", [[f"other{i}@example.com"] for i in range(args.others)], False)
        chain = accounts("chain", [[f"c{i}@example.com", f"c{i + 1}@example.com"]
                                   for i in range(n)], True)
        erased = accounts("erased", [[f"e{i}@example.com", f"e{i + 1}@example.com"]
                                     for i in range(n)], True)
        erase(erased[:-1])
        fan = accounts("fan", [["fan@example.com"] for _ in range(n)], True)
        small = accounts("small", [["s1@example.com"], ["s1@example.com", "s2@example.com"],
                                   ["s2@example.com"]], True)
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        shapes = [("chain", chain[-1], f"c{n}@example.com"),
                  ("erased chain", erased[-1], f"e{n}@example.com"),
                  ("fan", fan[-1], "fan@example.com"),
                  ("small", small[-1], "s2@example.com")]
        shipped = person_emails.PERSON_LIMIT
        print(f"{n} accounts per shape, {args.others} others, {args.runs} runs each")
        for limit, label in ((shipped, f"limit {shipped}"), (10 ** 7, "no limit")):
            person_emails.PERSON_LIMIT = limit
            for name, user_id, email in shapes:
                m = measure(user_id, email, args.runs)
                print(f"{label:>10} {name:>13}: median {m['median']:6.2f} ms, max "
                      f"{m['max']:6.2f} ms, in the database {m['server']:6.2f} ms; trial used "
                      f"{m['used']}, {m['locks']} addresses locked")
        person_emails.PERSON_LIMIT = shipped
        db.session.remove()


if __name__ == "__main__":
    main()
