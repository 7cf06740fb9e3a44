"""Authenticated GET /api/user/profile vs a bare Flask JSON route, both under gunicorn.

Run: .venv/bin/python -m bench.bench_auth [--duration 15] [--concurrency 16] [--workers 1]

One gunicorn process by default: the load generator takes the other core, and with two
processes keep-alive connections can all land on one of them, which makes runs bimodal.
Uses PostgreSQL database ``bench_auth`` (created if missing) and the development token
issuer: each request carries a real RS256 JWT whose signature the API checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import psycopg2

from bench.common import ROOT, Server, run_load

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")


def ensure_database(name: str) -> str:
    conn = psycopg2.connect(PG + "/postgres")
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
    if not cur.fetchone():
        cur.execute(f"CREATE DATABASE {name}")
    conn.close()
    return f"{PG}/{name}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    instance = tempfile.mkdtemp(prefix="sonicus-bench-")
    env = {"SONICUS_ENV": "development", "DATABASE_URL": ensure_database("bench_auth"),
           "DEV_TOKEN_ISSUER": "1", "SONICUS_INSTANCE_PATH": instance, "LOG_LEVEL": "WARNING",
           "RATELIMIT_ENABLED": "0"}
    env.pop("REDIS_URL", None)
    full_env = {**os.environ, **env}
    full_env.pop("REDIS_URL", None)
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=full_env, check=True,
                   capture_output=True)
    token = subprocess.run([*flask, "sonicus", "dev-token", "--email", "bench@example.com"],
                           cwd=ROOT, env=full_env, check=True, capture_output=True,
                           text=True).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    results = {}
    opts = {"workers": args.workers, "threads": args.threads}
    with Server("bench.bare_app:app", env, **opts) as bare:
        results["bare_flask"] = run_load(bare.port, "GET", "/bare",
                                         concurrency=args.concurrency, duration=args.duration)
    with Server("wsgi:app", env, **opts) as api:
        results["profile_authenticated"] = run_load(
            api.port, "GET", "/api/user/profile", headers=headers,
            concurrency=args.concurrency, duration=args.duration)
    ratio = results["profile_authenticated"]["rps"] / results["bare_flask"]["rps"]
    results["profile_vs_bare"] = round(ratio, 3)
    results["setup"] = {"gunicorn": f"{args.workers} workers x gthread {args.threads} threads",
                        "concurrency": args.concurrency, "duration_s": args.duration}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
