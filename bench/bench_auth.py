"""Authenticated GET /api/user/profile vs a bare Flask JSON route, both under gunicorn.

Run: .venv/bin/python -m bench.bench_auth [--rounds 5] [--duration 10] [--concurrency 16]

Rounds alternate the two routes; the figure is the median of the rounds' ratios, and the
req/s and p99 shown for each route are from its median round.

One gunicorn process by default: the load generator takes the other core, and with two
processes keep-alive connections can all land on one of them, which makes runs bimodal.
Uses PostgreSQL database ``bench_auth`` (created if missing) and the development token
issuer: each request carries a real RS256 JWT whose signature the API checks. Rate limits
count every request in Redis (db 13) as in production, with limits too high to refuse;
``--rate-limits memory|off`` to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import redis

from bench.common import ROOT, Server, ensure_database, run_load

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate-limits", choices=("redis", "memory", "off"), default="redis",
                        help="where requests are counted (redis: as in production)")
    args = parser.parse_args()

    instance = tempfile.mkdtemp(prefix="sonicus-bench-")
    env = {"SONICUS_ENV": "development", "DATABASE_URL": ensure_database(f"{PG}/bench_auth"),
           "DEV_TOKEN_ISSUER": "1", "SONICUS_INSTANCE_PATH": instance, "LOG_LEVEL": "WARNING"}
    if args.rate_limits == "off":
        env["RATELIMIT_ENABLED"] = "0"
    else:
        # Every request is counted as in production; the limits are set high enough that
        # this one token's load is never refused.
        env.update(RATELIMIT_ENABLED="1", RATELIMIT_PER_USER="100000/second;10000000/minute",
                   RATELIMIT_PER_IP="100000/second;10000000/minute")
    if args.rate_limits == "redis":
        env["REDIS_URL"] = REDIS
        redis.Redis.from_url(REDIS).flushdb()
    full_env = {**os.environ, **env}
    if args.rate_limits != "redis":
        full_env.pop("REDIS_URL", None)
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=full_env, check=True,
                   capture_output=True)
    token = subprocess.run([*flask, "sonicus", "dev-token", "--email", "bench@example.com"],
                           cwd=ROOT, env=full_env, check=True, capture_output=True,
                           text=True).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    opts = {"workers": args.workers, "threads": args.threads}
    runs = {"bare_flask": [], "profile_authenticated": []}
    ratios = []
    # Both servers up for the whole run; rounds alternate which goes first, so a drift in
    # the machine's speed during the run hits both routes alike.
    with Server("bench.bare_app:app", env, **opts) as bare, \
            Server("wsgi:app", env, **opts) as api:
        for round_no in range(args.rounds):
            order = [("bare_flask", bare.port, "/bare", None),
                     ("profile_authenticated", api.port, "/api/user/profile", headers)]
            if round_no % 2:
                order.reverse()
            result = {}
            for name, port, path, hdrs in order:
                result[name] = run_load(port, "GET", path, headers=hdrs,
                                        concurrency=args.concurrency, duration=args.duration)
                runs[name].append(result[name])
            ratios.append(result["profile_authenticated"]["rps"] / result["bare_flask"]["rps"])
            print(f"round {round_no + 1}: bare {result['bare_flask']['rps']} req/s, "
                  f"profile {result['profile_authenticated']['rps']} req/s, "
                  f"ratio {ratios[-1]:.3f}", file=sys.stderr)

    def median_run(name):
        return sorted(runs[name], key=lambda r: r["rps"])[len(runs[name]) // 2]

    results = {name: median_run(name) for name in runs}
    results["profile_vs_bare"] = round(statistics.median(ratios), 3)
    results["profile_vs_bare_per_round"] = [round(r, 3) for r in ratios]
    results["setup"] = {"gunicorn": f"{args.workers} workers x gthread {args.threads} threads",
                        "concurrency": args.concurrency, "duration_s": args.duration,
                        "rounds": args.rounds, "rate_limits": args.rate_limits}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
