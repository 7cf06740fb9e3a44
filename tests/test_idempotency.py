"""Retry-safe writes (API.md "Retry-safe writes"): a write sent again with the same
``Idempotency-Key`` is answered with the first answer and does nothing again, whichever
process or thread it reaches, as long as the first one's answer is kept (24 h)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import psycopg2.extensions
import pytest
import requests
from processes import free_port, wait_until_up
from sqlalchemy import event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from sonicus import clock, create_app
from sonicus.api_errors import ApiError
from sonicus.extensions import db
from sonicus.idempotency_http import request_fingerprint
from sonicus.models import IdempotencyKey, ListeningSession, User
from sonicus.services import admin_users, erasure, idempotency, listening, users
from sonicus.services.keys_connections import APPLICATION_NAME, KeysConnections
from sonicus.services.transaction import unit_of_work

ROOT = Path(__file__).resolve().parent.parent
THREADS = 10
REPLAYED = "Idempotent-Replayed"


@pytest.fixture
def listener(make_user, make_package, auth):
    """A starter listener (3 sessions a day) and a package they may play."""
    user = make_user("retry@example.com")
    package = make_package("rain")
    return {"id": user.id, "headers": auth("retry@example.com"), "package": package.id}


def _keyed(headers, key):
    return {**headers, "Idempotency-Key": key}


def _sessions(db_session, user_id=None) -> int:
    query = select(func.count(ListeningSession.id))
    if user_id is not None:
        query = query.where(ListeningSession.user_id == user_id)
    count = db_session.execute(query).scalar_one()
    db_session.commit()
    return count


def _keys(db_session) -> list[IdempotencyKey]:
    rows = list(db_session.execute(select(IdempotencyKey).order_by(IdempotencyKey.id)).scalars())
    db_session.commit()
    return rows


def test_one_key_sent_by_ten_threads_at_once_starts_one_session(app, listener, db_session):
    barrier = threading.Barrier(THREADS)
    answers = [None] * THREADS
    headers = _keyed(listener["headers"], "start-once")

    def run(index):
        client = app.test_client()
        barrier.wait()
        res = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                          headers=headers)
        answers[index] = (res.status_code, res.headers.get(REPLAYED), res.get_json())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    ran = [a for a in answers if a[0] == 201 and a[1] is None]
    assert len(ran) == 1, answers
    first = ran[0][2]
    for status, replayed, body in answers:
        if status == 409:
            assert body["code"] == "idempotency_key_in_use", body
        elif replayed is not None:
            assert (status, replayed, body) == (201, "true", first)
    assert _sessions(db_session) == 1  # one quota slot used: two starts left today
    for _ in range(2):
        res = app.test_client().post("/api/user/sessions", headers=listener["headers"],
                                     json={"package_id": listener["package"]})
        assert res.status_code == 201
    res = app.test_client().post("/api/user/sessions", headers=listener["headers"],
                                 json={"package_id": listener["package"]})
    assert res.json["code"] == "daily_session_limit_reached"


def test_a_retry_replays_the_first_answer_and_only_it_carries_no_replay_mark(
        client, listener, db_session):
    headers = _keyed(listener["headers"], "k-1")
    body = {"package_id": listener["package"], "mood_before": 3}
    first = client.post("/api/user/sessions", json=body, headers=headers)
    again = client.post("/api/user/sessions", json=body, headers=headers)

    assert first.status_code == again.status_code == 201
    assert REPLAYED not in first.headers
    assert again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()
    assert again.content_type == first.content_type
    assert again.headers["X-Request-ID"] != first.headers["X-Request-ID"]  # this request's own
    assert _sessions(db_session) == 1


def test_a_replayed_quota_refusal_repeats_its_retry_after(client, listener):
    """The headers a client acts on come back with the replay: the quota refusal's
    Retry-After and Content-Type, as the first answer had them."""
    for _ in range(3):  # the starter's day
        assert client.post("/api/user/sessions", headers=listener["headers"],
                           json={"package_id": listener["package"]}).status_code == 201
    headers = _keyed(listener["headers"], "k-429")
    first = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                        headers=headers)
    again = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                        headers=headers)
    assert first.status_code == again.status_code == 429
    assert again.headers[REPLAYED] == "true"
    assert first.headers["Retry-After"]
    assert again.headers["Retry-After"] == first.headers["Retry-After"]
    assert again.headers["Content-Type"] == first.headers["Content-Type"]


def test_a_replayed_quota_refusal_counts_its_retry_after_from_the_replay(
        client, listener, set_clock):
    """A client that retries a refused start with its key an hour later is told to wait
    an hour less (the time left until the day's quota resets), not the first answer's wait
    again; once that moment has passed, it is told it may retry now (with a new key)."""
    now = set_clock(clock.now())
    for _ in range(3):  # the starter's day
        assert client.post("/api/user/sessions", headers=listener["headers"],
                           json={"package_id": listener["package"]}).status_code == 201
    headers = _keyed(listener["headers"], "k-429-later")
    body = {"package_id": listener["package"]}
    first = client.post("/api/user/sessions", json=body, headers=headers)
    assert first.status_code == 429
    wait = int(first.headers["Retry-After"])
    resets_at = datetime.fromisoformat(first.json["resets_at"])
    assert abs((now + timedelta(seconds=wait)) - resets_at) <= timedelta(seconds=1)

    set_clock(now + timedelta(seconds=wait // 2))
    later = client.post("/api/user/sessions", json=body, headers=headers)
    assert later.status_code == 429 and later.headers[REPLAYED] == "true"
    assert later.get_json() == first.get_json()
    assert int(later.headers["Retry-After"]) == wait - wait // 2

    set_clock(now + timedelta(seconds=wait + 60))
    past = client.post("/api/user/sessions", json=body, headers=headers)
    assert past.status_code == 429 and past.headers[REPLAYED] == "true"
    assert past.headers["Retry-After"] == "0"
    assert "Retry-After-At" not in past.headers


def test_a_kept_refusal_is_replayed_too(client, listener, db_session):
    headers = _keyed(listener["headers"], "k-404")
    first = client.post("/api/user/sessions", json={"package_id": 99999}, headers=headers)
    again = client.post("/api/user/sessions", json={"package_id": 99999}, headers=headers)
    assert first.status_code == again.status_code == 404
    assert again.headers[REPLAYED] == "true" and again.get_json() == first.get_json()


def test_a_body_refused_before_the_view_keeps_its_answer_under_the_key(
        client, listener, db_session):
    """The claim is read just before the view runs; a request refused before that (its body
    does not validate) still keeps that answer for its key, and another body sent with the
    key is 422 ``idempotency_key_reused``, not a validation error of its own."""
    headers = _keyed(listener["headers"], "k-bad-body")
    bad = {"package_id": "not-a-number"}
    first = client.post("/api/user/sessions", json=bad, headers=headers)
    again = client.post("/api/user/sessions", json=bad, headers=headers)
    assert first.status_code == 422 and first.json["code"] == "validation_error"
    assert again.status_code == 422 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()

    ran = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                      headers=_keyed(listener["headers"], "k-good-body"))
    assert ran.status_code == 201
    reused = client.post("/api/user/sessions", json=bad,
                         headers=_keyed(listener["headers"], "k-good-body"))
    assert reused.status_code == 422 and reused.json["code"] == "idempotency_key_reused"
    assert REPLAYED not in reused.headers
    assert _sessions(db_session) == 1


def test_the_same_key_for_another_body_path_or_method_is_refused(client, listener, db_session):
    headers = _keyed(listener["headers"], "k-2")
    started = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                          headers=headers)
    assert started.status_code == 201
    session_id = started.json["data"]["id"]

    other_body = client.post("/api/user/sessions",
                             json={"package_id": listener["package"], "mood_before": 5},
                             headers=headers)
    other_path = client.post(f"/api/user/sessions/{session_id}/complete", headers=headers,
                             json={"listened_seconds": 10, "completed": False})
    other_method = client.patch(f"/api/user/sessions/{session_id}", headers=headers,
                                json={"listened_seconds": 10})
    for res in (other_body, other_path, other_method):
        assert res.status_code == 422, res.get_json()
        assert res.json["code"] == "idempotency_key_reused"
        assert any("Idempotency-Key" in e for e in res.json["errors"])
        assert REPLAYED not in res.headers
    assert _sessions(db_session) == 1
    session = client.get(f"/api/user/sessions/{session_id}", headers=listener["headers"])
    assert session.json["data"]["status"] == "open"  # neither completed nor moved


def test_a_retry_with_a_cache_buster_added_is_the_same_request(client, listener, db_session):
    """Unknown query arguments are ignored on every route: a retry whose query string an
    SPA or a proxy changed (``?_=1700000000``) is replayed, not refused as another request."""
    headers = _keyed(listener["headers"], "k-cache-buster")
    first = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                        headers=headers)
    assert first.status_code == 201
    for query in ("?_=1700000000", "?_=1700000001&x=1"):
        again = client.post(f"/api/user/sessions{query}", headers=headers,
                            json={"package_id": listener["package"]})
        assert again.status_code == 201, again.get_json()
        assert again.headers.get(REPLAYED) == "true"
        assert again.json["data"]["id"] == first.json["data"]["id"]
    assert _sessions(db_session) == 1


def test_a_key_kept_before_the_query_left_the_fingerprint_still_replays(client, listener,
                                                                        db_session):
    """A key kept by the release before (its fingerprint taken with the query string, empty
    here) still matches its retry: an upgrade in the 24 hours never turns a retry into a
    422 ``idempotency_key_reused``."""
    import hashlib

    from sonicus.models.idempotency import DONE, IdempotencyKey

    body = json.dumps({"package_id": listener["package"]}).encode()
    before = hashlib.sha256(b"POST /api/user/sessions?" + b"" + b"\n" + body).hexdigest()
    now = clock.now()
    kept = {"success": True, "data": {"id": 424242}, "message": "kept", "errors": None}
    db_session.add(IdempotencyKey(user_id=listener["id"], key="k-before", fingerprint=before,
                                  state=DONE, response_status=201,
                                  response_body=json.dumps(kept), created_at=now,
                                  expires_at=now + timedelta(hours=24)))
    db_session.commit()
    res = client.post("/api/user/sessions", data=body, content_type="application/json",
                      headers=_keyed(listener["headers"], "k-before"))
    assert res.status_code == 201, res.get_json()
    assert res.headers.get(REPLAYED) == "true"
    assert json.loads(res.get_data())["data"]["id"] == 424242
    assert _sessions(db_session) == 0


def test_another_user_with_the_same_key_is_independent(client, listener, make_user, auth,
                                                       db_session):
    make_user("other@example.com")
    body = {"package_id": listener["package"]}
    mine = client.post("/api/user/sessions", json=body,
                       headers=_keyed(listener["headers"], "shared"))
    theirs = client.post("/api/user/sessions", json=body,
                         headers=_keyed(auth("other@example.com"), "shared"))
    assert mine.status_code == theirs.status_code == 201
    assert REPLAYED not in theirs.headers
    assert theirs.json["data"]["id"] != mine.json["data"]["id"]
    assert _sessions(db_session) == 2


def test_an_administrators_keys_are_their_own(client, make_user, make_package, admin_auth,
                                              db_session):
    admin = make_user("boss@example.com", admin=True)
    listener = make_user("held@example.com")
    package = make_package("waves")
    headers = _keyed(admin_auth("boss@example.com"), "assign-1")
    path = f"/api/admin/users/{listener.id}/packages"
    first = client.post(path, json={"package_id": package.id}, headers=headers)
    again = client.post(path, json={"package_id": package.id}, headers=headers)
    assert first.status_code == 201, first.get_json()
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert [(k.user_id, k.key) for k in _keys(db_session)] == [(admin.id, "assign-1")]


def test_a_failed_write_keeps_nothing_and_its_retry_runs(client, listener, db_session,
                                                         monkeypatch, make_config):
    """A 5xx answer, or an exception no handler answered, gives the key back."""
    real_start = listening.start_or_find_session
    failures = iter([RuntimeError("boom"), None])

    def failing_start(*args, **kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real_start(*args, **kwargs)

    monkeypatch.setattr(listening, "start_or_find_session", failing_start)
    headers = _keyed(listener["headers"], "k-500")
    body = {"package_id": listener["package"]}
    with pytest.raises(RuntimeError):  # testing: the exception reaches the client
        client.post("/api/user/sessions", json=body, headers=headers)
    assert _keys(db_session) == []

    other = create_app(make_config(PROPAGATE_EXCEPTIONS=False))
    monkeypatch.setattr(listening, "start_or_find_session", lambda *a, **k: 1 / 0)
    answered = other.test_client().post("/api/user/sessions", json=body, headers=headers)
    assert answered.status_code == 500 and answered.json["code"] == "internal_error"
    assert _keys(db_session) == []
    with other.app_context():
        db.engine.dispose()
        other.extensions[idempotency.ENGINE_KEY].dispose()

    monkeypatch.setattr(listening, "start_or_find_session", real_start)
    retry = client.post("/api/user/sessions", json=body, headers=headers)
    assert retry.status_code == 201 and REPLAYED not in retry.headers
    assert _sessions(db_session) == 1


def test_a_claim_cut_off_by_the_database_is_a_503_and_the_retry_runs(listener, db_session,
                                                                       make_config):
    """The keys' connection dropped by the server while a claim waits on it (a restart of
    PostgreSQL, a proxy's timeout): the request is answered 503, runs nothing, and the retry
    reconnects and runs."""
    fresh = create_app(make_config())
    client = fresh.test_client()
    body = {"package_id": listener["package"]}
    first = client.post("/api/user/sessions", json=body,
                        headers=_keyed(listener["headers"], "k-before"))
    assert first.status_code == 201

    # The claim's reference to the user waits behind this lock, on the keys' connection.
    holder = psycopg2.connect(db_session.get_bind().url.set(drivername="postgresql")
                              .render_as_string(hide_password=False))
    holder.cursor().execute("SELECT 1 FROM sonicus.users WHERE id = %s FOR UPDATE",
                            (listener["id"],))
    answers = []
    headers = _keyed(listener["headers"], "k-lost")
    waiting = threading.Thread(target=lambda: answers.append(
        client.post("/api/user/sessions", json=body, headers=headers)))
    waiting.start()
    try:
        for _ in range(200):
            dropped = db_session.execute(
                select(func.pg_terminate_backend(text("pid"))).select_from(
                    text("pg_stat_activity"))
                .where(text("application_name = :name AND wait_event_type = 'Lock'")),
                {"name": APPLICATION_NAME}).scalars().all()
            db_session.commit()
            if dropped:
                break
            threading.Event().wait(0.01)
        assert dropped
        # A start's view waits behind the same lock (its session names the user) and reads
        # its claim only before its commit: let it go on to find the claim lost.
        holder.rollback()
        waiting.join(timeout=10)
    finally:
        holder.rollback()
        holder.close()
    lost = answers[0]
    assert lost.status_code == 503 and lost.json["code"] == "service_unavailable"
    assert _sessions(db_session) == 1
    retry = client.post("/api/user/sessions", json=body, headers=headers)
    assert retry.status_code == 201 and REPLAYED not in retry.headers
    assert client.post("/api/user/sessions", json=body, headers=headers).headers[REPLAYED]
    assert _sessions(db_session) == 2
    with fresh.app_context():
        idempotency.settle_answers()
        db.engine.dispose()
        fresh.extensions[idempotency.ENGINE_KEY].dispose()


def _claimed_by_a_first_request(app, listener, key):
    """(body, headers, claim id): ``key`` claimed as the first session start sent with it
    claims it, that start not having answered yet."""
    body = {"package_id": listener["package"]}
    headers = _keyed(listener["headers"], key)
    with app.test_request_context("/api/user/sessions", method="POST", json=body,
                                  headers=headers):
        claim = idempotency.claim_key(listener["id"], key, request_fingerprint())
    return body, headers, claim


def _keep_answer(claim, answer: dict) -> None:
    """The first request's answer kept, as its after-request hook keeps it."""
    idempotency.store_answer(claim, 201, json.dumps(answer), {"Content-Type": "application/json"})
    idempotency.settle_answers()


def test_a_key_still_running_is_409_until_it_is_stale(client, listener, db_session,
                                                      set_clock):
    now = set_clock(clock.now())
    body, headers, claim = _claimed_by_a_first_request(client.application, listener, "k-run")
    assert isinstance(claim, int)

    busy = client.post("/api/user/sessions", json=body, headers=headers)
    assert busy.status_code == 409 and busy.json["code"] == "idempotency_key_in_use"
    assert busy.headers["Retry-After"] == "1"
    assert _sessions(db_session) == 0

    # The process running it died: after STALE_RUNNING the next retry takes the key over.
    set_clock(now + idempotency.STALE_RUNNING + timedelta(seconds=1))
    taken = client.post("/api/user/sessions", json=body, headers=headers)
    assert taken.status_code == 201 and REPLAYED not in taken.headers
    again = client.post("/api/user/sessions", json=body, headers=headers)
    assert again.headers[REPLAYED] == "true"
    assert _sessions(db_session) == 1


def test_a_stale_key_whose_answer_lands_while_it_is_taken_over_is_replayed(
        app, client, listener, db_session, set_clock, monkeypatch):
    """A retry finds the key running past STALE_RUNNING and goes to take it over; the first
    request's answer lands between that read and the delete: the key keeps that answer and
    the retry replays it instead of running the write a second time."""
    now = set_clock(clock.now())
    body, headers, claim = _claimed_by_a_first_request(app, listener, "k-slow")
    answer = {"data": {"id": 78, "status": "active"}, "message": "Session started."}
    set_clock(now + idempotency.STALE_RUNNING + timedelta(seconds=1))

    read_key = idempotency._read_key
    reads = []

    def read_then_answer(engine, user_id, key):
        row = read_key(engine, user_id, key)
        if not reads:  # the first request answers right after the retry's first read
            _keep_answer(claim, answer)
        reads.append(row.state if row is not None else None)
        return row

    monkeypatch.setattr(idempotency, "_read_key", read_then_answer)
    retry = client.post("/api/user/sessions", json=body, headers=headers)
    assert reads[0] == "running"
    assert retry.status_code == 201 and retry.headers[REPLAYED] == "true"
    assert retry.get_json() == answer
    assert _sessions(db_session) == 0  # replayed, not run
    assert [key.state for key in _keys(db_session)] == ["done"]


def test_a_retry_that_finds_the_key_running_waits_for_the_answer_on_its_way(
        app, client, listener, db_session):
    """The first request's answer is sent to the database without waiting for it: a retry
    that gets there before it finds the key running, waits a moment and replays the answer
    instead of answering 409."""
    body, headers, claim = _claimed_by_a_first_request(app, listener, "k-late")
    answer = {"data": {"id": 77, "status": "active"}, "message": "Session started."}

    def keep():
        with app.app_context():
            _keep_answer(claim, answer)

    timer = threading.Timer(0.015, keep)
    timer.start()
    retry = client.post("/api/user/sessions", json=body, headers=headers)
    timer.join()
    assert retry.status_code == 201 and retry.headers[REPLAYED] == "true"
    assert retry.get_json() == answer
    assert _sessions(db_session) == 0  # replayed, not run


def test_keyed_writes_work_on_after_the_keys_connections_are_dropped(
        app, client, listener, db_session):
    """The keys' connections, dropped by the server while idle (a restart of PostgreSQL, a
    proxy's timeout): the next keyed write notices before using one, reconnects, runs once
    and keeps its answer."""
    body = {"package_id": listener["package"]}
    first = client.post("/api/user/sessions", json=body,
                        headers=_keyed(listener["headers"], "k-w1"))
    assert first.status_code == 201
    with app.app_context():
        idempotency.settle_answers()
    dropped = db_session.execute(
        select(func.pg_terminate_backend(text("pid"))).select_from(text("pg_stat_activity"))
        .where(text("application_name = :name")), {"name": APPLICATION_NAME}).scalars().all()
    db_session.commit()
    assert dropped and all(dropped)
    for _ in range(500):  # until the server has closed them
        left = db_session.execute(
            select(func.count()).select_from(text("pg_stat_activity"))
            .where(text("application_name = :name")), {"name": APPLICATION_NAME}).scalar()
        db_session.commit()
        if not left:
            break
        threading.Event().wait(0.01)

    headers = _keyed(listener["headers"], "k-w2")
    second = client.post("/api/user/sessions", json=body, headers=headers)
    assert second.status_code == 201
    again = client.post("/api/user/sessions", json=body, headers=headers)
    assert again.headers[REPLAYED] == "true" and again.get_json() == second.get_json()
    assert _sessions(db_session) == 2


def test_keys_expire_after_a_day_and_are_swept(app, client, listener, db_session, set_clock):
    now = set_clock(clock.now())
    body = {"package_id": listener["package"]}
    first = client.post("/api/user/sessions", json=body,
                        headers=_keyed(listener["headers"], "old"))
    assert first.status_code == 201
    set_clock(now + timedelta(hours=23))
    client.post("/api/user/sessions", json=body, headers=_keyed(listener["headers"], "young"))

    set_clock(now + timedelta(hours=24, seconds=1))
    with app.app_context():
        assert idempotency.sweep_expired_idempotency_keys() == 1
    assert [k.key for k in _keys(db_session)] == ["young"]

    # An expired key is absent: sent again, the write runs again.
    rerun = client.post("/api/user/sessions", json=body,
                        headers=_keyed(listener["headers"], "old"))
    assert rerun.status_code == 201 and REPLAYED not in rerun.headers
    assert rerun.json["data"]["id"] != first.json["data"]["id"]


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\xe9", "tab\there"],
                         ids=["empty", "too-long", "not-ascii", "control"])
