"""Catalog edits under concurrency on PostgreSQL: real threads, real connections."""

from __future__ import annotations

import threading

from sqlalchemy import select

from sonicus.extensions import db
from sonicus.models import SoundPackage, Track


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
