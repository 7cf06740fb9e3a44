"""Catalog edits under concurrency on PostgreSQL: real threads, real connections."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

from sqlalchemy import create_engine, func, select, text

from sonicus import clock
from sonicus.extensions import db
from sonicus.models import ListeningSession, SoundPackage, Track
from sonicus.services import listening


def _tracks(prefix: str, count: int) -> list[dict]:
    return [{"title": f"{prefix} {i}", "duration_seconds": 60 * (i + 1),
             "media_path": f"sleep/{prefix}/{i}.mp3"} for i in range(count)]


def _at_once(app, requests) -> list[int]:
    """Each ``(method, path, body, headers)`` from its own thread and test client, all let go
    at the same moment; their statuses."""
    barrier = threading.Barrier(len(requests))
    statuses = [None] * len(requests)

    def run(index, method, path, body, headers):
        client = app.test_client()
        barrier.wait()
        statuses[index] = client.open(path, method=method, json=body,
                                      headers=headers).status_code

    threads = [threading.Thread(target=run, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def test_two_admins_replacing_a_packages_tracks_at_once_leave_one_of_the_two_lists(
        app, client, auth, admin_auth, make_user, make_package):
    make_user("admin@example.com", admin=True)
    make_user("other-admin@example.com", admin=True)
    make_user("listener@example.com")
    package_id = make_package("rain", tracks=(600,)).id
    path = f"/api/admin/packages/{package_id}"
    first, second = _tracks("first", 2), _tracks("second", 3)
    for _round in range(3):
        statuses = _at_once(app, [
            ("PATCH", path, {"tracks": first}, admin_auth("admin@example.com")),
            ("PATCH", path, {"tracks": second}, admin_auth("other-admin@example.com"))])
        assert statuses == [200, 200]

        db.session.remove()  # the test's own session holds the rows it made
        detail = client.get(f"/api/packages/{package_id}", headers=auth()).json["data"]
        shown = [{"title": t["title"], "duration_seconds": t["duration_seconds"]}
                 for t in detail["tracks"]]
        # exactly one admin's list, whole, as the listener sees it and as it is counted
        assert shown in ([{k: t[k] for k in ("title", "duration_seconds")} for t in first],
                         [{k: t[k] for k in ("title", "duration_seconds")} for t in second])
        assert [t["position"] for t in detail["tracks"]] == list(range(len(shown)))
        assert detail["track_count"] == len(shown)
        assert detail["duration_seconds"] == sum(t["duration_seconds"] for t in shown)
        stored = db.session.execute(select(Track).where(Track.package_id == package_id)
                                    ).scalars().all()
        assert len(stored) == db.session.get(SoundPackage, package_id).track_count
        # back to one track for the next round
        client.patch(path, json={"tracks": _tracks("reset", 1)},
                     headers=admin_auth("admin@example.com"))




def _edit_held_at_a_track_then(app, database_url, wait_for, held_track_id, edit, other):
    """Run the admin's ``edit`` (a ``(method, path, body, headers)``) until it waits at a
    lock this test holds on ``held_track_id`` (the edit has its package's row in hand by
    then), then ``other`` until it waits too, then let go; the two statuses."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    waiting = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                   " AND cardinality(pg_blocking_pids(pid)) > 0")  # waiting for a lock
    statuses = [None, None]

    def call(index, method, path, body, headers):
        statuses[index] = app.test_client().open(path, method=method, json=body,
                                                 headers=headers).status_code

    threads = [threading.Thread(target=call, args=(i, *r)) for i, r in enumerate((edit, other))]
    try:
        with engine.connect() as holder, engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as observer:  # a fresh view at each look
            holder.execute(text("SELECT id FROM sonicus.tracks WHERE id = :id FOR UPDATE"),
                           {"id": held_track_id})
            for count, thread in enumerate(threads, start=1):
                thread.start()
                wait_for(lambda n=count: observer.execute(waiting).scalar_one() == n,
                         timeout=10)
            holder.rollback()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        engine.dispose()
    return statuses


def test_a_session_ending_while_an_admin_shortens_its_track_is_not_refused(
        app, auth, admin_auth, make_user, make_package, test_database_url, wait_for):
    # The edit moves the resume positions of the package's sessions within the new length;
    # the completion bumps the package's popularity. Each waits for the other's row; the
    # database must never find the two waiting on each other (a deadlock: one answered 503).
    make_user("admin@example.com", admin=True)
    user = make_user(tier="pro")
    package_id = make_package("rain", tracks=(600, 600)).id
    second = db.session.execute(
        select(Track.id).where(Track.package_id == package_id, Track.position == 1)
    ).scalar_one()
    session = listening.start_session(user.id, package_id, second,
                                      now=clock.now() - timedelta(seconds=300))
    listening.heartbeat(user.id, session.id, 200, position_seconds=500)
    db.session.remove()

    # the session's track is held: the edit, shortening it, waits there
    statuses = _edit_held_at_a_track_then(
        app, test_database_url, wait_for, second,
        ("PATCH", f"/api/admin/packages/{package_id}",
         {"tracks": _tracks("rain", 1) + [{"title": "Two", "duration_seconds": 100,
                                           "media_path": "sleep/rain/02.mp3"}]},
         admin_auth("admin@example.com")),
        ("POST", f"/api/user/sessions/{session.id}/complete",
         {"listened_seconds": 250, "completed": False}, auth()))
    assert statuses == [200, 200]


