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


def test_upgrade_folds_push_endpoints_stored_in_other_spellings_into_one_device(
        empty_database):
    """Rows stored before 0015 with a push service's host in capitals, fully qualified or with
    :443 are one device with the plain spelling: the upgrade keeps the row updated last (its
    keys and its account), in the plain spelling, deletes the others, and leaves the path's
    letters and every other device alone."""
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": empty_database,
           "DEV_TOKEN_ISSUER": "1"}
    env.pop("REDIS_URL", None)
    up = _flask("db", "upgrade", "0014_day_settings_history", env=env)
    assert up.returncode == 0, up.stderr
    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    cur = conn.cursor()
    for user_id in (1, 2):
        cur.execute("INSERT INTO sonicus.users (id, oidc_sub, email, email_verified, timezone,"
                    " day_start_hour, preferences, role, is_active, created_at, updated_at)"
                    " VALUES (%s, %s, %s, true, 'UTC', 0, '{}', 'user', true, now(), now())",
                    (user_id, f"sub-{user_id}", f"u{user_id}@example.com"))
    rows = [  # (id, user, endpoint, p256dh, minutes ago it was updated)
        (1, 1, "https://fcm.googleapis.com/fcm/send/abc", "old", 30),
        (2, 2, "https://FCM.googleapis.com.:443/fcm/send/abc", "new", 5),
        (3, 1, "https://fcm.googleapis.com:443/fcm/send/abc", "older", 60),
        (4, 1, "https://fcm.googleapis.com/fcm/send/ABC", "other-device", 50),
        (5, 1, "HTTPS://DB5P.notify.windows.com./w/?token=Xy", "windows", 40),
        (6, 2, "https://updates.push.services.mozilla.com/wpush/v2/q", "firefox", 20),
    ]
    for row_id, user_id, endpoint, p256dh, ago in rows:
        cur.execute("INSERT INTO sonicus.push_subscriptions (id, user_id, endpoint, p256dh, auth,"
                    " created_at, updated_at) VALUES (%s, %s, %s, %s, 'a', now(),"
                    " now() - make_interval(mins => %s))",
                    (row_id, user_id, endpoint, p256dh, ago))
    up = _flask("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    cur.execute("SELECT id, user_id, endpoint, p256dh FROM sonicus.push_subscriptions"
                " ORDER BY id")
    assert cur.fetchall() == [
        (2, 2, "https://fcm.googleapis.com/fcm/send/abc", "new"),
        (4, 1, "https://fcm.googleapis.com/fcm/send/ABC", "other-device"),
        (5, 1, "https://db5p.notify.windows.com/w/?token=Xy", "windows"),
        (6, 2, "https://updates.push.services.mozilla.com/wpush/v2/q", "firefox"),
    ]
    conn.close()
    check = _flask("db", "check", env=env)
    assert check.returncode == 0, check.stderr + check.stdout