def test_an_invalid_key_is_refused_naming_the_header(client, listener, db_session, value):
    res = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                      headers=_keyed(listener["headers"], value))
    assert res.status_code == 422 and res.json["code"] == "validation_error"
    assert any(e.startswith("Idempotency-Key") for e in res.json["errors"])
    assert _sessions(db_session) == 0


def test_a_key_of_255_printable_characters_is_accepted(client, listener):
    res = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                      headers=_keyed(listener["headers"], "~ " + "k" * 253))
    assert res.status_code == 201


def test_keys_on_the_embedded_sqlite_default(tmp_path, make_config, make_user, make_package,
                                             auth):
    """SQLite (no prepared statements there): a retry replays, another body is refused."""
    from flask_migrate import upgrade

    lite = create_app(make_config(REDIS_URL=None,
                                  DATABASE_URL=f"sqlite:///{tmp_path / 'lite.db'}"))
    with lite.app_context():
        upgrade()
        make_user("lite@example.com")
        package = make_package("rain").id
        db.session.remove()
    client = lite.test_client()
    headers = _keyed(auth("lite@example.com"), "lite-1")
    first = client.post("/api/user/sessions", json={"package_id": package}, headers=headers)
    again = client.post("/api/user/sessions", json={"package_id": package}, headers=headers)
    other = client.post("/api/user/sessions", json={"package_id": package, "mood_before": 2},
                        headers=headers)
    assert first.status_code == 201 and REPLAYED not in first.headers, first.get_json()
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()
    assert other.status_code == 422 and other.json["code"] == "idempotency_key_reused"
    with lite.app_context():
        assert db.session.execute(select(func.count(ListeningSession.id))).scalar_one() == 1
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def every_statement():
    """``every_statement(action)`` → the SQL statements ``action()`` sent to PostgreSQL,
    through SQLAlchemy or, as the keys' claim and kept answer are, through the driver alone:
    the cursors of every connection checked out meanwhile record what they execute,
    SQLAlchemy's events what runs on a connection held from before, and the keys' own
    connections what they run."""

    def run(action) -> list[str]:
        statements = []

        class Recording(psycopg2.extensions.cursor):
            def execute(self, query, vars=None):
                statements.append(query.decode() if isinstance(query, bytes) else query)
                return super().execute(query, vars)

        def checkout(dbapi_connection, record, proxy):
            dbapi_connection.cursor_factory = Recording

        def checkin(dbapi_connection, record):
            if dbapi_connection is not None:
                dbapi_connection.cursor_factory = None

        def before_execute(conn, cursor, statement, *args):
            if not isinstance(cursor, Recording):
                statements.append(statement)

        real_send, real_start = KeysConnections.send, KeysConnections.start

        def send(connections, sql, params, what):  # the keys' own connections
            statements.append(sql)
            return real_send(connections, sql, params, what)

        def start(connections, sql, params):
            statements.append(sql)
            return real_start(connections, sql, params)

        listeners = [(Pool, "checkout", checkout), (Pool, "checkin", checkin),
                     (Engine, "before_cursor_execute", before_execute)]
        for target, name, listener in listeners:
            event.listen(target, name, listener)
        KeysConnections.send, KeysConnections.start = send, start
        try:
            action()
        finally:
            KeysConnections.send, KeysConnections.start = real_send, real_start
            for target, name, listener in listeners:
                event.remove(target, name, listener)
        return statements

    return run


