"""What an ``Idempotency-Key`` costs a session start, against a real gunicorn + PostgreSQL.

    .venv/bin/python -m bench.bench_idempotency [--rounds 40] [--starts 25]
        [--database postgresql://postgres@127.0.0.1:5432/bench_idem] [--clients 1]
        [--production]

What it does: migrates the bench database from scratch, seeds one package and one pro user
(no daily limit, so every start runs the whole start: row lock, count, insert), starts one
gunicorn process (gthread) and sends ``POST /api/user/sessions`` from ``--clients`` keep-alive
clients, in alternating rounds: ``--starts`` starts without the header, then as many with a
fresh ``Idempotency-Key`` each (the claim's INSERT and the answer's UPDATE), the order swapped
every round so that a drift of the machine or the growing table weighs on both alike. Prints
each round and the median time per start of each kind, and the overhead of the header.

``--production`` serves the starts as production does instead: ``gunicorn -c gunicorn.conf.py``
(2 gthread processes of 256 threads, the JSON access log at INFO, sent to /dev/null), Redis
(``BENCH_REDIS``, default db 13, flushed) with rate limits on and counted there, with limits
the benchmark never reaches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sessions import Server, make_bench_app, reset_database  # noqa: E402

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/bench_idem"


def seed(app) -> int:
    from sonicus.extensions import db
    from sonicus.models import SoundPackage
    from sonicus.services.catalog import seed_catalog

    with app.app_context():
        seed_catalog([{"slug": "bench-rain", "title": "Bench Rain", "category": "sleep",
                       "published": True,
                       "tracks": [{"title": "Rain", "duration_seconds": 1800,
                                   "media_path": "sleep/bench/rain.mp3"}]}])
        package_id = db.session.query(SoundPackage.id).scalar()
        db.session.remove()
    return package_id


def mint_pro_token(app, email: str) -> str:
    """A development token of a pro user (signed in once, then granted the tier)."""
    from sonicus.auth import caller_from_token
    from sonicus.devtokens import mint
    from sonicus.extensions import db
    from sonicus.services.admin_users import grant_tier_from_cli

    with app.test_request_context():
        token = mint(app, email=email)
        grant_tier_from_cli(caller_from_token(token).id, "pro")
        db.session.remove()
    return token


def run_round(url: str, token: str, body: dict, starts: int, clients: int,
              key_prefix: str | None) -> list[float]:
    """``starts`` starts from ``clients`` keep-alive clients; seconds per start."""
    latencies, lock = [], threading.Lock()
    per_client = starts // clients

    def client(index: int) -> None:
        session = requests.Session()
        local = []
        for i in range(per_client):
            headers = {"Authorization": f"Bearer {token}"}
            if key_prefix is not None:
                headers["Idempotency-Key"] = f"{key_prefix}-{index}-{i}"
            started = time.perf_counter()
            res = session.post(url, json=body, headers=headers, timeout=30)
            local.append(time.perf_counter() - started)
            if res.status_code != 201 or "Idempotent-Replayed" in res.headers:
                raise RuntimeError(f"unexpected answer {res.status_code}: {res.text[:200]}")
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=DEFAULT_DB)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--starts", type=int, default=25, help="starts per kind per round")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--verbose", action="store_true", help="print every round")
    parser.add_argument("--production", action="store_true",
                        help="gunicorn.conf.py as shipped, Redis, rate limits (see above)")
    args = parser.parse_args()

    app = make_bench_app(args.database)
    reset_database(app, args.database)
    package_id = seed(app)
    token = mint_pro_token(app, "bench-idem@example.com")
    server = Server(args.database, 1, args.threads, production=args.production)
    url, body = server.url + "/api/user/sessions", {"package_id": package_id}
    plain, keyed, ratios = [], [], []
    try:
        run_round(url, token, body, 100, args.clients, None)  # warm up
        run_round(url, token, body, 100, args.clients, "warm")
        for r in range(args.rounds):
            order = (None, f"r{r}") if r % 2 == 0 else (f"r{r}", None)
            medians = {}
            for prefix in order:
                lat = run_round(url, token, body, args.starts, args.clients, prefix)
                (plain if prefix is None else keyed).extend(lat)
                medians[prefix is not None] = statistics.median(lat)
            ratios.append(medians[True] / medians[False])
            if args.verbose:
                print(f"round {r + 1}: without {medians[False] * 1000:.2f} ms, "
                      f"with key {medians[True] * 1000:.2f} ms per start "
                      f"({(ratios[-1] - 1) * 100:+.1f}%)", flush=True)
    finally:
        server.stop()

    without, with_key = statistics.median(plain), statistics.median(keyed)
    quartiles = statistics.quantiles(ratios, n=4)
    print(f"median per start: without the header {without * 1000:.2f} ms, with "
          f"Idempotency-Key {with_key * 1000:.2f} ms: {(with_key - without) * 1000:+.2f} ms, "
          f"overhead {(with_key / without - 1) * 100:+.1f}% (per round: median "
          f"{(statistics.median(ratios) - 1) * 100:+.1f}%, middle half "
          f"{(quartiles[0] - 1) * 100:+.1f}% to {(quartiles[2] - 1) * 100:+.1f}%)")
    served = ("gunicorn -c gunicorn.conf.py, Redis, rate limits" if args.production
              else f"gunicorn -k gthread --workers 1 --threads {args.threads}")
    print(f"{args.rounds} rounds x {args.starts} starts of each kind, {args.clients} client(s); "
          f"{served}; database "
          f"{args.database.rsplit('/', 1)[1]}; machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
