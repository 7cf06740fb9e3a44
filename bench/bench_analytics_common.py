"""Shared set-up of the analytics benchmarks: a bench database, seeded listening data."""

from __future__ import annotations

import os
import random
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/bench_analytics")
BENCH_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def bench_env() -> dict:
    """Settings for every process of a benchmark (development tokens, the bench database)."""
    return {"SONICUS_ENV": "development", "DATABASE_URL": BENCH_DATABASE_URL,
            "REDIS_URL": BENCH_REDIS_URL, "DEV_TOKEN_ISSUER": "true",
            "RATELIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"}


def ensure_database(url: str = BENCH_DATABASE_URL) -> None:
    from bench.common import ensure_database as create_if_missing

    create_if_missing(url)


def make_bench_app():
    os.environ.update(bench_env())
    from sonicus import create_app

    return create_app()


def reset_schema(app) -> None:
    from flask_migrate import upgrade
    from sqlalchemy import text

    from sonicus.extensions import db

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
        upgrade()
    import redis

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()  # cached figures of the old rows


def seed(app, *, target_sessions: int, other_users: int, sessions_per_other: int,
         packages: int = 40, seed_value: int = 7) -> int:
    """One listener with ``target_sessions`` sessions (and others with theirs); their id."""
    from sqlalchemy import insert, text

    from sonicus.extensions import db
    from sonicus.models import ListeningSession, SoundPackage, User

    rng = random.Random(seed_value)
    with app.app_context():
        db.session.execute(insert(SoundPackage), [
            {"slug": f"package-{i}", "title": f"Package {i}", "description": "",
             "category": f"category-{i % 8}", "minimum_tier": "public", "published": True,
             "duration_seconds": 1200, "track_count": 1, "popularity": rng.randint(0, 1000)}
            for i in range(packages)])
        db.session.execute(insert(User), [
            {"oidc_sub": f"dev|bench-{i}@example.com", "email": f"bench-{i}@example.com",
             "email_verified": True, "timezone": "Europe/Berlin", "day_start_hour": 3,
             "preferences": {}, "role": "user", "is_active": True}
            for i in range(other_users + 1)])
        db.session.commit()
        package_ids = list(db.session.execute(text("SELECT id FROM sonicus.sound_packages"))
                           .scalars())
        user_ids = list(db.session.execute(
            text("SELECT id FROM sonicus.users ORDER BY id")).scalars())
        target = user_ids[0]
        today = date.today()

        def rows(user_id, count, days):
            for _ in range(count):
                day = today - timedelta(days=rng.randrange(days))
                started = datetime(day.year, day.month, day.day, rng.randrange(24),
                                   tzinfo=UTC)
                listened = rng.randrange(60, 3600)
                with_mood = rng.random() < 0.6
                yield {"user_id": user_id, "package_id": rng.choice(package_ids),
                       "tier": "pro", "status": "ended", "started_at": started,
                       "local_day": day, "ended_at": started + timedelta(seconds=listened),
                       "listened_seconds": listened, "completed": rng.random() < 0.8,
                       "counts_toward_quota": True,
                       "mood_before": rng.randint(1, 10) if with_mood else None,
                       "mood_after": rng.randint(1, 10) if with_mood else None}

        def flush(batch):
            db.session.execute(insert(ListeningSession), batch)
            db.session.commit()

        batch = []
        plan = [(target, target_sessions, 1500)] + [
            (uid, sessions_per_other, 365) for uid in user_ids[1:]]
        for user_id, count, days in plan:
            for row in rows(user_id, count, days):
                batch.append(row)
                if len(batch) >= 5000:
                    flush(batch)
                    batch = []
        if batch:
            flush(batch)
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))
    return target


def percentile(values, pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def spawn_gunicorn(argv, env: dict, log=None):
    """``gunicorn *argv`` bound to a free port (``127.0.0.1:0``), from the checkout, with
    ``env`` on top of this environment; returns (process, port) once its worker boots. The
    rest of its stderr goes to ``log`` (a file), or nowhere."""
    import re
    import subprocess
    import threading

    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), *argv, "--bind", "127.0.0.1:0",
         "--no-control-socket", "--graceful-timeout", "3"],
        cwd=ROOT, env={**os.environ, **env}, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if "Booting worker" in line:
            break
    if port is None:
        proc.kill()
        raise RuntimeError("gunicorn did not start")
    write = log.write if log is not None else (lambda line: None)
    threading.Thread(target=lambda: [write(line) for line in proc.stderr], daemon=True).start()
    return proc, port


def start_gunicorn(*, threads: int = 64, connections: int = 1000, extra=()):
    """One gunicorn web process (gthread) on a free port; returns (process, port)."""
    argv = ["-w", "1", "-k", "gthread", "--threads", str(threads), "--worker-connections",
            str(connections), "--log-level", "info", "--timeout", "120", *extra, "wsgi:app"]
    return spawn_gunicorn(argv, {**bench_env(), "WS_MAX_SOCKETS_PER_PROCESS": str(connections)})


def start_worker(*args: str):
    import subprocess

    log = open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "w")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "worker.py", *args], cwd=ROOT,
                            env={**os.environ, **bench_env()}, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_http(url: str, timeout: float = 30) -> None:
    import time as _time

    import requests

    deadline = _time.time() + timeout
    while _time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code < 500:
                return
        except requests.RequestException:
            pass
        _time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def stop_process(proc, timeout: float = 15) -> None:
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
