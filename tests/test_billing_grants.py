"""An administrator's grant over the user's own Stripe billing: what the user may buy under
it, a cancel undone in Stripe's billing portal, and cancellations Stripe already confirmed
(never asked for again, so nothing waits on Stripe being reachable)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)


def _stripe_paid(client, headers, billing, tier="premium"):
    """``tier`` paid through Stripe (``sub_s1`` of ``cus_s1``) until 20 days from now."""
    client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
    price = {"premium": "price_prem", "pro": "price_pro"}[tier]
    event = billing.invoice_event("evt_p1", "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, period_start=clock.now() - 10 * DAY,
                                  period_end=clock.now() + 20 * DAY, price=price,
                                  subscription="sub_s1", customer="cus_s1",
                                  created=clock.now() - 10 * DAY)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"
    return datetime.fromisoformat(billing.subscription(client, headers)["current_period_end"])


def _past_due(client, billing):
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   price="price_prem", period_start=clock.now() + 20 * DAY,
                                   period_end=clock.now() + 50 * DAY, subscription="sub_s1",
                                   customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"


def _grant(client, admin_auth, uid, tier):
    return client.patch(f"/api/admin/users/{uid}", json={"tier": tier},
                        headers=admin_auth("boss@example.com"))


def _portal(billing, event_id, *, cancel, price="price_prem", minutes=1):
    """``customer.subscription.updated`` for ``sub_s1`` as Stripe's billing portal sends it
    when the customer cancels (``cancel``) or undoes the cancel there."""
    return billing.subscription_updated(
        event_id, price=price, subscription="sub_s1", customer="cus_s1",
        cancel_at_period_end=cancel, previous={"cancel_at_period_end": not cancel},
        created=clock.now() + timedelta(minutes=minutes))


def _cancel_flags(fake):
    return [form["cancel_at_period_end"]
            for form in fake.received("POST", "/v1/subscriptions/sub_s1")
            if "cancel_at_period_end" in form]


# ---- what the user may buy under a grant -------------------------------------------------------

@pytest.mark.parametrize("canceled", [False, True])
def test_choosing_the_tier_paid_for_under_a_higher_grant_is_409_and_opens_no_checkout(
        stripe_app, auth, admin_auth, billing, canceled):
    """Premium paid through Stripe for a month, Pro granted over it; the user picks Premium
    on the plans page (perhaps after canceling under the grant): the days are paid for
    already and Pro includes them, so no second, full-price checkout is opened: 409
    ``conflict``, nothing changed, nothing sent to Stripe."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    if canceled:
        assert client.delete("/api/user/subscription", json={},
                             headers=headers).status_code == 200
    before, sent = billing.subscription(client, headers), len(fake.requests)
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 409, resp.get_json()
    assert resp.get_json()["code"] == "conflict" and resp.get_json()["errors"]
    assert billing.subscription(client, headers) == before
    assert before["checkout"] is None and (before["tier"], before["complimentary"]) == \
        ("pro", True)
    assert len(fake.requests) == sent
    assert fake.received("POST", "/v1/checkout/sessions")[1:] == []
    assert billing.events_of(EMAIL, "checkout_started")[1:] == []


@pytest.mark.parametrize("paid", [None, "premium", "pro"])
def test_choosing_a_tier_below_the_one_granted_is_409_and_opens_no_checkout(
        stripe_app, auth, admin_auth, billing, paid):
    """Pro granted (free; over a month paid for through Stripe, or not): Premium is part of
    what the user has for free, so choosing it opens no checkout that would charge for it."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    if paid:
        _stripe_paid(client, headers, billing, paid)
    else:
        client.get("/api/user/subscription", headers=headers)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    before, sent = billing.subscription(client, headers), len(fake.requests)
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 409 and resp.get_json()["code"] == "conflict", resp.get_json()
    assert billing.subscription(client, headers) == before
    assert len(fake.requests) == sent


def test_under_a_grant_over_a_paid_month_the_granted_tier_opens_nothing(
        stripe_app, auth, admin_auth, billing):
    """The granted tier itself, chosen again under the grant, opens nothing (200, free of
    charge) and asks nothing of Stripe."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    sent = len(fake.requests)
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["checkout"] is None
    assert len(fake.requests) == sent


