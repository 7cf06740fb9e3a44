"""Duplicates of one keyed write, at once, against two web processes: one runs, the rest
replay, and a retry sent right after is replayed.

    .venv/bin/python -m bench.bench_idempotency_storm [--keys 40] [--copies 10]
        [--database postgresql://postgres@127.0.0.1:5432/bench_attack]

Migrates the database from scratch, seeds a package and a pro user, starts gunicorn with 2
processes of 8 threads, then for each key sends ``--copies`` session starts with it from as
many threads released together, and one more once they all answered. Prints what came back
and the sessions in the database; exits 1 if a key ran more or less than once or a retry was
not a replay of the first answer.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_idempotency import mint_pro_token, seed  # noqa: E402
from bench.bench_sessions import Server, make_bench_app, reset_database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/bench_attack")
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--copies", type=int, default=10)
    args = parser.parse_args()

    app = make_bench_app(args.database)
    reset_database(app, args.database)
    package_id = seed(app)
    token = mint_pro_token(app, "storm@example.com")
    server = Server(args.database, 2, 8)
    url, body = server.url + "/api/user/sessions", {"package_id": package_id}
    answers: collections.Counter = collections.Counter()
    wrong = []
    try:
        for k in range(args.keys):
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
            got = [None] * args.copies
            barrier = threading.Barrier(args.copies)

            def send(i, headers=headers, got=got, barrier=barrier):
                session = requests.Session()
                barrier.wait()
                res = session.post(url, json=body, headers=headers, timeout=30)
                got[i] = (res.status_code, res.headers.get("Idempotent-Replayed"), res.text)

            threads = [threading.Thread(target=send, args=(i,)) for i in range(args.copies)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ran = [g for g in got if g[0] == 201 and g[1] is None]
            answers.update(f"{g[0]} replayed" if g[1] else str(g[0]) for g in got)
            retry = requests.post(url, json=body, headers=headers, timeout=30)
            replayed = retry.headers.get("Idempotent-Replayed") == "true"
            answers[f"retry {retry.status_code}{' replayed' if replayed else ''}"] += 1
            if len(ran) != 1 or not replayed or retry.text != ran[0][2]:
                wrong.append(k)
    finally:
        server.stop()

    from sqlalchemy import text

    from sonicus.extensions import db

    with app.app_context():
        sessions = db.session.execute(text("SELECT count(*) FROM sonicus.user_sessions")).scalar()
    print(f"{args.keys} keys x {args.copies} copies at once, 2 web processes: "
          + ", ".join(f"{name}: {n}" for name, n in sorted(answers.items()))
          + f"; sessions in the database: {sessions}")
    if wrong or sessions != args.keys:
        print(f"keys that did not run exactly once or whose retry was not a replay: {wrong}")
        sys.exit(1)


if __name__ == "__main__":
    main()
