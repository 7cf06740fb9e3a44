"""Erasure: the provider subscription is cancelled at once (an outbox the job finishes), later
provider notices change nothing, the trial stays one per person, the export says what stays."""

from __future__ import annotations

from datetime import timedelta

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)


def _stripe_premium(client, headers, billing, *, customer="cus_s1", subscription="sub_s1",
                    event_id="evt_p1"):
    """Premium bought through the stripe provider: a checkout, then Stripe's invoice."""
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    event = billing.invoice_event(event_id, "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, period_start=clock.now() - 10 * DAY,
                                  period_end=clock.now() + 20 * DAY, price="price_prem",
                                  subscription=subscription, customer=customer)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"


def _owed(db_session):
    from sonicus.models import OwedCancellation

    db_session.expire_all()
    return db_session.query(OwedCancellation).order_by(OwedCancellation.id).all()


def test_erasure_cancels_the_provider_subscription_at_once(stripe_app, auth, billing,
                                                           db_session):
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_premium(client, headers, billing)

    resp = client.delete("/api/user/profile", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    cancels = [(m, p, a) for m, p, _, a in stripe.requests if m == "DELETE"]
    assert cancels == [("DELETE", "/v1/subscriptions/sub_s1", "Bearer sk_test_123")]
    [owed] = _owed(db_session)
    assert (owed.provider, owed.customer_id, owed.subscription_id) == ("stripe", "cus_s1",
                                                                       "sub_s1")
    assert owed.done_at is not None and owed.outcome == "canceled" and owed.attempts == 1


def test_erasure_while_the_provider_is_down_keeps_the_cancellation_owed_and_the_job_finishes_it(
        stripe_app, auth, billing, db_session):
    from sonicus.services.erasure import process_owed_cancellations
    from sonicus.tasks.schedule import PERIODIC_JOBS

    assert process_owed_cancellations in [job.func for job in PERIODIC_JOBS]
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_premium(client, headers, billing)

    stripe.down = True
    resp = client.delete("/api/user/profile", headers=headers)
    assert resp.status_code == 200, resp.get_json()  # the erasure does not wait for Stripe
    assert client.get("/api/user/export", headers=headers).get_json()["data"]["subscription"][
        "tier"] == "starter"  # a fresh account: the old one is gone
    [owed] = _owed(db_session)
    assert owed.done_at is None and owed.attempts == 1 and "APIError" in owed.last_error
    assert owed.next_attempt_at > clock.now()

    with app.app_context():
        # not due yet (backoff): nothing is called
        calls = len(stripe.requests)
        assert process_owed_cancellations()["attempted"] == 0
        assert len(stripe.requests) == calls
        # due, provider still down: tried, still owed, the next attempt later again
        later = clock.now() + timedelta(minutes=2)
        assert process_owed_cancellations(now=later)["outcomes"] == {"retry_later": 1}
        # provider back
        stripe.down = False
        result = process_owed_cancellations(now=later + timedelta(minutes=5))
    assert result["outcomes"] == {"canceled": 1}
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == [{}, {}, {}]
    assert "sub_s1" in stripe.canceled
    [owed] = _owed(db_session)
    assert owed.done_at is not None and owed.outcome == "canceled" and owed.attempts == 3
    assert owed.last_error is None

    calls = len(stripe.requests)
    with app.app_context():
        assert process_owed_cancellations(now=later + 30 * DAY)["attempted"] == 0
    assert len(stripe.requests) == calls  # a second run calls nothing


def test_a_subscription_the_provider_already_ended_counts_as_cancelled(stripe_app, auth,
                                                                       billing, db_session):
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_premium(client, headers, billing)
    stripe.canceled.add("sub_s1")  # ended at Stripe already; canceling again is refused
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    [owed] = _owed(db_session)
    assert owed.done_at is not None and owed.outcome == "already_canceled"

    client.get("/api/user/profile", headers=headers)
    _stripe_premium(client, headers, billing, customer="cus_s2", subscription="sub_gone",
                    event_id="evt_p2")
    stripe.missing.add("sub_gone")  # Stripe does not know it at all
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    assert [(o.subscription_id, o.outcome) for o in _owed(db_session)] == [
        ("sub_s1", "already_canceled"), ("sub_gone", "already_canceled")]


def test_a_checkout_paid_after_the_erasure_is_cancelled_at_once(stripe_app, auth, billing,
                                                                db_session):
    """A checkout left open in another tab and paid after the erasure: Stripe starts a
    subscription for an account that is gone. It is cancelled at once, and nobody is
    created or charged here."""
    from sonicus.models import User

    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    reference = client.post("/api/user/subscription", json={"tier": "premium"},
                            headers=headers).get_json()["data"]["checkout"]["reference"]
    uid = billing.user_id(EMAIL)
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    assert _owed(db_session) == []  # nothing at Stripe yet

    paid = billing.checkout_completed("evt_late", user_id=uid, tier="premium",
                                      reference=reference, customer="cus_late",
                                      subscription="sub_late")
    resp = billing.post_webhook(client, paid)
    assert resp.status_code == 200 and resp.get_json()["data"]["outcome"] == "erased_customer"
    assert stripe.received("DELETE", "/v1/subscriptions/sub_late") == [{}]
    [owed] = _owed(db_session)
    assert (owed.customer_id, owed.subscription_id, owed.outcome) == ("cus_late", "sub_late",
                                                                      "canceled")
    invoice = billing.invoice_event("evt_late_inv", "invoice.paid", user_id=uid, tier="premium",
                                    period_start=clock.now(), period_end=clock.now() + 30 * DAY,
                                    customer="cus_late", subscription="sub_late")
    assert billing.post_webhook(client, invoice).get_json()["data"]["outcome"] == \
        "erased_customer"
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_late")) == 1
    assert db_session.query(User).count() == 0


def test_erasure_of_an_account_without_a_provider_subscription_owes_nothing(
        client, auth, make_user, db_session):
    for email, tier in (("free@example.com", "starter"), ("gift@example.com", "pro")):
        make_user(email, tier=tier, complimentary=tier != "starter")
        assert client.delete("/api/user/profile", headers=auth(email)).status_code == 200
    trial = auth("trial@example.com")
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=trial)
    assert client.delete("/api/user/profile", headers=trial).status_code == 200
    assert _owed(db_session) == []


