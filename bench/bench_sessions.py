"""Session start latency under concurrent clients, against a real gunicorn + PostgreSQL.

    .venv/bin/python bench/bench_sessions.py [--clients 20] [--requests 2000]
        [--database postgresql://postgres@127.0.0.1:5432/bench_catalog] [--workers 2 --threads 8]

What it does: creates the bench database if missing and migrates it from scratch, seeds one
package and one premium user per 10 requests (premium: 10 sessions a day, so every start takes
the row lock, counts today's sessions and inserts), mints tokens with the development issuer,
starts gunicorn (gthread, --no-control-socket) on a free port, and fires ``POST
/api/user/sessions`` from N client threads (keep-alive HTTP). Reports p50/p95/p99/max and
throughput for:

  A. distinct users (the normal case: each user's lock is uncontended);
  B. all clients on ONE pro user (the worst case: every start waits for the same row lock).

The other bench scripts import the server helpers from here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402

DEFAULT_DB = "postgresql://postgres@127.0.0.1:5432/bench_catalog"


def bench_env(database_url: str) -> dict:
    env = dict(os.environ)
    env.update({"SONICUS_ENV": "development", "DATABASE_URL": database_url,
                "DEV_TOKEN_ISSUER": "true", "RATELIMIT_ENABLED": "false",
                "LOG_LEVEL": "WARNING", "MEDIA_BASE_URL": "https://media.example.com",
                "MEDIA_URL_SECRET": "bench-secret"})
    for name in ("REDIS_URL", "OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_JWKS_URL"):
        env.pop(name, None)
    return env


def make_bench_app(database_url: str):
    """The app as the server will see it (same env), for seeding and minting tokens."""
    os.environ.update(bench_env(database_url))
    for name in ("REDIS_URL", "OIDC_ISSUER", "OIDC_AUDIENCE", "OIDC_JWKS_URL"):
        os.environ.pop(name, None)
    from sonicus import create_app

    return create_app()


def reset_database(app, database_url: str) -> None:
    """Create the database when missing, drop our schema and migrate from scratch."""
    from flask_migrate import upgrade
    from sqlalchemy import text

    from bench.common import ensure_database
    from sonicus.extensions import db

    ensure_database(database_url)
    with app.app_context():
        with db.engine.begin() as c:
            c.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
        upgrade()
        db.engine.dispose()


def _queue_redis() -> str:
    """The server's Redis (``BENCH_REDIS``, default db 13), flushed: jobs a request enqueues
    (a start's analytics refresh) wait there, as in a deployment, instead of running inside
    the request as on the embedded default without Redis."""
    import redis

    redis_url = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


class Server:
    """gunicorn (gthread) serving wsgi:app on a free port, stopped by its own pid, with a Redis
    for its job queue (rate limits off).

    ``production``: as shipped instead (``gunicorn -c gunicorn.conf.py``: 2 gthread processes
    of 256 threads, the access log at INFO, sent to /dev/null), with Redis (``BENCH_REDIS``,
    default db 13, flushed) and rate limits on, with limits a benchmark never reaches;
    ``workers`` and ``threads`` are then the configuration's."""

    def __init__(self, database_url: str, workers: int, threads: int, *,
                 production: bool = False):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if production:
            self.proc = self._production(database_url)
        else:
            self.proc = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "gunicorn"), "-k", "gthread",
                 "--workers", str(workers), "--threads", str(threads), "--no-control-socket",
                 "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning", "wsgi:app"],
                cwd=ROOT, env={**bench_env(database_url), "REDIS_URL": _queue_redis()})
        deadline = time.monotonic() + (60 if production else 30)
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("gunicorn did not come up")

    def _production(self, database_url: str) -> subprocess.Popen:
        env = {**bench_env(database_url), "REDIS_URL": _queue_redis(), "LOG_LEVEL": "INFO",
               "RATELIMIT_ENABLED": "1", "RATELIMIT_PER_USER": "100000/second;10000000/minute",
               "RATELIMIT_PER_IP": "100000/second;10000000/minute",
               "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="sonicus-bench-metrics-")}
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
             f"127.0.0.1:{self.port}", "--no-control-socket", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def mint_tokens(app, emails, tier: str | None) -> list[str]:
    from sonicus.auth import caller_from_token
    from sonicus.devtokens import mint
    from sonicus.extensions import db
    from sonicus.services.admin_users import grant_tier_from_cli

    tokens = []
    with app.test_request_context():
        for email in emails:
            token = mint(app, email=email)
            if tier is not None:
                grant_tier_from_cli(caller_from_token(token).id, tier)
            tokens.append(token)
        db.session.remove()
    return tokens


def summarise(label: str, latencies: list[float], wall: float, statuses: dict) -> None:
    ordered = sorted(latencies)

    def pct(p):
        return ordered[min(len(ordered) - 1, int(round(p / 100 * len(ordered))) - 1)] * 1000

    print(f"{label}: n={len(ordered)} statuses={dict(sorted(statuses.items()))} "
          f"p50={pct(50):.1f}ms p95={pct(95):.1f}ms p99={pct(99):.1f}ms "
          f"max={ordered[-1] * 1000:.1f}ms mean={statistics.mean(ordered) * 1000:.1f}ms "
          f"throughput={len(ordered) / wall:.0f} req/s")


def run_load(clients: int, jobs: list[tuple[str, str, dict | None, str]]):
    """Run (method, url, json, token) jobs from ``clients`` threads with keep-alive."""
    local = threading.local()
    latencies, statuses, lock = [], {}, threading.Lock()

    def one(job):
        method, url, body, token = job
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        started = time.perf_counter()
        res = session.request(method, url, json=body,
                              headers={"Authorization": f"Bearer {token}"}, timeout=30)
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            statuses[res.status_code] = statuses.get(res.status_code, 0) + 1

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, jobs))
    return latencies, time.perf_counter() - started, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default=DEFAULT_DB)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    app = make_bench_app(args.database)
    reset_database(app, args.database)
    with app.app_context():
        from sonicus.services.catalog import seed_catalog

        seed_catalog([{"slug": "bench-rain", "title": "Bench Rain", "category": "sleep",
                       "published": True,
                       "tracks": [{"title": "Rain", "duration_seconds": 1800,
                                   "media_path": "sleep/bench/rain.mp3"}]}])
        from sonicus.extensions import db
        from sonicus.models import SoundPackage

        package_id = db.session.query(SoundPackage.id).scalar()
        db.session.remove()

    n_users = max(args.clients, args.requests // 10)
    print(f"minting {n_users} premium users...", flush=True)
    tokens = mint_tokens(app, [f"bench{i}@example.com" for i in range(n_users)], "premium")
    pro_token = mint_tokens(app, ["bench-pro@example.com"], "pro")[0]

    server = Server(args.database, args.workers, args.threads)
    try:
        url = server.url + "/api/user/sessions"
        body = {"package_id": package_id}
        # warm up every worker and connection (a pro user: not counted against anyone)
        run_load(args.clients, [("POST", url, body, pro_token)] * (args.clients * 5))
        # A: each request for a different user until every user has 10 sessions
        jobs = [("POST", url, body, tokens[i % n_users]) for i in range(args.requests)]
        latencies, wall, statuses = run_load(args.clients, jobs)
        summarise(f"A. POST /api/user/sessions, {args.clients} clients, distinct premium "
                  f"users", latencies, wall, statuses)
        # B: everyone on one user: every start queues on the same row lock
        jobs = [("POST", url, body, pro_token)] * (args.requests // 2)
        latencies, wall, statuses = run_load(args.clients, jobs)
        summarise(f"B. POST /api/user/sessions, {args.clients} clients, ONE pro user",
                  latencies, wall, statuses)
    finally:
        server.stop()
    print(f"server: gunicorn -k gthread --workers {args.workers} --threads {args.threads}; "
          f"database {args.database.rsplit('/', 1)[1]}; machine: {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
