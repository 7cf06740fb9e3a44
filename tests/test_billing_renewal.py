"""The hour (or days, when notices are late) between a paid period's end and the provider's
renewal notice: the provider is already in the next period, billing the tier in force."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from sonicus import clock

EMAIL = "listener@example.com"
PRICES = {"premium": "price_prem", "pro": "price_pro"}


def _paid_until_just_now(client, headers, billing, set_clock, tier):
    """``tier`` paid through Stripe for a period that ended ten minutes ago: Stripe has
    renewed it (its invoice is paid about an hour after the period's end), the notice has not
    arrived yet. Returns the renewal's invoice event."""
    start = set_clock(clock.now().replace(microsecond=0))
    client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
    period_end = start + timedelta(minutes=5)
    paid = billing.invoice_event("evt_paid", "invoice.paid", user_id=billing.user_id(EMAIL),
                                 tier=None, period_start=period_end - timedelta(days=30),
                                 period_end=period_end, price=PRICES[tier],
                                 subscription="sub_s1", customer="cus_s1", created=start)
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    set_clock(period_end + timedelta(minutes=10))
    return billing.invoice_event("evt_renewal", "invoice.paid",
                                 user_id=billing.user_id(EMAIL), tier=None,
                                 period_start=period_end,
                                 period_end=period_end + timedelta(days=30),
                                 price=PRICES[tier], subscription="sub_s1",
                                 customer="cus_s1", created=clock.now())


@pytest.mark.parametrize(("paid", "chosen"), [("pro", "premium"), ("premium", "pro")])
def test_a_change_of_tier_while_the_renewal_is_on_its_way_waits_for_it(
        stripe_app, auth, billing, set_clock, paid, chosen):
    """The period ended ten minutes ago and Stripe is renewing it at the tier in force. A
    downgrade asked now used to take effect at once (its "end of the period" had passed), so
    the user lost Pro for a month Stripe charges Pro for; an upgrade was shown as costing
    0.00 while Stripe charges the difference for the whole new month. Until the renewal is
    known, a change of paid tier is 409 and nothing changes here or at Stripe; once it has
    arrived, the change acts on the new period."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    renewal = _paid_until_just_now(client, headers, billing, set_clock, paid)
    before = len(fake.received("POST", "/v1/subscriptions/sub_s1"))

    resp = client.post("/api/user/subscription", json={"tier": chosen}, headers=headers)
    assert resp.status_code == 409, resp.get_json()
    assert resp.get_json()["code"] == "conflict"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["pending_tier"]) == (paid, None)
    assert len(fake.received("POST", "/v1/subscriptions/sub_s1")) == before
    assert [e for e in billing.events_of(EMAIL)
            if e["type"] in ("upgraded", "downgrade_scheduled", "downgraded")] == []

    assert billing.post_webhook(client, renewal).get_json()["data"]["outcome"] == "renewed"
    resp = client.post("/api/user/subscription", json={"tier": chosen}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    if chosen == "premium":  # the downgrade is due at the new period's end
        assert (data["tier"], data["pending_tier"]) == ("pro", "premium")
    else:  # the upgrade is charged for the new period's rest: about the whole difference
        [upgraded] = billing.events_of(EMAIL, "upgraded")
        assert upgraded["amount_cents"] >= 990


def test_a_failed_renewal_notified_days_late_keeps_the_grace_from_the_failure(
        stripe_app, auth, billing, set_clock):
    """Stripe failed to charge the renewal an hour after the period's end, but its notice
    reached us two days later (an outage of the webhook endpoint, Stripe's own retries of
    it). The 3-day grace runs from the failed charge, not from the notice's arrival: the
    user keeps the tier three days after the failure, not five."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid_until_just_now(client, headers, billing, set_clock, "premium")
    period_end = clock.now() - timedelta(minutes=10)
    failed_at = period_end + timedelta(hours=1)
    failed = billing.invoice_event("evt_failed", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   period_start=period_end,
                                   period_end=period_end + timedelta(days=30),
                                   price="price_prem", subscription="sub_s1",
                                   customer="cus_s1", created=failed_at)
    set_clock(failed_at + timedelta(days=2))
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    data = billing.subscription(client, headers)
    assert data["status"] == "past_due"
    assert data["grace_ends_at"].startswith((failed_at + timedelta(days=3)).isoformat()[:19])

    set_clock(failed_at + timedelta(days=3, minutes=1))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("starter", "active")


def _line(amount, price, start, end, *, proration):
    return {"id": f"il_{price}_{amount}", "object": "line_item", "amount": amount,
            "period": {"start": int(start.timestamp()), "end": int(end.timestamp())},
            "pricing": {"price_details": {"price": price}},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"proration": proration,
                                                     "subscription": "sub_s1"}},
            "metadata": {}}