def test_webhooks_for_an_erased_customer_change_nothing(client, auth, billing, db_session):
    from sonicus.models import BillingEvent, SubscriptionEvent, User, UserSubscription

    gone, other = auth(EMAIL), auth("other@example.com")
    for headers, email, customer, subscription in ((gone, EMAIL, "cus_gone", "sub_gone"),
                                                   (other, "other@example.com", "cus_b",
                                                    "sub_b")):
        reference = client.post("/api/user/subscription", json={"tier": "premium"},
                                headers=headers).get_json()["data"]["checkout"]["reference"]
        uid = billing.user_id(email)
        billing.post_webhook(client, billing.checkout_completed(
            f"evt_c_{uid}", user_id=uid, tier="premium", reference=reference,
            customer=customer, subscription=subscription))
    gone_id = billing.user_id(EMAIL)
    assert client.delete("/api/user/profile", headers=gone).status_code == 200
    [owed] = _owed(db_session)
    assert owed.subscription_id == "sub_gone" and owed.done_at is not None  # sandbox: at once
    other_before = billing.subscription(client, other)
    events_before = db_session.query(SubscriptionEvent).count()

    now = clock.now()
    notices = [
        billing.invoice_event("evt_renew", "invoice.paid", user_id=gone_id, tier="pro",
                              period_start=now, period_end=now + 30 * DAY,
                              customer="cus_gone", subscription="sub_gone"),
        billing.invoice_event("evt_fail", "invoice.payment_failed", user_id=gone_id,
                              tier="premium", period_start=now, period_end=now + 30 * DAY,
                              customer="cus_gone", subscription="sub_gone"),
        billing.subscription_updated("evt_upd", price="price_pro", customer="cus_gone",
                                     subscription="sub_gone",
                                     metadata={"sonicus_user_id": str(gone_id)}),
        billing.subscription_deleted("evt_del", customer="cus_gone", subscription="sub_gone"),
        # the customer alone (no subscription named) is recognised too
        billing.invoice_event("evt_cus", "invoice.paid", user_id=None, tier="premium",
                              period_start=now, period_end=now + 30 * DAY,
                              customer="cus_gone", subscription=""),
    ]
    for event in notices:
        resp = billing.post_webhook(client, event)
        assert resp.status_code == 200
        assert resp.get_json()["data"]["outcome"] == "erased_customer", event["id"]

    db_session.expire_all()
    assert [u.email for u in db_session.query(User)] == ["other@example.com"]
    assert db_session.query(UserSubscription).count() == 1
    assert db_session.query(SubscriptionEvent).count() == events_before
    assert billing.subscription(client, other) == other_before
    # what they said is not kept (invoices carry the customer's email and name)
    stored = db_session.query(BillingEvent).filter(BillingEvent.event_id.in_(
        [e["id"] for e in notices])).all()
    assert len(stored) == len(notices)
    assert all(set(b.payload) == {"id", "type", "created", "sonicus_outcome"} for b in stored)


