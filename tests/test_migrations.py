"""The migrations build every table from empty, on PostgreSQL and on SQLite, with no drift."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import create_engine, inspect

ROOT = Path(__file__).resolve().parent.parent


def _flask(*args, env):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def empty_database(test_database_url):
    name = f"sonicus_mig_{uuid.uuid4().hex[:8]}"
    admin_url = test_database_url.rsplit("/", 1)[0] + "/postgres"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield test_database_url.rsplit("/", 1)[0] + "/" + name
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def test_upgrade_from_empty_postgresql_then_no_drift(empty_database):
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": empty_database,
           "DEV_TOKEN_ISSUER": "1"}
    env.pop("REDIS_URL", None)
    up = _flask("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    check = _flask("db", "check", env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    engine = create_engine(empty_database.replace("postgresql://", "postgresql+psycopg2://"))
    tables = set(inspect(engine).get_table_names(schema="sonicus"))
    engine.dispose()
    assert {"users", "user_subscriptions", "subscription_events", "sound_packages", "tracks",
            "user_sound_packages", "user_sessions", "user_analytics", "alembic_version"} <= tables


def test_upgrade_builds_the_sqlite_default(tmp_path):
    db_file = tmp_path / "sonicus.db"
    env = {**os.environ, "SONICUS_ENV": "development", "DATABASE_URL": f"sqlite:///{db_file}"}
    env.pop("REDIS_URL", None)
    up = _flask("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    engine = create_engine(f"sqlite:///{db_file}")
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"users", "user_sessions", "sound_packages"} <= tables
