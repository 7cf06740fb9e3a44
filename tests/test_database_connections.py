"""The database connections a process may open: settings whose shipped defaults keep every
process type together under PostgreSQL's ``max_connections``, and a request that finds them
all taken (or PostgreSQL full) answered 503 ``service_unavailable`` with ``Retry-After`` within
``DATABASE_POOL_TIMEOUT_SECONDS``, never a 500 or a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

import config
from sonicus import create_app

ROOT = Path(__file__).resolve().parent.parent
POSTGRESQL_MAX_CONNECTIONS = 100  # PostgreSQL's default
SUPERUSER_RESERVED = 3  # PostgreSQL's default superuser_reserved_connections
HEADROOM = 10  # migrations, a flask shell, psql, an admin's dump


def _tiny_pool(make_config, **extra):
    return create_app(make_config(DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0,
                                  DATABASE_POOL_TIMEOUT_SECONDS=1, **extra))


class _Held:
    """Every connection of ``app``'s pool (one) taken by another thread until ``release``."""

    def __init__(self, app):
        from sonicus.extensions import db

        self._taken, self._release = threading.Event(), threading.Event()

        def hold():
            with app.app_context(), db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                self._taken.set()
                self._release.wait(30)

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()
        assert self._taken.wait(10)

    def release(self):
        self._release.set()
        self._thread.join(10)


def _assert_unavailable(res, started):
    assert res.status_code == 503, res.json
    assert res.json["code"] == "service_unavailable"
    assert res.json["success"] is False and res.json["errors"]
    assert int(res.headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 4  # the pool's timeout (1 s), not a hang


def test_a_request_that_finds_every_database_connection_taken_answers_503_with_retry_after(
        make_config, auth):
    app = _tiny_pool(make_config)
    client = app.test_client()
    held = _Held(app)
    try:
        started = time.monotonic()
        res = client.get("/api/user/profile", headers=auth("waiting@example.com"))
        _assert_unavailable(res, started)
    finally:
        held.release()
    assert client.get("/api/user/profile", headers=auth("waiting@example.com")).status_code == 200


def test_a_keyed_write_that_finds_every_database_connection_taken_answers_503_and_its_retry_runs(
        make_config, auth, make_package, db_session):
    from sonicus.services import idempotency

    package = make_package("rain")
    db_session.commit()
    app = _tiny_pool(make_config)
    client = app.test_client()
    headers = {**auth("keyed@example.com"), "Idempotency-Key": "start-1"}
    body = {"package_id": package.id, "mood_before": 5}
    assert client.get("/api/user/profile", headers=headers).status_code == 200  # the account
    held = _Held(app)
    try:
        started = time.monotonic()
        _assert_unavailable(client.post("/api/user/sessions", json=body, headers=headers),
                            started)
    finally:
        held.release()
    res = client.post("/api/user/sessions", json=body, headers=headers)
    assert res.status_code == 201, res.json  # the key was given back: its retry runs
    with app.app_context():
        idempotency.settle_answers()


@pytest.fixture
def refused_role(test_database_url):
    """A role PostgreSQL lets in no more connections for: refused with SQLSTATE 53300, the
    code of "sorry, too many clients already" (a superuser is exempt from role limits)."""
    name = f"sonicus_full_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(test_database_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT 0")
    try:
        yield make_url(test_database_url).set(username=name).render_as_string(
            hide_password=False)
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP ROLE IF EXISTS {name}")
        admin.close()


def test_a_request_postgresql_refuses_for_too_many_connections_answers_503_with_retry_after(
        make_config, auth, refused_role):
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(refused_role).close()
    assert refused.value.pgcode in (None, "53300")  # the same refusal as a full server
    app = create_app(make_config(DATABASE_URL=refused_role))
    client = app.test_client()
    started = time.monotonic()
    _assert_unavailable(client.get("/api/user/profile", headers=auth("full@example.com")),
                        started)
    started = time.monotonic()
    _assert_unavailable(
        client.post("/api/user/sessions", json={"package_id": 1, "mood_before": 5},
                    headers={**auth("full@example.com"), "Idempotency-Key": "full-1"}),
        started)


def test_the_keys_connections_at_their_maximum_wait_for_one_given_back_then_give_up(
        test_database_url):
    from sonicus.services.keys_connections import KeysConnections

    connections = KeysConnections(test_database_url, "SELECT 1", max_open=1, keep_idle=1,
                                  wait_seconds=0.5)
    try:
        first = connections.start("SELECT %s", (1,))
        started = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            connections.fetch("SELECT %s", (2,))  # the one connection is taken: no second
        assert 0.4 < time.monotonic() - started < 3
        result: list = []
        waiting = threading.Thread(
            target=lambda: result.append(connections.fetch("SELECT %s", (3,))))
        waiting.start()
        time.sleep(0.1)
        assert first.result() == 1  # given back: the waiting one takes it
        waiting.join(5)
        assert result == [3]
        assert connections._open == 1
    finally:
        connections.close_idle()