def test_an_upgrades_invoice_with_its_credit_line_is_taken(stripe_app, auth, billing,
                                                            set_clock):
    """An upgrade made here is invoiced by Stripe at once: a credit line (a negative amount,
    the unused Premium days) beside the charge for Pro. Its ``invoice.paid`` was refused as
    a whole (400 "not an amount in cents"), so Stripe kept sending it for days and counted
    the endpoint as failing; it is taken now (the upgrade is recorded already)."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    start = set_clock(clock.now().replace(microsecond=0))
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    uid = billing.user_id(EMAIL)
    period_end = start + timedelta(days=20)
    paid = billing.invoice_event("evt_paid", "invoice.paid", user_id=uid, tier=None,
                                 period_start=start - timedelta(days=10), period_end=period_end,
                                 price="price_prem", subscription="sub_s1", customer="cus_s1",
                                 created=start - timedelta(days=10))
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    upgrade = billing.invoice_event("evt_upgrade", "invoice.paid", user_id=uid, tier=None,
                                    period_start=start, period_end=period_end, amount=667,
                                    price="price_pro", subscription="sub_s1",
                                    customer="cus_s1", created=clock.now())
    upgrade["data"]["object"]["lines"]["data"] = [
        _line(-666, "price_prem", start, period_end, proration=True),
        _line(1333, "price_pro", start, period_end, proration=True)]
    resp = billing.post_webhook(client, upgrade)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["outcome"] == "already_recorded"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("pro", "active")
    assert data["current_period_end"].startswith(period_end.isoformat()[:19])


def test_a_renewal_carrying_a_portal_changes_proration_renews_the_period(
        stripe_app, auth, billing, set_clock):
    """Premium, then Pro chosen in Stripe's billing portal mid-period: the portal prorates
    onto the next invoice, so the renewal's invoice carries the credit and the charge for
    the rest of the old period beside the new month. It renews the period (it used to be
    taken for the old period again: "already recorded", and three days after the period's
    end the user, who had paid, fell to Starter)."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    start = set_clock(clock.now().replace(microsecond=0))
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    uid = billing.user_id(EMAIL)
    period_start, period_end = start - timedelta(days=10), start + timedelta(days=20)
    paid = billing.invoice_event("evt_paid", "invoice.paid", user_id=uid, tier=None,
                                 period_start=period_start, period_end=period_end,
                                 price="price_prem", subscription="sub_s1", customer="cus_s1",
                                 created=period_start)
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    portal = billing.subscription_updated("evt_portal", price="price_pro",
                                          subscription="sub_s1", customer="cus_s1",
                                          created=start)
    assert billing.post_webhook(client, portal).get_json()["data"]["outcome"] == \
        "plan_changed"

    set_clock(period_end + timedelta(hours=1))
    renewal = billing.invoice_event("evt_renewal", "invoice.paid", user_id=uid, tier=None,
                                    period_start=period_end,
                                    period_end=period_end + timedelta(days=30),
                                    amount=2999, price="price_pro", subscription="sub_s1",
                                    customer="cus_s1", created=clock.now())
    renewal["data"]["object"]["lines"]["data"] = [
        _line(-666, "price_prem", start, period_end, proration=True),
        _line(1333, "price_pro", start, period_end, proration=True),
        _line(1999, "price_pro", period_end, period_end + timedelta(days=30), proration=False)]
    assert billing.post_webhook(client, renewal).get_json()["data"]["outcome"] == "renewed"
    data = billing.subscription(client, headers)
    assert data["tier"] == "pro"
    assert data["current_period_end"].startswith(
        (period_end + timedelta(days=30)).isoformat()[:19])

    set_clock(period_end + timedelta(days=4))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("pro", "active")


