"""Faults: PostgreSQL restarted under the running app, answered with 503, then recovered; the
app's connections dropped by the server (pg_terminate_backend) under a real gunicorn."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest
import requests
from processes import start_gunicorn, stop_group

from sonicus import create_app

ROOT = Path(__file__).resolve().parent.parent

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [None]
PG_BIN = BIN[0]


def _as_postgres(*cmd):
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(prefix + list(cmd), capture_output=True, text=True, timeout=60)


class TempPostgres:
    """A throwaway PostgreSQL cluster on a free port, so it can be stopped and started."""

    def __init__(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="sonicus-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        out = _as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres")
        assert out.returncode == 0, out.stderr
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self):
        out = _as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-w", "-l",
                           os.path.join(self.dir, "log"), "-o",
                           f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                           "start")
        assert out.returncode == 0, out.stderr + out.stdout

    def stop(self):
        _as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-w", "-m", "fast", "stop")

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def temp_postgres():
    if PG_BIN is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    pg = TempPostgres()
    pg.start()
    yield pg
    pg.cleanup()


def test_postgres_restart_gives_503_then_recovers(idp, temp_postgres, make_config):
    from flask_migrate import upgrade

    app = create_app(make_config(DATABASE_URL=temp_postgres.url))
    with app.app_context():
        upgrade()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {idp.token(email='steady@example.com')}"}
    assert client.get("/api/user/profile", headers=headers).status_code == 200

    temp_postgres.stop()
    started = time.monotonic()
    newcomer = {"Authorization": f"Bearer {idp.token(email='newcomer@example.com')}"}
    for path, hdrs in (("/api/user/profile", newcomer), ("/api/user/export", headers),
                       ("/api/user/sessions", headers)):
        res = client.get(path, headers=hdrs)
        assert res.status_code == 503, res.json
        assert res.json["code"] == "service_unavailable"
        assert res.headers["Retry-After"]
    assert time.monotonic() - started < 20  # failing fast, not hanging
    ready = client.get("/api/ready")
    assert ready.status_code == 503 and "database: unreachable" in ready.json["errors"]
    assert client.get("/api/health").status_code == 200  # liveness is unaffected

    temp_postgres.start()
    res = client.get("/api/user/profile", headers=headers)
    assert res.status_code == 200
    assert res.json["data"]["email"] == "steady@example.com"
    assert client.get("/api/ready").status_code == 200


def _terminate_backends(database_url) -> int:
    """pg_terminate_backend on every other connection to this test's database only (an
    operator's kill, a pooler's or a failover's drop; the server keeps running)."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            return cur.fetchone()[0]
    finally:
        conn.close()


def test_a_keyed_write_refused_by_a_dropped_connection_runs_on_its_first_retry(
        idp, test_database_url, test_redis_url, tmp_path, token_for, make_package, db_session):
    """The database drops the web process's connections: the next keyed write answers 503
    (its transaction's connection was dead) and gives its key back, so the client's retry
    with the same key runs at once. The key was given back on a dead pooled connection of the
    keys' own, failed, and stayed ``running``: the retries got 409 for a minute."""
    from sonicus.extensions import db

    package = make_package("rain")
    db_session.commit()
    proc, port = start_gunicorn(ROOT, idp, test_database_url, test_redis_url,
                                tmp_path / "metrics", threads=4)
    url = f"http://127.0.0.1:{port}/api/user/sessions"
    headers = {"Authorization": f"Bearer {token_for('dropped@example.com')}"}
    try:
        def start(key, timeout=10):
            return requests.post(url, json={"package_id": package.id, "mood_before": 5},
                                 headers={**headers, "Idempotency-Key": key}, timeout=timeout)

        assert start("warm").status_code == 201
        assert start("warm").status_code == 201  # a replay: the keys' pool holds a connection
        assert _terminate_backends(test_database_url) >= 1

        statuses = []
        for _ in range(3):
            answer = start("after-the-drop")
            statuses.append(answer.status_code)
            if answer.status_code < 500:
                break
        assert statuses in ([201], [503, 201]), statuses
    finally:
        stop_group(proc)
        db_session.remove()
        db.engine.dispose()  # this test's own connections were dropped too


def test_readiness_after_the_database_dropped_the_connections_says_ready(
        idp, test_database_url, test_redis_url, tmp_path, db_session):
    """The database is up but dropped the web process's pooled connections (a failover, a
    pooler's restart, pg_terminate_backend): ``/api/ready`` answers 200 on a fresh connection.
    It said "database: unreachable" (503) on the dead one, and a readiness probe taking every
    pod out at the same moment turns a dropped connection into an outage."""
    from sonicus.extensions import db

    proc, port = start_gunicorn(ROOT, idp, test_database_url, test_redis_url,
                                tmp_path / "metrics", threads=4)
    url = f"http://127.0.0.1:{port}/api/ready"
    try:
        assert requests.get(url, timeout=10).status_code == 200
        assert _terminate_backends(test_database_url) >= 1
        ready = requests.get(url, timeout=10)
        assert ready.status_code == 200, ready.text
    finally:
        stop_group(proc)
        db_session.remove()
        db.engine.dispose()  # this test's own connections were dropped too