def _ours(statements) -> list[str]:
    """The statements on the keys (their table, or their prepared statements), by verb."""
    return [s.split()[0] for s in statements if "idempotency" in s]


def test_writes_without_the_header_cost_nothing_and_with_it_two_statements(
        app, listener, every_statement):
    client = app.test_client()
    body = {"package_id": listener["package"]}
    client.get("/api/user/profile", headers=listener["headers"])  # the caller is cached

    plain = every_statement(lambda: client.post("/api/user/sessions", json=body,
                                                headers=listener["headers"]))
    assert plain and not _ours(plain)
    keyed = every_statement(lambda: client.post(
        "/api/user/sessions", json=body, headers=_keyed(listener["headers"], "cheap")))
    assert _ours(keyed) == ["EXECUTE", "EXECUTE"]  # the claim, the kept answer: prepared
    assert len(keyed) == len(plain) + 2
    with app.app_context():  # the answer has landed (a replay sent sooner reads it again)
        idempotency.settle_answers()
    replay = every_statement(lambda: client.post(
        "/api/user/sessions", json=body, headers=_keyed(listener["headers"], "cheap")))
    # claim, kept answer; a start reads its claim only at its commit: its own statements up
    # to there ran (and were rolled back)
    assert _ours(replay) == ["EXECUTE", "SELECT"] and len(replay) == 2 + len(plain)
    # a read ignores the header
    reads = every_statement(lambda: client.get(
        "/api/user/sessions", headers=_keyed(listener["headers"], "cheap")))
    assert not _ours(reads)


