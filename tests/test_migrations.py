"""The migrations build every table from empty, on PostgreSQL and on SQLite, with no drift."""

import os
import subprocess
import sys
import time as time_module
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


# indexes built on tables that are big in production while the service writes to them
BIG_TABLE_INDEXES = {
    "ix_sound_packages_title_key_trgm": "sound_packages",
    "ix_sound_packages_description_key_trgm": "sound_packages",
    "ix_subscription_events_payment_charge": "subscription_events",
    "ix_subscription_events_payment_intent": "subscription_events",
    "ix_subscription_events_payment_invoice": "subscription_events",
    "ix_users_email_key": "users",
    "ix_users_email_key_trgm": "users",
}


def _valid_indexes(url) -> dict[str, bool]:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT c.relname, i.indisvalid FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'sonicus'")
        return dict(cur.fetchall())
    finally:
        conn.close()


def _has_trigrams(url) -> bool:
    conn = psycopg2.connect(url)
    try:
        cur = conn.cursor()
        cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'")
        return cur.fetchone() is not None
    finally:
        conn.close()


def test_indexes_on_big_tables_are_built_valid_and_survive_a_downgrade_and_upgrade(
        empty_database):
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": empty_database,
           "DEV_TOKEN_ISSUER": "1"}
    env.pop("REDIS_URL", None)
    expected = {name for name in BIG_TABLE_INDEXES
                if "trgm" not in name or _has_trigrams(empty_database)}
    for step in (("upgrade",), ("downgrade", "0020_uploads_heard_to_their_end"), ("upgrade",)):
        run = _flask("db", *step, env=env)
        assert run.returncode == 0, run.stderr
        if step[0] == "upgrade":
            indexes = _valid_indexes(empty_database)
            assert expected <= set(indexes), expected - set(indexes)
            assert all(indexes.values()), [n for n, valid in indexes.items() if not valid]
            check = _flask("db", "check", env=env)
            assert check.returncode == 0, check.stderr + check.stdout
        else:
            assert not expected & set(_valid_indexes(empty_database))


def test_writes_to_subscription_events_go_on_while_its_payment_indexes_are_built(
        empty_database):
    """A deploy's index build on a big table lets the service write to it meanwhile: the
    build waits for the writers already there instead of locking new ones out."""
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": empty_database,
           "DEV_TOKEN_ISSUER": "1"}
    env.pop("REDIS_URL", None)
    up = _flask("db", "upgrade", "0021_package_search_keys", env=env)
    assert up.returncode == 0, up.stderr
    earlier = psycopg2.connect(empty_database)  # a write in progress when the deploy starts
    earlier.cursor().execute("LOCK TABLE sonicus.subscription_events IN ROW EXCLUSIVE MODE")
    deploy = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade",
         "0022_payment_id_indexes"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    watcher = psycopg2.connect(empty_database)
    watcher.autocommit = True
    later = psycopg2.connect(empty_database)
    try:
        cur = watcher.cursor()
        for _ in range(600):  # until the build waits (for the write in progress)
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query ILIKE '%%ix_subscription_events_payment%%'")
            if cur.fetchone()[0]:
                break
            assert deploy.poll() is None, deploy.communicate()
            time_module.sleep(0.05)
        else:
            pytest.fail("the index build never started")
        writer = later.cursor()  # a write that comes while the index is built
        writer.execute("SET lock_timeout = '3s'")
        try:
            writer.execute("LOCK TABLE sonicus.subscription_events IN ROW EXCLUSIVE MODE")
            went_on = True
        except psycopg2.errors.LockNotAvailable:
            went_on = False
        later.rollback()
        earlier.rollback()
        out, err = deploy.communicate(timeout=120)
        assert deploy.returncode == 0, err
        assert went_on, "a write waited for the index build"
    finally:
        if deploy.poll() is None:
            earlier.rollback()
            deploy.kill()
            deploy.communicate()
        for conn in (earlier, watcher, later):
            conn.close()
    indexes = _valid_indexes(empty_database)
    assert all(indexes[name] for name, table in BIG_TABLE_INDEXES.items()
               if table == "subscription_events")


# What the migration had committed when its concurrent index build failed: the columns,
# filled in, and the version still at the revision before.
COLUMNS_COMMITTED_BEFORE_A_FAILED_INDEX_BUILD = {
    "0020_uploads_heard_to_their_end": [
        "ALTER TABLE sonicus.sound_packages ADD COLUMN title_key text NOT NULL DEFAULT ''",
        "ALTER TABLE sonicus.sound_packages ADD COLUMN description_key text NOT NULL "
        "DEFAULT ''",
        "ALTER TABLE sonicus.sound_packages ALTER COLUMN title_key DROP DEFAULT",
        "ALTER TABLE sonicus.sound_packages ALTER COLUMN description_key DROP DEFAULT"],
    "0024_verified_emails": [
        "ALTER TABLE sonicus.users ADD COLUMN email_key text NOT NULL DEFAULT ''"],
}


@pytest.mark.parametrize("before", sorted(COLUMNS_COMMITTED_BEFORE_A_FAILED_INDEX_BUILD))
def test_upgrade_reruns_after_an_index_build_failed_once_its_columns_were_committed(
        empty_database, before):
    env = {**os.environ, "SONICUS_ENV": "testing", "DATABASE_URL": empty_database,
           "DEV_TOKEN_ISSUER": "1"}
    env.pop("REDIS_URL", None)
    up = _flask("db", "upgrade", before, env=env)
    assert up.returncode == 0, up.stderr
    conn = psycopg2.connect(empty_database)
    conn.autocommit = True
    try:
        for statement in COLUMNS_COMMITTED_BEFORE_A_FAILED_INDEX_BUILD[before]:
            conn.cursor().execute(statement)
    finally:
        conn.close()
    rerun = _flask("db", "upgrade", env=env)
    assert rerun.returncode == 0, rerun.stderr
    check = _flask("db", "check", env=env)
    assert check.returncode == 0, check.stderr + check.stdout
    assert all(_valid_indexes(empty_database).values())