@pytest.mark.parametrize("canceled", [False, True])
def test_upgrading_above_a_grant_over_a_paid_month_is_prorated_not_a_full_price_checkout(
        stripe_app, auth, admin_auth, billing, canceled):
    """Premium paid through Stripe for a month (20 of its 30 days left), Premium granted over
    it; the user then asks for Pro (perhaps after canceling under the grant). As for any
    paid upgrade, the running Stripe subscription is switched to Pro now with proration:
    the unused Premium days are credited, so only the difference for the 20 days left is
    charged (6.67, not a second full-price checkout of 19.99), and Pro renews at Stripe from
    the period's end, paid for by the user (the grant is superseded)."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    if canceled:
        assert client.delete("/api/user/subscription", json={},
                             headers=headers).status_code == 200
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert data["checkout"] is None
    assert (data["tier"], data["status"], data["complimentary"], data["cancel_at_period_end"],
            data["pending_tier"]) == ("pro", "active", False, False, None)
    assert datetime.fromisoformat(data["current_period_end"]) == period_end
    assert fake.received("POST", "/v1/checkout/sessions")[1:] == []
    [upgraded] = billing.events_of(EMAIL, "upgraded")
    assert (upgraded["from_tier"], upgraded["to_tier"], upgraded["amount_cents"]) == \
        ("premium", "pro", 667)
    plan = [form for form in fake.received("POST", "/v1/subscriptions/sub_s1")
            if "proration_behavior" in form]
    assert plan == [{"items[0][id]": ["si_1"], "items[0][price]": ["price_pro"],
                     "proration_behavior": ["always_invoice"],
                     "metadata[sonicus_tier]": ["pro"],
                     "payment_behavior": ["error_if_incomplete"]}]
    assert _cancel_flags(fake)[-1] == ["false"]  # Pro is the user's own: Stripe renews it
    assert billing.subscription(client, headers)["tier"] == "pro"


# ---- a cancel undone in Stripe's billing portal ------------------------------------------------

def test_undoing_in_the_portal_a_cancel_made_under_a_grant_keeps_the_grant_going(
        stripe_app, auth, admin_auth, billing, set_clock):
    """Premium paid through Stripe, Pro granted over it, then the user cancels (the grant
    would end with the paid month). In Stripe's billing portal the user undoes the cancel:
    the app agrees that it goes on (no end shown, Pro past the month's end) while Stripe is
    still asked to renew nothing, the grant being free."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    assert billing.subscription(client, headers)["cancel_at_period_end"] is True

    resp = billing.post_webhook(client, _portal(billing, "evt_undo", cancel=False))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["outcome"] == "resumed,kept_canceled"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"], data["cancel_at_period_end"],
            data["pending_tier"]) == ("pro", True, False, None)
    assert _cancel_flags(fake)[-1] == ["true"]  # the free tier is never charged for
    assert billing.events_of(EMAIL)[-1]["type"] == "resumed"

    set_clock(period_end + timedelta(minutes=5))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("pro", True)


