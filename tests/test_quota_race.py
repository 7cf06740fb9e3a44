"""The daily quota holds under concurrency on PostgreSQL: real threads, real connections."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select

from sonicus import clock
from sonicus.models import ListeningSession
from sonicus.services import listening

THREADS = 12


def _race(app, headers_list, package_id):
    """Every thread has its own test client (own request and app context, own connection)
    and fires at the same moment."""
    barrier = threading.Barrier(len(headers_list))
    statuses = [None] * len(headers_list)

    def run(index, headers):
        client = app.test_client()
        barrier.wait()
        res = client.post("/api/user/sessions", json={"package_id": package_id},
                          headers=headers)
        statuses[index] = (res.status_code, res.json.get("code"))

    threads = [threading.Thread(target=run, args=(i, h)) for i, h in enumerate(headers_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return statuses


def test_last_session_of_the_day_is_granted_once(app, auth, db_session, make_user, make_package):
    package_id = make_package("rain").id
    user = make_user("race@example.com")  # starter: 3 sessions a day
    headers = auth("race@example.com")
    for _ in range(2):
        listening.start_session(user.id, package_id, now=clock.now() - timedelta(seconds=1))

    statuses = _race(app, [headers] * THREADS, package_id)

    assert sorted(s for s, _ in statuses).count(201) == 1, statuses
    assert all(code == "daily_session_limit_reached" for s, code in statuses if s != 201)
    assert db_session.execute(select(func.count(ListeningSession.id))).scalar_one() == 3


def test_other_users_are_not_held_up(app, auth, db_session, make_package, make_user):
    package_id = make_package("rain").id
    headers = [auth(make_user(f"user{i}@example.com").email) for i in range(THREADS)]

    statuses = _race(app, headers, package_id)

    assert [s for s, _ in statuses] == [201] * THREADS
    assert db_session.execute(select(func.count(ListeningSession.id))).scalar_one() == THREADS


def test_whole_quota_raced_from_zero(app, auth, db_session, make_user, make_package):
    package_id = make_package("rain").id
    make_user("burst@example.com")
    headers = auth("burst@example.com")

    statuses = _race(app, [headers] * THREADS, package_id)

    assert [s for s, _ in statuses].count(201) == 3, statuses
    assert [s for s, _ in statuses].count(429) == THREADS - 3