def test_a_replay_is_served_by_another_process_after_the_first_is_gone(
        two_web_processes, make_package, token_for, db_session):
    """The key and its answer live in PostgreSQL, not in the process that ran the write."""
    first_process, second_process = two_web_processes
    package = make_package("rain")
    headers = {"Authorization": f"Bearer {token_for('restart@example.com')}",
               "Idempotency-Key": "across-processes"}
    body = {"package_id": package.id, "mood_before": 6}
    first = requests.post(first_process.http_url("/api/user/sessions"), json=body,
                          headers=headers, timeout=10)
    assert first.status_code == 201, first.text
    first_process.stop()

    again = requests.post(second_process.http_url("/api/user/sessions"), json=body,
                          headers=headers, timeout=10)
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert _sessions(db_session) == 1


def test_a_replay_survives_a_restart_of_the_web_server(idp, test_database_url, test_redis_url,
                                                       tmp_path, token_for, make_package,
                                                       db_session):
    """gunicorn stopped as a deploy stops it (SIGTERM) and started again on the same database
    and port: the retry of a write the previous run answered is replayed, not run again."""
    package = make_package("rain")
    headers = {"Authorization": f"Bearer {token_for('restarted@example.com')}",
               "Idempotency-Key": "across-a-restart"}
    body = {"package_id": package.id, "mood_before": 4}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
           "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
           "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
           "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}

    def start_gunicorn():
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_up(url + "/api/health", proc)
        return proc

    proc = start_gunicorn()
    try:
        first = requests.post(url + "/api/user/sessions", json=body, headers=headers,
                              timeout=10)
        assert first.status_code == 201 and REPLAYED not in first.headers, first.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        with pytest.raises(requests.ConnectionError):  # nothing serves the port now
            requests.post(url + "/api/user/sessions", json=body, headers=headers, timeout=10)

        proc = start_gunicorn()
        again = requests.post(url + "/api/user/sessions", json=body, headers=headers,
                              timeout=10)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert again.status_code == 201, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json() == first.json()
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert _sessions(db_session) == 1


