"""Reminder settings and push subscriptions under requests at the same moment (real threads,
each with its own connection): the per-user cap of browsers holds, nothing answers 500, and a
browser that subscribes again while a reminder is being sent keeps its fresh subscription."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from races import in_thread
from sqlalchemy import func, select

from sonicus import clock
from sonicus.extensions import db
from sonicus.models import PushSubscription
from sonicus.services import reminder_claims, reminders, webpush
from sonicus.services.reminder_settings import MAX_SUBSCRIPTIONS_PER_USER
from tests.push_service import Browser

WAIT = 30


def _together(app, requests):
    """Each ``(method, path, headers, body)`` from a thread of its own, released at once;
    the answers' ``(status, code)`` in order."""
    barrier = threading.Barrier(len(requests))
    answers = [None] * len(requests)

    def run(index, method, path, headers, body):
        client = app.test_client()
        barrier.wait()
        response = client.open(path, method=method, headers=headers, json=body)
        answers[index] = (response.status_code, (response.get_json() or {}).get("code"))

    threads = [threading.Thread(target=run, args=(i, *request))
               for i, request in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return answers


def _subscriptions(db_session) -> int:
    count = db_session.execute(select(func.count()).select_from(PushSubscription)).scalar()
    db_session.commit()
    return count


def test_browsers_subscribed_at_once_never_exceed_the_cap(app, make_user, auth, db_session):
    """A listener whose browsers (or a script) subscribe many endpoints at the same moment
    keeps at most MAX_SUBSCRIPTIONS_PER_USER of them, the most recent ones, as when they
    come one after the other. Before, each request trimmed the list it saw without the
    others' new rows, and the listener ended with more (11 of 14 at once): more pushes sent
    per reminder than the cap allows."""
    make_user("me@example.com")
    headers = auth("me@example.com")
    for round_ in range(3):
        answers = _together(app, [
            ("POST", "/api/user/push-subscriptions", headers,
             Browser(f"https://fcm.googleapis.com/fcm/send/r{round_}-{i}").subscription())
            for i in range(MAX_SUBSCRIPTIONS_PER_USER + 4)])
        assert answers == [(201, None)] * (MAX_SUBSCRIPTIONS_PER_USER + 4)
        assert _subscriptions(db_session) == MAX_SUBSCRIPTIONS_PER_USER


def test_one_endpoint_subscribed_at_once_by_two_accounts_is_one_row(app, make_user, auth,
                                                                     db_session):
    """Two accounts signed in on one browser subscribe its endpoint at the same moment
    (twice each): one row, owned by whichever came last; every answer 200 or 201."""
    make_user("a@example.com")
    make_user("b@example.com")
    body = Browser("https://fcm.googleapis.com/fcm/send/shared").subscription()
    for _ in range(3):
        answers = _together(app, [
            ("POST", "/api/user/push-subscriptions", auth(email), body)
            for email in ("a@example.com", "b@example.com") * 2])
        assert all(status in (200, 201) for status, _ in answers), answers
        assert _subscriptions(db_session) == 1


def test_reminder_settings_put_at_once_keep_one_whole_body(app, make_user, auth):
    """Two tabs PUT different reminder settings at the same moment, first ever: both 200,
    and the settings are one body or the other, never a mix."""
    make_user("me@example.com")
    headers = auth("me@example.com")
    first = {"enabled": True, "time": "08:00", "days": ["mon", "tue"], "weekly_recap": False}
    second = {"enabled": False, "time": "21:30", "days": ["sun"], "weekly_recap": True}
    answers = _together(app, [("PUT", "/api/user/reminders", headers, first),
                              ("PUT", "/api/user/reminders", headers, second)])
    assert answers == [(200, None), (200, None)]
    stored = app.test_client().get("/api/user/reminders", headers=headers).get_json()["data"]
    assert {k: stored[k] for k in first} in (first, second)


@pytest.mark.parametrize("dead_by", ["410", "expired"])
def test_a_browser_subscribing_again_while_a_reminder_is_sent_keeps_its_new_subscription(
        push_client, auth, push_service, browser, set_clock, db_session, monkeypatch,
        dead_by):
    """The sending job read a device whose subscription was dead (the push service answered
    410, or its expiration time had passed); before the job removed it, the browser posted
    the same endpoint again with new keys and a new expiration time (real threads). The new
    subscription stays and gets the next reminder: only the row as the job read it goes.
    Before, the job deleted the row by its id and the browser lost its fresh subscription
    until it subscribed once more."""
    headers = auth()
    endpoint = push_service.endpoint("renewing")
    old = browser(endpoint).subscription()
    if dead_by == "expired":
        old["expirationTime"] = int(datetime(2026, 1, 14, 12, tzinfo=UTC).timestamp() * 1000)
    else:
        push_service.answer(endpoint, 410)
    assert push_client.post("/api/user/push-subscriptions", json=old,
                            headers=headers).status_code == 201
    assert push_client.put("/api/user/reminders", json={"enabled": True, "time": "18:00"},
                           headers=headers).status_code == 200
    set_clock(datetime(2026, 1, 14, 18, 0, tzinfo=UTC))
    app = push_client.application
    with app.app_context():
        [delivery_id] = reminder_claims.claim_due_reminders(clock.now())
        db.session.remove()
    sending, go = threading.Event(), threading.Event()
    real = webpush.send_many

    def posting(*args, **kwargs):
        results = real(*args, **kwargs)
        sending.set()
        assert go.wait(10)
        return results

    monkeypatch.setattr(webpush, "send_many", posting)

    def deliver():
        with app.app_context():
            try:
                return reminders.deliver_reminders([delivery_id])
            finally:
                db.session.remove()

    job, _sent = in_thread(deliver)
    try:
        assert sending.wait(10)
        renewed = browser(endpoint)
        body = renewed.subscription()
        body["expirationTime"] = int(datetime(2026, 2, 14, tzinfo=UTC).timestamp() * 1000)
        answer = push_client.post("/api/user/push-subscriptions", json=body, headers=headers)
        assert answer.status_code == 200, answer.get_json()
    finally:
        go.set()
        job.join(10)
    assert not job.is_alive()
    kept = db_session.execute(select(PushSubscription.p256dh)
                              .where(PushSubscription.endpoint == endpoint)).scalars().all()
    db_session.commit()
    assert kept == [renewed.p256dh]
