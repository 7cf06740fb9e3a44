"""Faults: PostgreSQL restarted under the running app, answered with 503, then recovered."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from sonicus import create_app

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