def test_the_header_is_documented_on_every_signed_in_write(client):
    spec = client.get("/api/openapi.json").get_json()
    assert spec["components"]["parameters"]["IdempotencyKey"]["in"] == "header"
    ref = {"$ref": "#/components/parameters/IdempotencyKey"}
    writes = [(path, method, operation) for path, operations in spec["paths"].items()
              for method, operation in operations.items()
              if method in ("post", "put", "patch", "delete")]
    for path, method, operation in writes:
        documented = ref in operation.get("parameters", [])
        assert documented == bool(operation.get("security")), (method, path)
    assert ref in spec["paths"]["/api/user/sessions"]["post"]["parameters"]
    assert ref not in spec["paths"]["/api/billing/webhook"]["post"].get("parameters", [])


# ---- a session start reads its claim just before its commit ----------------------------------
# (``retry_safe.no_effect_before_commit``): the claim travels while the start does its own
# database work; a start whose key is not its own commits nothing and answers what the key
# decided. Every other keyed write reads its claim before its view runs.

WAIT = 30  # seconds: anything still waiting after this is stuck


class _Paused:
    """Wraps ``module.name`` so that its first call (the first request's) signals ``reached``
    and waits for ``go`` before going on; later calls go straight through. ``calls`` counts
    them all (how many views got that far)."""

    def __init__(self, monkeypatch, module, name):
        self.reached, self.go = threading.Event(), threading.Event()
        self.calls = 0
        real = getattr(module, name)

        def paused(*args, **kwargs):
            self.calls += 1
            if self.calls == 1:
                self.reached.set()
                assert self.go.wait(WAIT)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, paused)