def test_a_portal_undo_older_than_the_cancel_under_a_grant_does_not_undo_it(
        stripe_app, auth, admin_auth, billing, set_clock):
    """The undo made in the portal before the user canceled here, arriving late, does not
    undo that later cancel (Stripe is still asked to renew nothing)."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    start = clock.now()
    _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    set_clock(start + timedelta(hours=1))
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    late = billing.subscription_updated(
        "evt_undo_old", price="price_prem", subscription="sub_s1", customer="cus_s1",
        cancel_at_period_end=False, previous={"cancel_at_period_end": True},
        created=start + timedelta(minutes=30))
    assert billing.post_webhook(client, late).get_json()["data"]["outcome"] == "kept_canceled"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("pro", True)
    assert _cancel_flags(fake)[-1] == ["true"]


def test_undoing_in_the_portal_a_cancel_after_a_downgrade_keeps_the_downgrade(
        stripe_app, auth, billing, set_clock):
    """Pro paid through Stripe; the user asks here for Premium from the next period (Stripe's
    price becomes Premium's), then cancels in the portal and undoes that there: Stripe renews
    Premium, so the app says so too (Premium from the period's end, not Pro, not starter)."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing, "pro")
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.get_json()["data"]["pending_tier"] == "premium"
    canceled = billing.post_webhook(client, _portal(billing, "evt_c", cancel=True))
    assert canceled.get_json()["data"]["outcome"] == "cancel_scheduled"
    assert billing.subscription(client, headers)["pending_tier"] == "starter"

    undone = billing.post_webhook(client, _portal(billing, "evt_u", cancel=False, minutes=2))
    assert undone.get_json()["data"]["outcome"] == "resumed"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"], data["pending_tier"]) == \
        ("pro", False, "premium")
    [_, scheduled] = billing.events_of(EMAIL, "downgrade_scheduled")
    assert (scheduled["from_tier"], scheduled["to_tier"]) == ("pro", "premium")

    set_clock(period_end + timedelta(minutes=1))
    with app.app_context():
        process_due_subscriptions()
        db.session.remove()
    assert billing.subscription(client, headers)["tier"] == "premium"


@pytest.mark.parametrize("granted", ["premium", "pro"])
def test_a_renewal_after_a_lost_portal_undo_keeps_the_grant(
        stripe_app, auth, admin_auth, billing, set_clock, granted):
    """Premium paid through Stripe, then granted (Premium or Pro) by an administrator, so
    Stripe was told to renew nothing. The user undoes that cancel in Stripe's billing portal
    and the notice of it is lost: Stripe renews Premium at the period's end. The renewal
    does not take the grant away (the user keeps the granted tier, free, with no end): the
    month Stripe charged runs under the grant, as the month paid before it did, and Stripe is
    told again to renew nothing. The same invoice notified again changes nothing more."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), granted).status_code == 200
    assert _cancel_flags(fake) == [["true"]]

    set_clock(period_end + timedelta(minutes=2))
    renewal = dict(user_id=billing.user_id(EMAIL), tier=None, period_start=period_end,
                   period_end=period_end + 30 * DAY, price="price_prem",
                   subscription="sub_s1", customer="cus_s1",
                   created=period_end + timedelta(minutes=1))
    before = billing.subscription(client, headers)
    fake.down = True  # Stripe cannot be told: nothing is kept, Stripe sends it again
    resp = billing.post_webhook(client, billing.invoice_event("evt_renew", "invoice.paid",
                                                              **renewal))
    assert resp.status_code == 502, resp.get_json()
    assert billing.subscription(client, headers) == before
    fake.down = False
    resp = billing.post_webhook(client, billing.invoice_event("evt_renew", "invoice.paid",
                                                              **renewal))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["outcome"] == "renewed_under_grant"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"], data["cancel_at_period_end"],
            data["pending_tier"]) == (granted, "active", True, False, None)
    assert datetime.fromisoformat(data["current_period_end"]) == period_end + 30 * DAY
    assert _cancel_flags(fake) == [["true"], ["true"], ["true"]]  # asked again: it is free
    [renewed] = billing.events_of(EMAIL, "renewed")
    assert (renewed["from_tier"], renewed["to_tier"], renewed["amount_cents"]) == \
        (granted, granted, 999)
    assert renewed["details"]["paid_tier"] == "premium"

    again = billing.invoice_event("evt_renew_again", "invoice.payment_succeeded", **renewal)
    resp = billing.post_webhook(client, again)
    assert resp.get_json()["data"]["outcome"] == "already_recorded"
    assert len(billing.events_of(EMAIL, "renewed")) == 1
    assert billing.subscription(client, headers) == data

    set_clock(period_end + 40 * DAY)  # the month Stripe charged is over: the grant goes on
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == (granted, True)


# ---- cancellations Stripe already confirmed are not asked for again ---------------------------

@pytest.mark.parametrize("then", ["starter", "pro"])
def test_a_grant_after_a_past_due_grant_does_not_ask_stripe_to_cancel_again(
        stripe_app, auth, admin_auth, billing, then):
    """A renewal failed, Premium was granted and Stripe confirmed the cancel of the failing
    subscription. The grant revoked (or Pro granted) later needs nothing from Stripe: it goes
    through while Stripe is unreachable, and Stripe is not asked again."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    _past_due(client, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "premium").status_code == 200
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    sent = len(fake.requests)
    fake.down = True
    resp = _grant(client, admin_auth, uid, then)
    assert resp.status_code == 200, resp.get_json()
    assert billing.subscription(client, headers)["tier"] == then
    assert len(fake.requests) == sent
    fake.down = False
    if then == "starter":  # granted again after the revoke: still nothing to ask
        assert _grant(client, admin_auth, uid, "premium").status_code == 200
        assert len(fake.requests) == sent


def test_a_grant_after_a_grant_over_a_paid_month_does_not_ask_stripe_again(
        stripe_app, auth, admin_auth, billing):
    """Premium paid through Stripe, Premium granted (Stripe confirmed it renews nothing), then
    Pro granted and the user cancels under it: Stripe was told already, so both go through
    while it is unreachable."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "premium").status_code == 200
    assert _cancel_flags(fake) == [["true"]]
    fake.down = True
    resp = _grant(client, admin_auth, uid, "pro")
    assert resp.status_code == 200, resp.get_json()
    resp = client.delete("/api/user/subscription", json={}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert (data["tier"], data["complimentary"], data["cancel_at_period_end"]) == \
        ("pro", True, True)
    fake.down = False
    assert _cancel_flags(fake) == [["true"]]


def test_revoking_a_grant_after_the_paid_month_under_it_ran_out_needs_no_stripe(
        stripe_app, auth, admin_auth, billing, set_clock):
    """Premium paid through Stripe, Pro granted over it (Stripe confirmed it renews nothing);
    the paid month has run out, so Stripe's subscription ended by itself. Revoking the grant
    asks Stripe for nothing: it goes through while Stripe is unreachable."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "pro").status_code == 200
    set_clock(period_end + 3 * DAY)
    sent = len(fake.requests)
    fake.down = True
    resp = _grant(client, admin_auth, uid, "starter")
    assert resp.status_code == 200, resp.get_json()
    assert billing.subscription(client, headers)["tier"] == "starter"
    assert len(fake.requests) == sent


def test_erasing_an_account_after_a_past_due_grant_does_not_ask_stripe_to_cancel_again(
        stripe_app, auth, admin_auth, billing):
    """The grant canceled the failing Stripe subscription (confirmed); the account is then
    erased: Stripe is not asked again, and a later notice of that subscription is still
    recognised as the erased account's (it changes nothing)."""
    from sqlalchemy import select

    from sonicus.extensions import db
    from sonicus.models import OwedCancellation

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    _past_due(client, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    fake.down = True
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    fake.down = False
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    with app.app_context():
        [owed] = db.session.execute(select(OwedCancellation)).scalars().all()
        assert (owed.subscription_id, owed.done_at is not None) == ("sub_s1", True)
        db.session.remove()
    late = billing.subscription_deleted("evt_gone", subscription="sub_s1", customer="cus_s1")
    assert billing.post_webhook(client, late).get_json()["data"]["outcome"] == \
        "erased_customer"
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]


@pytest.mark.parametrize("canceled", [False, True])
def test_a_refunded_upgrade_over_a_grant_returns_to_the_grant_as_it_was(
        stripe_app, auth, admin_auth, billing, canceled):
    """Premium paid through Stripe, Premium granted over it (perhaps canceled under the
    grant: it ends with the paid month), then Pro bought as a prorated upgrade, whose
    charge support refunds in full. The user fell back to Premium as a paying customer
    (``complimentary`` false, Stripe renewing Premium): the grant was lost. Now they are
    back on the grant as it was: Premium free of charge, ending with the paid month if they
    had canceled it, and Stripe renews nothing."""
    from test_billing_refunds import _invoice, _refund

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    if canceled:
        assert client.delete("/api/user/subscription", json={},
                             headers=headers).status_code == 200
    before = billing.subscription(client, headers)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    upgrade = _invoice(billing, "evt_upgrade", charge="ch_up", start=clock.now(),
                       end=period_end, created=clock.now())
    upgrade["data"]["object"].update(amount_paid=667, billing_reason="subscription_update")
    upgrade["data"]["object"]["lines"]["data"][0].update(
        amount=667, pricing={"price_details": {"price": "price_pro"}},
        parent={"subscription_item_details": {"proration": True}})
    assert billing.post_webhook(client, upgrade).status_code == 200

    resp = billing.post_webhook(client, _refund("evt_r_up", "ch_up", refunded=667, amount=667))
    assert resp.get_json()["data"]["outcome"] == "upgrade_refunded", resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"], data["cancel_at_period_end"],
            data["pending_tier"], data["current_period_end"]) == (
        "premium", "active", True, canceled, before["pending_tier"],
        before["current_period_end"]), data
    assert _cancel_flags(fake)[-1] == ["true"]  # the grant's: Stripe renews nothing
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == []
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert (refunded["from_tier"], refunded["to_tier"], refunded["amount_cents"]) \
        == ("pro", "premium", 667)


def test_a_refunded_upgrade_under_a_later_grant_of_that_tier_keeps_the_grant(
        stripe_app, auth, admin_auth, billing):
    """Premium paid, Pro bought as a prorated upgrade, then Pro granted: the upgrade's
    charge refunded afterwards took the user down to Premium, still marked free of charge
    (the grant of Pro lost). A grant is never taken away by money given back: Pro stays
    granted, the refund is recorded."""
    from test_billing_refunds import _invoice, _refund

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    period_end = _stripe_paid(client, headers, billing)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    upgrade = _invoice(billing, "evt_upgrade", charge="ch_up", start=clock.now(),
                       end=period_end, created=clock.now())
    upgrade["data"]["object"].update(amount_paid=667, billing_reason="subscription_update")
    upgrade["data"]["object"]["lines"]["data"][0].update(
        amount=667, pricing={"price_details": {"price": "price_pro"}},
        parent={"subscription_item_details": {"proration": True}})
    assert billing.post_webhook(client, upgrade).status_code == 200
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    sent = len(fake.requests)

    resp = billing.post_webhook(client, _refund("evt_r_up", "ch_up", refunded=667, amount=667))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["outcome"].startswith("recorded"), resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("pro", True), data
    assert len(fake.requests) == sent  # nothing asked of Stripe
    assert len(billing.events_of(EMAIL, "refunded")) == 1
