"""Session start against a bare Flask route that does one INSERT and COMMIT, under the shipped
production configuration, in alternating rounds of one run.

    .venv/bin/python -m bench.bench_start_vs_insert [--rounds 5] [--duration 5] [--clients 20]
        [--tier premium] [--users-per-client 25]

Both servers run as production runs the API: ``gunicorn -c gunicorn.conf.py`` (2 gthread
processes, JSON logs at INFO sent to /dev/null), rate limits on and counted in Redis (db 13)
with limits the run never reaches, PostgreSQL database ``bench_start`` migrated from scratch.

- Sonicus: ``POST /api/user/sessions`` with real development tokens. Every client is its own
  set of users (no two clients ever share a user, so no start waits for another's row lock).
  The default tier is Premium (10 sessions a day): every start takes the subscription row
  lock, counts the day's sessions and inserts. A client moves to its next user after 9 starts,
  so every start is a real, successful one (201) and never meets the daily limit; the
  sessions table is emptied between rounds. ``--tier pro`` (unlimited: no count) is the
  comparison.
- bare: ``bench/bare_insert_app.py``, ``POST /bare-insert``: one INSERT of a row shaped like a
  started session (the same columns and indexes, no foreign keys; ``--bare-indexes
  primary-key``: the primary key only) and a COMMIT, through psycopg2 on a pooled connection.

Load: ``wrk -t<clients> -c<clients>`` (one connection per thread: a client) with a Lua script
that gives each client its own users. Each round runs both, in an order that alternates.
Prints each round's requests/s, the ratio Sonicus / bare per round and its median, and checks
that every answer was 201 (the rows in the table match the requests wrk counted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import redis

from bench.bench_rest import start_gunicorn, wait_up
from bench.common import ROOT, ensure_database, free_port

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
STARTS_PER_USER = 9  # below Premium's 10 a day: never refused

BARE_TABLE = """
DROP SCHEMA IF EXISTS bench_bare CASCADE;
CREATE SCHEMA bench_bare;
CREATE TABLE bench_bare.sessions (LIKE sonicus.user_sessions %s);
CREATE SEQUENCE bench_bare.sessions_id_seq OWNED BY bench_bare.sessions.id;
ALTER TABLE bench_bare.sessions ALTER id SET DEFAULT nextval('bench_bare.sessions_id_seq');
"""

LUA = """
local pools = %(pools)s
local path = "%(path)s"
local package_id = %(package_id)d
local bare = %(bare)s
local per_user = %(per_user)d
local next_client = 0

function setup(thread)
  thread:set("client", next_client)
  next_client = next_client + 1
end