def _in_thread(action) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    return thread, result


def _claims_landed(db_session, count: int) -> None:
    for _ in range(500):
        if len(_keys(db_session)) >= count:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the claim never landed")


def test_a_duplicate_start_sent_while_the_first_is_mid_view_runs_its_view_and_commits_nothing(
        app, listener, db_session, monkeypatch):
    """The first start with a key is held inside its view (after its claim went in, before
    its transaction locks anything). The same start sent again meanwhile runs its own view
    (the claim is read only at its commit) up to its commit, finds the key running and is
    answered 409: its session is rolled back. The first then finishes: one session."""
    paused = _Paused(monkeypatch, listening, "_lock_for_start")
    body = {"package_id": listener["package"]}
    headers = _keyed(listener["headers"], "k-mid-view")
    first, first_answer = _in_thread(
        lambda: app.test_client().post("/api/user/sessions", json=body, headers=headers))
    try:
        assert paused.reached.wait(WAIT)
        _claims_landed(db_session, 1)
        inserted = []
        insert = listening.insert_within_quota
        monkeypatch.setattr(listening, "insert_within_quota",
                            lambda *a: inserted.append(insert(*a)) or inserted[-1])
        duplicate = app.test_client().post("/api/user/sessions", json=body, headers=headers)
        ran = list(inserted)
    finally:
        paused.go.set()
        first.join(WAIT)
    assert paused.calls == 2 and len(ran) == 1 and ran[0] is not None  # it ran, inserted
    assert duplicate.status_code == 409, duplicate.get_json()
    assert duplicate.json["code"] == "idempotency_key_in_use"
    assert first_answer[0].status_code == 201 and REPLAYED not in first_answer[0].headers
    assert _sessions(db_session) == 1
    with app.app_context():
        idempotency.settle_answers()
    again = app.test_client().post("/api/user/sessions", json=body, headers=headers)
    assert again.headers[REPLAYED] == "true" and again.get_json() == first_answer[0].get_json()
    assert _sessions(db_session) == 1


