"""An account erased between the caller's sign-in and the request: the request is answered
with a 4xx envelope (the account is gone), never a 500, and writes nothing.

The caller is resolved by a process whose cache still holds it (as a request that signed in
just before the erasure committed elsewhere would); the erasure runs in another process that
cannot tell it (an app without Redis).
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from sonicus import create_app
from sonicus.caller_cache import get_caller_cache

WRITES = [
    ("POST", "/api/user/packages/{package}", None),
    ("PATCH", "/api/user/packages/{package}", {"favorite": True}),
    ("DELETE", "/api/user/packages/{package}", None),
    ("POST", "/api/user/sessions", {"package_id": "{package}", "mood_before": 5}),
    ("PATCH", "/api/user/sessions/{session}", {"listened_seconds": 30}),
    ("POST", "/api/user/sessions/{session}/complete",
     {"listened_seconds": 30, "completed": True, "mood_after": 7, "note": "calm"}),
    ("PUT", "/api/user/profile", {"display_name": "Gone", "timezone": "Europe/Paris"}),
    ("DELETE", "/api/user/profile", None),
    ("POST", "/api/user/subscription", {"tier": "starter"}),
    ("POST", "/api/user/subscription", {"tier": "premium"}),
    ("POST", "/api/user/subscription", {"tier": "pro", "start_trial": True}),
    ("DELETE", "/api/user/subscription", {"reason": "other"}),
    ("POST", "/api/user/subscription/resume", None),
    ("POST", "/api/user/analytics/refresh", None),
]
READS = [
    "/api/user/profile", "/api/user/export", "/api/user/subscription",
    "/api/user/subscription/history", "/api/user/dashboard", "/api/user/analytics",
    "/api/user/packages", "/api/user/sessions", "/api/user/sessions/{session}",
    "/api/packages", "/api/packages/{package}",
]


@pytest.fixture(scope="module")
def signed_in_elsewhere(make_config):
    """A process that keeps callers for a minute (the other one erases)."""
    return create_app(make_config(AUTH_USER_CACHE_SECONDS=60))


@pytest.fixture(scope="module")
def eraser(make_config):
    return create_app(make_config(REDIS_URL=None))


@pytest.fixture
def erased(signed_in_elsewhere, eraser, make_user, make_package, make_session, auth):
    """A premium listener with a package in their library and an open session, signed in on
    ``signed_in_elsewhere``, then erased by ``eraser``; the request's placeholders."""
    from sonicus import clock
    from sonicus.services.users import erase_user
    from sonicus.tokens import token_digest

    get_caller_cache(signed_in_elsewhere).clear()
    user = make_user("gone@example.com", tier="premium", status="active",
                     cancel_at_period_end=True, pending_tier="starter",
                     current_period_end=clock.now().replace(year=clock.now().year + 1))
    package = make_package("rain")
    session = make_session(user, package, started_at=clock.now(), status="open", minutes=0)
    headers = auth("gone@example.com")
    client = signed_in_elsewhere.test_client()
    profile = client.get("/api/user/profile", headers=headers)
    assert profile.status_code == 200
    assert client.post(f"/api/user/packages/{package.id}", headers=headers).status_code == 201
    with eraser.app_context():
        erase_user(user.id)
    token = headers["Authorization"].split()[1]
    assert get_caller_cache(signed_in_elsewhere).get(token_digest(token)).id == user.id
    return {"client": client, "headers": headers, "user": user.id, "package": package.id,
            "session": session.id}


def _fill(value, places):
    if isinstance(value, str):
        text = value.format(**places)
        return int(text) if value.startswith("{") and text.isdigit() else text
    if isinstance(value, dict):
        return {k: _fill(v, places) for k, v in value.items()}
    return value


def _rows_of(db_session, user_id):
    from sonicus.models import (
        ListeningSession,
        SubscriptionEvent,
        User,
        UserAnalytics,
        UserSoundPackage,
        UserSubscription,
    )

    db_session.expire_all()
    return {model.__name__: db_session.execute(
        select(func.count()).select_from(model).where(
            (model.id if model is User else model.user_id) == user_id)).scalar_one()
        for model in (User, UserSubscription, SubscriptionEvent, UserSoundPackage,
                      ListeningSession, UserAnalytics)}


@pytest.mark.parametrize(("method", "path", "body"), WRITES,
                         ids=[f"{m} {p} {b}" for m, p, b in WRITES])
def test_requests_for_an_erased_account_never_answer_500(erased, db_session, method, path,
                                                         body):
    places = {k: erased[k] for k in ("package", "session")}
    res = erased["client"].open(_fill(path, places), method=method,
                                json=_fill(body, places) if body is not None else None,
                                headers=erased["headers"])
    assert res.status_code in (401, 404), res.get_json()
    envelope = res.get_json()
    assert envelope["success"] is False and envelope["errors"]
    assert envelope["code"] in ("not_found", "invalid_token")
    assert all(count == 0 for count in _rows_of(db_session, erased["user"]).values())


@pytest.mark.parametrize("path", READS)
def test_reads_for_an_erased_account_never_answer_500(erased, db_session, path):
    res = erased["client"].get(_fill(path, {k: erased[k] for k in ("package", "session")}),
                               headers=erased["headers"])
    assert res.status_code < 500 and res.get_json()["success"] is (res.status_code == 200)
    assert all(count == 0 for count in _rows_of(db_session, erased["user"]).values())