def test_erasure_does_not_reset_trial_eligibility(client, auth):
    def start_trial(headers):
        return client.post("/api/user/subscription",
                           json={"tier": "premium", "start_trial": True}, headers=headers)

    first = auth(EMAIL)
    assert start_trial(first).status_code == 200
    assert client.delete("/api/user/profile", headers=first).status_code == 200

    # the same token identity signs in again: a fresh starter account, no second trial
    data = client.get("/api/user/subscription", headers=first).get_json()["data"]
    assert data["tier"] == "starter" and data["status"] == "active"
    assert data["trial_used"] is True  # the app does not offer what it would refuse
    resp = start_trial(first)
    assert resp.status_code == 409 and resp.get_json()["code"] == "trial_already_used"

    # the same email (written differently) under another subject
    same_email = auth("  Listener@Example.COM ", sub="another-subject")
    resp = start_trial(same_email)
    assert resp.status_code == 409 and resp.get_json()["code"] == "trial_already_used"

    # erasing the trial-less new account again does not wash it out
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    assert client.delete("/api/user/profile", headers=same_email).status_code == 200
    resp = start_trial(auth(EMAIL, sub="a-third-subject"))
    assert resp.status_code == 409 and resp.get_json()["code"] == "trial_already_used"

    # someone else still gets theirs
    assert start_trial(auth("someone.else@example.com")).status_code == 200


def test_tombstones_hold_only_salted_hashes(client, auth, db_session):
    from sonicus.models import ErasureTombstone

    headers = auth(EMAIL, sub="subject-123")
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    client.delete("/api/user/profile", headers=headers)
    [tombstone] = db_session.query(ErasureTombstone).all()
    assert tombstone.trial_used is True and tombstone.erased_at is not None
    stored = f"{tombstone.subject_hash} {tombstone.email_hash}"
    assert "subject-123" not in stored and "listener" not in stored.lower()
    assert len(tombstone.subject_hash) == len(tombstone.email_hash) == 64
    assert tombstone.subject_hash != tombstone.email_hash


def test_export_says_what_stays_after_erasure(client, auth):
    headers = auth(EMAIL)
    doc = client.get("/api/user/export", headers=headers).get_json()["data"]
    after = doc["after_erasure"]
    assert after["statement"]
    kept = " ".join(f"{k['what']} {k['why']}" for k in after["kept"]).lower()
    for words in ("hash", "trial", "one per person", "listening sessions", "anonymised",
                  "statistics"):
        assert words in kept, words
    assert all(k["what"] and k["why"] for k in after["kept"])
    assert doc["earlier_erasures"] == []

    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    client.delete("/api/user/profile", headers=headers)
    doc = client.get("/api/user/export", headers=headers).get_json()["data"]
    [earlier] = doc["earlier_erasures"]
    assert earlier["trial_used"] is True and earlier["matched_by"] == ["subject", "email"]
    assert doc["after_erasure"] == after  # a fixed statement