def test_a_duplicate_start_refused_by_its_view_before_any_commit_answers_what_the_key_decided(
        app, listener, db_session, monkeypatch):
    """A start that never commits (its package is unknown: 404) still has its claim read
    after it: sent while the first with its key is running, it is answered 409, not its own
    404; the first's 404 is the key's answer from then on."""
    paused = _Paused(monkeypatch, listening, "_lock_for_start")
    body = {"package_id": 99999}
    headers = _keyed(listener["headers"], "k-mid-404")
    first, first_answer = _in_thread(
        lambda: app.test_client().post("/api/user/sessions", json=body, headers=headers))
    try:
        assert paused.reached.wait(WAIT)
        _claims_landed(db_session, 1)
        duplicate = app.test_client().post("/api/user/sessions", json=body, headers=headers)
    finally:
        paused.go.set()
        first.join(WAIT)
    assert paused.calls == 2
    assert duplicate.status_code == 409 and duplicate.json["code"] == "idempotency_key_in_use"
    assert first_answer[0].status_code == 404
    with app.app_context():
        idempotency.settle_answers()
    again = app.test_client().post("/api/user/sessions", json=body, headers=headers)
    assert again.status_code == 404 and again.headers[REPLAYED] == "true"


def test_a_keyed_start_whose_view_commits_twice_reads_its_claim_before_the_first_commit(
        app, client, listener, db_session, monkeypatch):
    """A start that commits a first write of its own before the start itself: its claim is
    read before that first commit. The first request with the key does both; the same
    request again is refused at its first commit, so not even its first write lands."""
    order = []
    real_outcome = idempotency.PendingClaim.outcome
    monkeypatch.setattr(idempotency.PendingClaim, "outcome",
                        lambda pending: order.append("claim read") or real_outcome(pending))
    real_start = listening.start_or_find_session
    calls = []

    def commits_first(user_id, *args, **kwargs):
        calls.append(user_id)
        with unit_of_work():
            db.session.execute(update(User).where(User.id == user_id)
                               .values(display_name=f"write {len(calls)}"))
        order.append("first commit")
        return real_start(user_id, *args, **kwargs)

    def committed(session):
        order.append("committed")

    monkeypatch.setattr(listening, "start_or_find_session", commits_first)
    event.listen(db.session, "after_commit", committed)
    try:
        body = {"package_id": listener["package"]}
        headers = _keyed(listener["headers"], "k-twice")
        first = client.post("/api/user/sessions", json=body, headers=headers)
        assert first.status_code == 201
        assert order == ["claim read", "committed", "first commit", "committed"]
        with app.app_context():
            idempotency.settle_answers()
        order.clear()
        again = client.post("/api/user/sessions", json=body, headers=headers)
    finally:
        event.remove(db.session, "after_commit", committed)
    assert len(calls) == 2  # the retry's view ran ...
    assert order == ["claim read"]  # ... and committed nothing
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()
    assert db_session.get(User, listener["id"]).display_name == "write 1"
    db_session.commit()
    assert _sessions(db_session) == 1


def test_duplicate_starts_waiting_on_the_first_starts_row_lock_replay_it_without_deadlock(
        app, listener, db_session, monkeypatch):
    """The first start with a key is held after it has locked the user's subscription row;
    more of the same start arrive and their views wait on that lock (their claims were
    sent). Let go, the first commits (its claim is its own) and answers; each of the others
    then gets the lock, reaches its commit, finds the key the first's and replays its answer
    (or 409 while that answer is on its way), rolled back: one session, no one stuck."""
    duplicates = 4
    paused = _Paused(monkeypatch, listening, "insert_within_quota")
    body = {"package_id": listener["package"]}
    headers = _keyed(listener["headers"], "k-locked")

    def start():
        return app.test_client().post("/api/user/sessions", json=body, headers=headers)

    first, first_answer = _in_thread(start)
    others = []
    try:
        assert paused.reached.wait(WAIT)
        others = [_in_thread(start) for _ in range(duplicates)]
        for _ in range(1000):  # every duplicate waits on the first's row lock
            waiting = db_session.execute(
                select(func.count()).select_from(text("pg_stat_activity"))
                .where(text("wait_event_type = 'Lock' AND datname = current_database() "
                            "AND application_name <> :keys")),
                {"keys": APPLICATION_NAME}).scalar()
            db_session.commit()
            if waiting == duplicates:
                break
            threading.Event().wait(0.01)
        assert waiting == duplicates
    finally:
        paused.go.set()
        first.join(WAIT)
        for thread, _ in others:
            thread.join(WAIT)
    assert not first.is_alive() and not any(thread.is_alive() for thread, _ in others)
    assert first_answer[0].status_code == 201 and REPLAYED not in first_answer[0].headers
    for _, answer in others:
        res = answer[0]
        if res.status_code == 409:
            assert res.json["code"] == "idempotency_key_in_use"
        else:
            assert res.status_code == 201 and res.headers[REPLAYED] == "true"
            assert res.get_json() == first_answer[0].get_json()
    assert paused.calls == 1 + duplicates  # every duplicate ran its view to the insert
    assert _sessions(db_session) == 1