function init(args)
  mine = pools[client %% #pools + 1]
  sent = 0
end

function request()
  local user = mine[math.floor(sent / per_user) %% #mine + 1]
  sent = sent + 1
  local body
  if bare then
    body = '{"package_id": ' .. package_id .. ', "user_id": ' .. user[1] .. '}'
  else
    body = '{"package_id": ' .. package_id .. '}'
  end
  return wrk.format("POST", path, {["Content-Type"] = "application/json",
                                   ["Authorization"] = "Bearer " .. user[2]}, body)
end
"""


def lua_pools(pools: list[list[tuple[int, str]]]) -> str:
    return "{" + ",\n".join(
        "{" + ", ".join(f"{{{uid}, {json.dumps(tok)}}}" for uid, tok in pool) + "}"
        for pool in pools) + "}"


def psql(database_url: str, sql: str) -> str:
    return subprocess.run(["psql", database_url, "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def wrk(port: int, script: Path, path: str, clients: int, duration: float) -> dict:
    out = subprocess.run(
        ["wrk", f"-t{clients}", f"-c{clients}", f"-d{round(duration)}s", "--latency",
         "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True).stdout
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)

    def ms(match):
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(total.group(1)), "non_2xx": int(failed.group(1)) if failed else 0,
            "p50_ms": ms(p50), "p99_ms": ms(p99)}


def seed(env: dict, n_users: int, tier: str) -> tuple[int, list[tuple[int, str]]]:
    """The package and ``n_users`` users of ``tier`` with their tokens, in this process with
    the server's settings (its instance folder holds the signing key)."""
    os.environ.update(env)
    from sonicus import create_app
    from sonicus.auth import caller_from_token
    from sonicus.devtokens import mint
    from sonicus.extensions import db
    from sonicus.models import SoundPackage
    from sonicus.services.admin_users import grant_tier_from_cli
    from sonicus.services.catalog import seed_catalog

    app = create_app()
    users = []
    with app.test_request_context():
        seed_catalog([{"slug": "bench-rain", "title": "Bench Rain", "category": "sleep",
                       "published": True,
                       "tracks": [{"title": "Rain", "duration_seconds": 1800,
                                   "media_path": "sleep/bench/rain.mp3"}]}])
        package_id = db.session.query(SoundPackage.id).scalar()
        for i in range(n_users):
            token = mint(app, email=f"start{i}@example.com")
            user_id = caller_from_token(token).id
            if tier != "starter":
                grant_tier_from_cli(user_id, tier)
            users.append((user_id, token))
        db.session.remove()
        db.engine.dispose()
    return package_id, users


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--tier", default="premium", choices=("premium", "pro"))
    parser.add_argument("--users-per-client", type=int, default=25)
    parser.add_argument("--bare-indexes", default="same", choices=("same", "primary-key"),
                        help="the bare table's indexes: those of user_sessions, or its "
                             "primary key only")
    parser.add_argument("--log-level", default="INFO",
                        help="the app's LOG_LEVEL (production: INFO)")
    args = parser.parse_args()

    port_api, port_bare = free_port(), free_port()
    database = ensure_database(f"{PG}/bench_start")
    env = {"SONICUS_ENV": "development", "DATABASE_URL": database, "REDIS_URL": REDIS,
           "DEV_TOKEN_ISSUER": "1", "SONICUS_INSTANCE_PATH": tempfile.mkdtemp(prefix="sonicus-"),
           "PUBLIC_BASE_URL": f"http://127.0.0.1:{port_api}", "LOG_LEVEL": args.log_level,
           "RATELIMIT_ENABLED": "1", "RATELIMIT_PER_USER": "100000/second;10000000/minute",
           "RATELIMIT_PER_IP": "100000/second;10000000/minute",
           "MEDIA_BASE_URL": "https://media.example.com", "MEDIA_URL_SECRET": "bench-secret",
           "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="sonicus-bench-metrics-"),
           "BARE_INSERT_DSN": database}
    for name in ("OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_JWKS_URL"):
        os.environ.pop(name, None)
    redis.Redis.from_url(REDIS).flushdb()
    psql(database, "DROP SCHEMA IF EXISTS sonicus CASCADE; "
                   "DROP SCHEMA IF EXISTS bench_bare CASCADE")
    subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT,
                   env={**os.environ, **env}, check=True, capture_output=True)
    psql(database, BARE_TABLE % ("INCLUDING INDEXES" if args.bare_indexes == "same" else ""))
    if args.bare_indexes == "primary-key":
        psql(database, "ALTER TABLE bench_bare.sessions ADD PRIMARY KEY (id)")
    n_users = args.clients * args.users_per_client
    print(f"seeding {n_users} {args.tier} users...", file=sys.stderr, flush=True)
    package_id, users = seed(env, n_users, args.tier)
    pools = [users[c::args.clients] for c in range(args.clients)]
    scripts = {}
    for name, path, bare in (("sonicus", "/api/user/sessions", False),
                             ("bare", "/bare-insert", True)):
        script = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".lua")[1])
        script.write_text(LUA % {"pools": lua_pools(pools), "path": path,
                                 "package_id": package_id, "bare": str(bare).lower(),
                                 "per_user": STARTS_PER_USER})
        scripts[name] = script
    tables = {"sonicus": "sonicus.user_sessions", "bare": "bench_bare.sessions"}
    capacity = args.users_per_client * STARTS_PER_USER  # starts a client may make per run

    procs = {"sonicus": start_gunicorn("wsgi:app", env, port_api),
             "bare": start_gunicorn("bench.bare_insert_app:app", env, port_bare)}
    ports = {"sonicus": port_api, "bare": port_bare}
    runs: dict[str, list[dict]] = {"sonicus": [], "bare": []}
    try:
        wait_up(port_api, "/api/health")
        wait_up(port_bare, "/api/health")
        for name in ("bare", "sonicus"):  # warm: token checks, pools, connections
            wrk(ports[name], scripts[name], "/", args.clients, 2)
        names = ["bare", "sonicus"]
        for round_no in range(args.rounds):
            for name in (names if round_no % 2 == 0 else names[::-1]):
                psql(database, f"TRUNCATE {tables[name]}")
                result = wrk(ports[name], scripts[name], "/", args.clients, args.duration)
                result["rows"] = int(psql(database, f"SELECT count(*) FROM {tables[name]}"))
                if result["requests"] > capacity * args.clients * 0.9:
                    print(f"  warning: {result['requests']} requests approach the users' "
                          f"quota; raise --users-per-client", file=sys.stderr)
                runs[name].append(result)
            print(f"round {round_no + 1}: " + ", ".join(
                f"{n} {runs[n][-1]['rps']:.0f} req/s (p50 {runs[n][-1]['p50_ms']:.1f} ms, "
                f"non-2xx {runs[n][-1]['non_2xx']}, rows {runs[n][-1]['rows']})"
                for n in names), file=sys.stderr, flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for script in scripts.values():
            script.unlink(missing_ok=True)

    ratios = [s["rps"] / b["rps"] for s, b in zip(runs["sonicus"], runs["bare"], strict=True)]
    print(f"POST /api/user/sessions ({args.tier} users, {args.clients} clients each its own "
          f"users) vs one INSERT+COMMIT (bare table indexes: {args.bare_indexes}); "
          f"production configuration (gunicorn.conf.py: 2 "
          f"processes x gthread, LOG_LEVEL={args.log_level}, rate limits in Redis); "
          f"wrk -t{args.clients} -c{args.clients}, {args.rounds} rounds of "
          f"{args.duration:.0f} s; load average {os.getloadavg()[0]:.1f}:")
    for name in names:
        rps = [r["rps"] for r in runs[name]]
        print(f"  {name:8s} median {statistics.median(rps):7.0f} req/s  rounds "
              + ", ".join(f"{r:.0f}" for r in rps)
              + f"  (non-2xx {sum(r['non_2xx'] for r in runs[name])})")
    print(f"  Sonicus / bare: median {statistics.median(ratios):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