def test_a_cancel_while_the_renewal_is_on_its_way_waits_for_it(stripe_app, auth, billing,
                                                               set_clock):
    """The period ended ten minutes ago and Stripe is renewing it. A cancel asked now used to
    end Premium here at once (its "end of the period" had passed) while Stripe, already in
    the new period, charged it; the renewal then brought Premium back shown as renewing,
    though Stripe ends it after this month. Until the renewal is known the cancel is 409 and
    nothing changes here or at Stripe; once it has arrived, the cancel is at the new
    period's end, as Stripe does it."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    renewal = _paid_until_just_now(client, headers, billing, set_clock, "premium")
    before = len(fake.received("POST", "/v1/subscriptions/sub_s1"))

    for resp in (client.delete("/api/user/subscription", json={}, headers=headers),
                 client.post("/api/user/subscription", json={"tier": "starter"},
                             headers=headers)):
        assert resp.status_code == 409, resp.get_json()
        assert resp.get_json()["code"] == "conflict"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("premium", False)
    assert len(fake.received("POST", "/v1/subscriptions/sub_s1")) == before

    assert billing.post_webhook(client, renewal).get_json()["data"]["outcome"] == "renewed"
    resp = client.delete("/api/user/subscription", json={}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert (data["tier"], data["cancel_at_period_end"]) == ("premium", True)
    assert datetime.fromisoformat(data["current_period_end"]) > clock.now() + timedelta(days=29)
    assert fake.received("POST", "/v1/subscriptions/sub_s1")[-1].get(
        "cancel_at_period_end") == ["true"]


def test_a_trials_card_notified_after_the_trial_ended_grants_no_free_month(
        stripe_app, auth, billing):
    """The card was added at Stripe during the trial, but its notice ($0: nothing is charged
    before the trial's end) arrived after the trial had ended here without a card. It used
    to activate Premium for a month recorded at 0.00 that nobody paid for. Now it notes the
    card and grants nothing; Stripe's first charge at the trial's end activates Premium for
    the month it paid, with what it paid."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    reference = client.post("/api/user/subscription", json={"tier": "premium"},
                            headers=headers).get_json()["data"]["checkout"]["reference"]
    ended = (clock.now() - timedelta(minutes=5)).replace(microsecond=0)
    billing.arrange(EMAIL, trial_ends_at=ended)
    with app.app_context():
        assert process_due_subscriptions()["outcomes"] == {"trial_ended": 1}
        db.session.remove()

    card = billing.checkout_completed("evt_card", user_id=billing.user_id(EMAIL),
                                      tier="premium", amount=0, reference=reference,
                                      customer="cus_s1", subscription="sub_s1",
                                      created=ended - timedelta(days=2))
    assert billing.post_webhook(client, card).get_json()["data"]["outcome"] == \
        "payment_method_added"
    assert billing.subscription(client, headers)["tier"] == "starter"
    assert billing.events_of(EMAIL, "activated") == []

    first = billing.invoice_event("evt_first", "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, price="price_prem", period_start=ended,
                                  period_end=ended + timedelta(days=30), subscription="sub_s1",
                                  customer="cus_s1")
    assert billing.post_webhook(client, first).get_json()["data"]["outcome"] == "activated"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "active")
    [activated] = billing.events_of(EMAIL, "activated")
    assert activated["amount_cents"] == 999
    assert datetime.fromisoformat(data["current_period_end"]) == ended + timedelta(days=30)