def test_a_keyed_start_and_an_admin_tier_change_of_the_same_user_at_once_both_finish(
        app, listener, db_session, monkeypatch):
    """An administrator's change of a user locks the subscription row and then the user's
    row (the erasure's order); a start locks the subscription row and then inserts a session
    naming the user (and reads its claim, whose key row names the user too, only at its
    commit). The grant sent while the start holds the subscription row waits for it without
    holding anything the start needs: both finish at once. (Before, the grant took the user's
    row first, and had it ``FOR UPDATE``, the start's insert would have waited on it.)"""
    start_holds_subscription, go = threading.Event(), threading.Event()
    insert = listening.insert_within_quota

    def start_insert(*args):
        start_holds_subscription.set()
        assert go.wait(WAIT)
        return insert(*args)

    monkeypatch.setattr(listening, "insert_within_quota", start_insert)

    def grant():
        with app.app_context():
            try:
                return admin_users.update_user(None, listener["id"], {"tier": "premium"},
                                               actor_label="cli")
            finally:
                db.session.remove()

    start, start_answer = _in_thread(lambda: app.test_client().post(
        "/api/user/sessions", json={"package_id": listener["package"]},
        headers=_keyed(listener["headers"], "k-admin")))
    admin = None
    try:
        assert start_holds_subscription.wait(WAIT)
        admin, admin_answer = _in_thread(grant)
        for _ in range(1000):  # the grant waits on the start's subscription row
            waiting = db_session.execute(
                select(func.count()).select_from(text("pg_stat_activity"))
                .where(text("wait_event_type = 'Lock' AND datname = current_database()"))
            ).scalar()
            db_session.commit()
            if waiting:
                break
            threading.Event().wait(0.01)
        assert waiting == 1
        started = time.monotonic()
    finally:
        go.set()
        start.join(WAIT)
        if admin is not None:
            admin.join(WAIT)
    assert start_answer[0].status_code == 201, start_answer[0].get_json()
    assert admin_answer == [True]
    assert time.monotonic() - started < 0.9  # neither waited for a deadlock to be broken
    assert _sessions(db_session) == 1


def test_other_keyed_writes_still_read_their_claim_before_their_view(
        app, client, listener, every_statement):
    """A heartbeat is not marked ``no_effect_before_commit``: its retry reads the claim
    before the view and sends nothing else (the claim, the kept answer)."""
    started = client.post("/api/user/sessions", json={"package_id": listener["package"]},
                          headers=listener["headers"])
    path = f"/api/user/sessions/{started.json['data']['id']}"
    headers = _keyed(listener["headers"], "k-beat")
    first = client.patch(path, json={"listened_seconds": 0}, headers=headers)
    assert first.status_code == 200
    with app.app_context():
        idempotency.settle_answers()
    replay = every_statement(lambda: client.patch(path, json={"listened_seconds": 0},
                                                  headers=headers))
    assert _ours(replay) == ["EXECUTE", "SELECT"] and len(replay) == 2


def test_a_start_that_catches_its_refused_commit_still_commits_nothing_and_answers_the_replay(
        app, client, listener, db_session, monkeypatch):
    """Should a start catch the refusal of its commit and go on (another write, its own
    error), every later commit of the request is refused too and the answer is still the
    one the key decided."""
    body = {"package_id": listener["package"]}
    headers = _keyed(listener["headers"], "k-caught")
    first = client.post("/api/user/sessions", json=body, headers=headers)
    assert first.status_code == 201
    with app.app_context():
        idempotency.settle_answers()

    real_start = listening.start_or_find_session
    caught = []

    def catching(user_id, *args, **kwargs):
        try:
            return real_start(user_id, *args, **kwargs)
        except Exception as exc:
            caught.append(type(exc).__name__)
        try:
            with unit_of_work():
                db.session.execute(update(User).where(User.id == user_id)
                                   .values(display_name="went on"))
        except Exception as exc:
            caught.append(type(exc).__name__)
        raise ApiError(409, "conflict", "Gave up.")

    monkeypatch.setattr(listening, "start_or_find_session", catching)
    again = client.post("/api/user/sessions", json=body, headers=headers)
    assert caught == ["ClaimRefused", "ClaimRefused"]
    assert again.status_code == 201 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json()
    assert db_session.get(User, listener["id"]).display_name != "went on"
    db_session.commit()
    assert _sessions(db_session) == 1


def test_a_keyed_start_during_the_erasure_of_its_account_is_a_prompt_404(
        app, listener, db_session, monkeypatch):
    """The erasure is the one transaction that holds the user's row ``FOR UPDATE`` (which the
    start's claim waits behind); it takes the subscription row first. A keyed start sent
    while the erasure holds both waits for the subscription row, holding nothing the erasure
    needs: once the erasure commits, the start is answered 404 at once, not after the wait
    for its claim runs out."""
    paused = _Paused(monkeypatch, erasure, "add_tombstone")  # both rows locked by then

    def erase():
        with app.app_context():
            try:
                users.erase_user(listener["id"])
            finally:
                db.session.remove()

    eraser, _ = _in_thread(erase)
    starter = None
    try:
        assert paused.reached.wait(WAIT)
        starter, answer = _in_thread(lambda: app.test_client().post(
            "/api/user/sessions", json={"package_id": listener["package"]},
            headers=_keyed(listener["headers"], "k-erased")))
        for _ in range(1000):  # the start's view waits on the subscription row
            waiting = db_session.execute(
                select(func.count()).select_from(text("pg_stat_activity"))
                .where(text("wait_event_type = 'Lock' AND datname = current_database() "
                            "AND application_name <> :keys")),
                {"keys": APPLICATION_NAME}).scalar()
            db_session.commit()
            if waiting:
                break
            threading.Event().wait(0.01)
        assert waiting == 1
    finally:
        paused.go.set()
        released = time.monotonic()
        eraser.join(WAIT)
        if starter is not None:
            starter.join(WAIT)
    assert time.monotonic() - released < 3
    assert answer[0].status_code == 404, answer[0].get_json()
    assert _sessions(db_session) == 0