def _gunicorn_workers(process_type: str, settings: dict | None = None) -> int:
    """``workers`` as gunicorn.conf.py sets it for that process type with nothing set (or
    with ``settings``)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("WEB_CONCURRENCY", "WS_CONCURRENCY")}
    env.update(settings or {})
    env["SONICUS_PROCESS"] = process_type
    out = subprocess.run(
        [sys.executable, "-c", "import json, runpy; "
         "print(json.dumps(runpy.run_path('gunicorn.conf.py')['workers']))"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _shipped_defaults(process_type: str) -> dict:
    return config.load_config(config.process_database_defaults(process_type, {}))


def test_the_shipped_topology_stays_under_postgresql_max_connections_with_headroom():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = compose["worker"].get("deploy", {}).get("replicas", 1)
    processes = {"web": _gunicorn_workers("web"), "ws": _gunicorn_workers("ws"),
                 "worker": workers}
    assert processes["web"] >= 2 and processes["ws"] >= 1 and processes["worker"] >= 1
    at_most = {kind: config.database_connections_at_most(_shipped_defaults(kind), kind)
               for kind in processes}
    # every kind can work: a web request, a socket's checks, a worker's job with its pushes
    assert all(count > 0 for count in at_most.values())
    worker = _shipped_defaults("worker")
    assert (worker["DATABASE_POOL_SIZE"] + worker["DATABASE_MAX_OVERFLOW"]
            > worker["WEBPUSH_CONCURRENCY"])
    assert _shipped_defaults("web")["IDEMPOTENCY_CONNECTIONS_MAX_OPEN"] >= 2
    total = sum(at_most[kind] * count for kind, count in processes.items())
    assert total + HEADROOM <= POSTGRESQL_MAX_CONNECTIONS - SUPERUSER_RESERVED, (at_most, total)


def _kubernetes_base() -> dict[tuple[str, str], dict]:
    base = ROOT / "deploy/kubernetes/base"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((base / name).read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def test_the_kubernetes_base_stays_under_postgresql_max_connections_with_headroom():
    """Every Deployment of deploy/kubernetes/base at its replicas: pods × processes per pod
    (gunicorn's workers from the ConfigMap, a worker pod's one worker) × what one process may
    hold with its settings (the ConfigMap, the Deployment's own env, the process type's
    defaults). The web autoscaler's growth past that is the operator's (README)."""
    kinds = _kubernetes_base()
    shared = kinds[("ConfigMap", "sonicus-config")]["data"]
    total, at_most = 0, {}
    for (kind, name), deployment in kinds.items():
        if kind != "Deployment":
            continue
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {**shared, **{e["name"]: e["value"] for e in container.get("env", [])}}
        if container["command"] == ["python", "worker.py"]:
            process_type, processes = "worker", 1
        else:
            process_type = env.get("SONICUS_PROCESS", "web")
            processes = _gunicorn_workers(process_type, env)
        settings = config.load_config(config.process_database_defaults(process_type, env))
        assert settings["IDEMPOTENCY_CONNECTIONS_KEEP_IDLE"] <= \
            settings["IDEMPOTENCY_CONNECTIONS_MAX_OPEN"], name
        if process_type == "web":
            assert settings["IDEMPOTENCY_CONNECTIONS_MAX_OPEN"] >= 2
        if process_type == "worker":  # a reminder job's pushes each hold one beside the job's
            assert (settings["DATABASE_POOL_SIZE"] + settings["DATABASE_MAX_OVERFLOW"]
                    > settings["WEBPUSH_CONCURRENCY"])
        at_most[name] = (deployment["spec"]["replicas"], processes,
                         config.database_connections_at_most(settings, process_type))
        total += deployment["spec"]["replicas"] * processes * at_most[name][2]
    assert {"sonicus-web", "sonicus-ws", "sonicus-worker"} <= set(at_most)
    assert all(count > 0 for _, _, count in at_most.values())
    assert total + HEADROOM <= POSTGRESQL_MAX_CONNECTIONS - SUPERUSER_RESERVED, (at_most, total)


def test_the_pool_timeout_is_a_few_seconds_and_applied_to_both_engines(make_config):
    from sonicus.extensions import db
    from sonicus.services import idempotency

    assert 0 < config.load_config({})["DATABASE_POOL_TIMEOUT_SECONDS"] <= 5
    app = create_app(make_config(DATABASE_POOL_SIZE=3, DATABASE_MAX_OVERFLOW=2,
                                 DATABASE_POOL_TIMEOUT_SECONDS=2, IDEMPOTENCY_POOL_SIZE=2,
                                 IDEMPOTENCY_MAX_OVERFLOW=1))
    with app.app_context():
        pool = db.engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 2, 2)
        keys = idempotency._engine().pool
        assert (keys.size(), keys._max_overflow, keys._timeout) == (2, 1, 2)


@pytest.mark.parametrize("name, value", [
    ("DATABASE_POOL_SIZE", "0"), ("DATABASE_MAX_OVERFLOW", "-1"),
    ("DATABASE_POOL_TIMEOUT_SECONDS", "0"), ("DATABASE_POOL_TIMEOUT_SECONDS", "0.5"),
    ("IDEMPOTENCY_POOL_SIZE", "0"),
    ("IDEMPOTENCY_MAX_OVERFLOW", "-1"), ("IDEMPOTENCY_CONNECTIONS_MAX_OPEN", "1"),
    ("IDEMPOTENCY_CONNECTIONS_KEEP_IDLE", "0"), ("DATABASE_POOL_SIZE", "many"),
])
def test_a_database_pool_setting_out_of_range_is_refused_naming_it(name, value):
    with pytest.raises(config.ConfigError, match=name):
        config.validate_config(config.load_config({name: value}))


def test_a_worker_takes_its_own_pool_sizes_unless_the_environment_sets_them(make_config):
    from sonicus.extensions import db
    from worker import worker_database_settings

    own = worker_database_settings({})
    assert own == {"DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 8,
                   "IDEMPOTENCY_POOL_SIZE": 1, "IDEMPOTENCY_MAX_OVERFLOW": 0}
    assert worker_database_settings({"DATABASE_MAX_OVERFLOW": "12"})["DATABASE_MAX_OVERFLOW"] == 12
    app = create_app(make_config(**own, SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True}))
    with app.app_context():
        pool = db.engine.pool
        assert (pool.size(), pool._max_overflow, pool._pre_ping) == (1, 8, True)
