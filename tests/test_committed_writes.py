"""A write whose transaction committed never answers 5xx afterwards (API.md, Envelope): its
answer is built from what the transaction loaded, with no SQL statement after the COMMIT, so
a database that goes away at that moment cannot turn a stored write into a 503.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from sonicus import clock, create_app

TRACK = {"title": "Part 1", "duration_seconds": 600, "media_path": "sleep/new/01.mp3"}


@pytest.fixture(scope="module")
def other_app(make_config):
    """An app of its own: no request shares the test's database session."""
    return create_app(make_config())


class Timeline:
    """SQL statements and COMMITs on an engine, in order."""

    def __init__(self, engine):
        self.engine = engine
        self.events: list[str] = []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)

    def _statement(self, conn, cursor, statement, *args):
        self.events.append(statement)

    def _commit(self, conn):
        self.events.append("COMMIT")

    def after_last_commit(self) -> list[str]:
        assert "COMMIT" in self.events, self.events
        last = len(self.events) - 1 - self.events[::-1].index("COMMIT")
        return self.events[last + 1:]


@pytest.fixture
def world(other_app, make_user, make_package, make_session, auth, admin_auth):
    listener = make_user("steady@example.com", tier="premium", status="active",
                         current_period_start=clock.now() - timedelta(days=3),
                         current_period_end=clock.now() + timedelta(days=27),
                         payment_method_on_file=True)
    make_user("boss@example.com", admin=True)
    package = make_package("rain", tracks=(600, 300))
    other = make_package("waves")
    session = make_session(listener, package, started_at=clock.now() - timedelta(minutes=2),
                           status="open", minutes=0)
    closing = make_session(listener, package, started_at=clock.now() - timedelta(minutes=5),
                           status="open", minutes=0)
    client = other_app.test_client()
    headers = {"user": auth("steady@example.com"), "admin": admin_auth("boss@example.com")}
    for who in headers.values():  # signed in and cached: the writes below need no sign-in
        for _ in range(2):
            assert client.get("/api/user/profile", headers=who).status_code == 200
    # in the library, and assigned: for the library's writes and the revocation
    assert client.post(f"/api/admin/users/{listener.id}/packages",
                       json={"package_id": package.id},
                       headers=headers["admin"]).status_code == 201
    return {"client": client, "headers": headers, "user": listener.id, "package": package.id,
            "other": other.id, "session": session.id, "closing": closing.id}


WRITES = [
    ("user", "POST", "/api/user/sessions", {"package_id": "{package}", "mood_before": 4}, 201),
    ("user", "POST", "/api/user/sessions",
     {"package_id": "{package}", "track_id": None}, 201),
    ("user", "PATCH", "/api/user/sessions/{session}", {"listened_seconds": 60}, 200),
    ("user", "POST", "/api/user/sessions/{closing}/complete",
     {"listened_seconds": 240, "completed": True, "mood_after": 8, "note": "calm"}, 200),
    ("user", "PUT", "/api/user/profile",
     {"display_name": "Steady", "timezone": "Europe/Paris",
      "preferences": {"goals": ["sleep"]}}, 200),
    ("user", "POST", "/api/user/packages/{other}", {"favorite": True}, 201),
    ("user", "POST", "/api/user/subscription", {"tier": "pro"}, 200),
    ("user", "POST", "/api/user/subscription", {"tier": "starter"}, 200),
    ("user", "DELETE", "/api/user/subscription", {"reason": "other"}, 200),
    ("user", "POST", "/api/user/analytics/refresh", None, 202),
    ("user", "PATCH", "/api/user/packages/{package}", {"favorite": True}, 200),
    ("user", "DELETE", "/api/user/packages/{package}", None, 200),
    ("admin", "PATCH", "/api/admin/users/{user}", {"tier": "pro", "reason": "thanks"}, 200),
    ("admin", "PATCH", "/api/admin/users/{user}", {"is_active": False}, 200),
    ("admin", "DELETE", "/api/admin/users/{user}/packages/{package}", None, 200),
    ("admin", "POST", "/api/admin/users/{user}/packages", {"package_id": "{other}"}, 201),
    ("admin", "POST", "/api/admin/packages",
     {"slug": "new-one", "title": "New", "category": "sleep", "tracks": [TRACK]}, 201),
    ("admin", "PATCH", "/api/admin/packages/{package}", {"title": "Rain, again"}, 200),
    ("admin", "DELETE", "/api/admin/packages/{other}", None, 200),
]


def _fill(value, world):
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return world[value[1:-1]]
    if isinstance(value, str):
        return value.format(**world)
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("who", "method", "path", "body", "status"), WRITES,
                         ids=[f"{m} {p} {b}" for _, m, p, b, _ in WRITES])
def test_a_committed_write_builds_its_answer_without_the_database(other_app, world, who,
                                                                  method, path, body, status):
    """(Among them a favourite marked in the library, which read the package's assignment
    after its commit: a database gone at that moment answered 503 for a stored change.)"""
    from sonicus.extensions import db

    with other_app.app_context():
        engine = db.engine
    with Timeline(engine) as timeline:
        res = world["client"].open(_fill(path, world), method=method, headers=world["headers"][who],
                                   json=_fill(body, world) if body is not None else None)
    assert res.status_code == status, res.get_json()
    assert timeline.after_last_commit() == []