def test_erasure_empties_the_provider_notices_received_before_it(client, auth, billing,
                                                                   db_session):
    from sonicus.models import BillingEvent

    gone, other = auth(EMAIL), auth("other@example.com")
    for headers, email, customer in ((gone, EMAIL, "cus_1"), (other, "other@example.com",
                                                              "cus_12")):
        reference = client.post("/api/user/subscription", json={"tier": "premium"},
                                headers=headers).get_json()["data"]["checkout"]["reference"]
        uid = billing.user_id(email)
        event = billing.checkout_completed(f"evt_c_{customer[4:]}", user_id=uid, tier="premium",
                                           reference=reference, customer=customer,
                                           subscription=f"sub_{customer}")
        event["data"]["object"]["customer_email"] = email
        assert billing.post_webhook(client, event).status_code == 200

    assert client.delete("/api/user/profile", headers=gone).status_code == 200

    db_session.expire_all()
    kept = {e.event_id: e.payload for e in db_session.query(BillingEvent)}
    assert set(kept) == {"evt_c_1", "evt_c_12"}  # the rows stay: replays stay harmless
    erased = kept["evt_c_1"]
    assert set(erased) == {"id", "type", "created", "sonicus_outcome"}
    assert EMAIL not in str(erased) and "cus_1" not in str(erased)
    # another customer whose id merely starts the same is untouched
    assert kept["evt_c_12"]["data"]["object"]["customer"] == "cus_12"
    assert kept["evt_c_12"]["data"]["object"]["customer_email"] == "other@example.com"


def test_erasure_after_a_failed_renewal_ran_out_still_stops_the_provider_charging(
        stripe_app, auth, billing):
    """The grace of a failed renewal is over (starter here), but the provider's subscription
    lives on and retries the card: erasing the account cancels it."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    failed = billing.invoice_event("evt_f", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   price="price_prem", period_start=clock.now() + 20 * DAY,
                                   period_end=clock.now() + 50 * DAY, subscription="sub_s1",
                                   customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    billing.arrange(EMAIL, past_due_since=clock.now() - 4 * DAY)
    with app.app_context():
        assert process_due_subscriptions()["outcomes"] == {"grace_ended": 1}
        db.session.remove()
    assert billing.subscription(client, headers)["tier"] == "starter"

    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    cancels = [p for m, p, _, _ in stripe.requests if m == "DELETE"]
    assert cancels == ["/v1/subscriptions/sub_s1"]


def test_an_erased_administrators_email_leaves_the_grants_they_made(client, auth, admin_auth,
                                                                    make_user):
    """An administrator granted a listener a tier, then erased their own account: the
    listener's history and export name the grant's author ``erased user``, as the audit log
    does. Before, the erased administrator's email stayed in every grant they had made, shown
    to those listeners for good. A listener who claimed the same address without having acted
    as an administrator renames nothing when erased."""
    make_user("boss@example.com", admin=True)
    listener = make_user(EMAIL)
    headers = auth(EMAIL)
    assert client.patch(f"/api/admin/users/{listener.id}", json={"tier": "premium"},
                        headers=admin_auth("boss@example.com")).status_code == 200
    make_user("boss@example.com", sub="sub-lookalike")  # the same address, another person
    assert client.delete("/api/user/profile",
                         headers=auth("boss@example.com", sub="sub-lookalike")).status_code == 200
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["details"]["by"] == "boss@example.com"

    assert client.delete("/api/user/profile",
                         headers=admin_auth("boss@example.com")).status_code == 200
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "complimentary_grant"
    assert history[0]["details"]["by"] == "erased user"
    export = client.get("/api/user/export", headers=headers).get_json()
    assert "boss@example.com" not in str(export)


def test_an_erased_administrators_former_email_leaves_the_grants_they_made(
        client, auth, admin_auth, make_user):
    """An administrator granted a tier as boss@, the provider then moved them to chief@, and
    they erased their account: the grant still named boss@ to the listener for good (only
    grants naming the address the account had at its erasure were renamed)."""
    make_user("boss@example.com", admin=True)
    listener = make_user(EMAIL)
    assert client.patch(f"/api/admin/users/{listener.id}", json={"tier": "premium"},
                        headers=admin_auth("boss@example.com")).status_code == 200
    moved = admin_auth("chief@example.com", sub="sub-boss@example.com")
    assert client.get("/api/user/profile", headers=moved).get_json()["data"]["email"] \
        == "chief@example.com"
    assert client.delete("/api/user/profile", headers=moved).status_code == 200
    headers = auth(EMAIL)
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "complimentary_grant"
    assert history[0]["details"]["by"] == "erased user"
    assert "boss@example.com" not in str(client.get("/api/user/export", headers=headers)
                                         .get_json())