def test_listening_uploaded_while_an_admin_removes_its_track_is_not_refused(
        app, auth, admin_auth, make_user, make_package, test_database_url, wait_for,
        set_clock):
    # The upload stores a session of the track and bumps the package's popularity; the edit
    # removes the track. Neither may wait for the other while holding what the other needs.
    make_user("admin@example.com", admin=True)
    make_user(tier="premium")
    package_id = make_package("rain", tracks=(600, 600)).id
    first, second = db.session.execute(
        select(Track.id).where(Track.package_id == package_id).order_by(Track.position)
    ).scalars().all()
    db.session.remove()
    now = set_clock(clock.now() + timedelta(hours=1))  # listened after the package came
    started = now - timedelta(minutes=30)
    item = {"client_id": str(uuid.uuid4()), "package_id": package_id, "track_id": second,
            "started_at": started.isoformat(),
            "ended_at": (started + timedelta(minutes=8)).isoformat(),
            "listened_seconds": 480}

    # the first track is held: the edit, renaming it, waits there before removing the second
    statuses = _edit_held_at_a_track_then(
        app, test_database_url, wait_for, first,
        ("PATCH", f"/api/admin/packages/{package_id}", {"tracks": _tracks("rain", 1)},
         admin_auth("admin@example.com")),
        ("POST", "/api/user/sessions/sync", {"sessions": [item]}, auth()))
    assert statuses == [200, 200]



def _removing_the_second_track_then(app, admin_auth, database_url, wait_for, admin_id,
                                    package_id, other):
    """The admin's edit removing the package's second track, held after its delete (this
    test holds the admin's row, which its audit entry references) until ``other`` (a
    ``(method, path, body, headers)``) waits too; the two statuses."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg2://", 1))
    waiting = text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                   " AND cardinality(pg_blocking_pids(pid)) > 0")
    statuses = [None, None]

    def call(index, method, path, body, headers):
        statuses[index] = app.test_client().open(path, method=method, json=body,
                                                 headers=headers).status_code

    edit = ("PATCH", f"/api/admin/packages/{package_id}", {"tracks": _tracks("rain", 1)},
            admin_auth("admin@example.com"))
    threads = [threading.Thread(target=call, args=(i, *r)) for i, r in enumerate((edit, other))]
    try:
        with engine.connect() as holder, engine.connect().execution_options(
                isolation_level="AUTOCOMMIT") as observer:
            holder.execute(text("SELECT id FROM sonicus.users WHERE id = :id FOR UPDATE"),
                           {"id": admin_id})
            for count, thread in enumerate(threads, start=1):
                thread.start()
                wait_for(lambda n=count: observer.execute(waiting).scalar_one() == n,
                         timeout=10)
            holder.rollback()
            for thread in threads:
                thread.join(timeout=30)
    finally:
        engine.dispose()
    return statuses


def test_moving_to_a_track_an_admin_is_removing_is_not_found_not_an_error(
        app, auth, admin_auth, make_user, make_package, test_database_url, wait_for):
    admin = make_user("admin@example.com", admin=True)
    user = make_user(tier="pro")
    package_id = make_package("rain", tracks=(600, 600)).id
    first, second = db.session.execute(
        select(Track.id).where(Track.package_id == package_id).order_by(Track.position)
    ).scalars().all()
    session = listening.start_session(user.id, package_id, first,
                                      now=clock.now() - timedelta(seconds=300))
    admin_id = admin.id
    db.session.remove()

    statuses = _removing_the_second_track_then(
        app, admin_auth, test_database_url, wait_for, admin_id, package_id,
        ("PATCH", f"/api/user/sessions/{session.id}",
         {"listened_seconds": 120, "track_id": second, "position_seconds": 5}, auth()))
    assert statuses == [200, 404]


def test_starting_on_a_track_an_admin_is_removing_is_not_found_and_costs_nothing(
        app, auth, admin_auth, make_user, make_package, test_database_url, wait_for):
    admin = make_user("admin@example.com", admin=True)
    make_user()
    package_id = make_package("rain", tracks=(600, 600)).id
    second = db.session.execute(
        select(Track.id).where(Track.package_id == package_id, Track.position == 1)
    ).scalar_one()
    admin_id = admin.id
    db.session.remove()

    statuses = _removing_the_second_track_then(
        app, admin_auth, test_database_url, wait_for, admin_id, package_id,
        ("POST", "/api/user/sessions", {"package_id": package_id, "track_id": second},
         auth()))
    assert statuses == [200, 404]
    assert db.session.execute(select(func.count(ListeningSession.id))).scalar_one() == 0
