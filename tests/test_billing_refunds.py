"""Refunds and disputes made at the provider (``charge.refunded``, ``charge.dispute.created``):
money given back ends what it paid for, and nothing else."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)


def _stamp(moment) -> int:
    return int(moment.timestamp())


def _invoice(billing, event_id, *, charge, start, end, created=None):
    event = billing.invoice_event(event_id, "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, period_start=start, period_end=end,
                                  price="price_prem", subscription="sub_s1", customer="cus_s1",
                                  created=created or start)
    event["data"]["object"].update(charge=charge, payment_intent=f"pi_{charge}")
    return event


def _refund(event_id, charge, *, refunded=999, amount=999, charged_at=None):
    return {"id": event_id, "object": "event", "type": "charge.refunded",
            "created": _stamp(clock.now()),
            "data": {"object": {"id": charge, "object": "charge", "customer": "cus_s1",
                                "amount": amount, "amount_refunded": refunded,
                                "refunded": refunded >= amount,
                                "payment_intent": f"pi_{charge}",
                                "created": _stamp(charged_at or clock.now())}}}


def _dispute(event_id, charge):
    return {"id": event_id, "object": "event", "type": "charge.dispute.created",
            "created": _stamp(clock.now()),
            "data": {"object": {"id": f"dp_{charge}", "object": "dispute", "charge": charge,
                                "amount": 999, "payment_intent": f"pi_{charge}",
                                "reason": "fraudulent", "status": "needs_response"}}}


def _paid(client, headers, billing):
    """Premium through Stripe, its period (paid by charge ``ch_1``) began ten days ago."""
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    now = clock.now()
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - 10 * DAY,
                    end=now + 20 * DAY)
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"


def _outcome(billing, client, event):
    resp = billing.post_webhook(client, event)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["data"]["outcome"]


def test_a_full_refund_of_the_current_period_ends_the_paid_tier(stripe_app, auth, billing):
    """Support refunded the month in full in the Stripe dashboard: the user kept Premium for
    the rest of the month they no longer paid for. Now the refund ends it (starter, a
    ``refunded`` event in the history) and Stripe renews nothing; the same notice again, or
    another notice of the same refund, ends nothing twice."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)

    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "access_ended"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("starter", "active")
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert (refunded["from_tier"], refunded["to_tier"], refunded["amount_cents"]) \
        == ("premium", "starter", 999)
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") != []

    assert billing.post_webhook(client, _refund("evt_r1", "ch_1")).get_json()["data"][
        "duplicate"] is True
    assert _outcome(billing, client, _refund("evt_r1b", "ch_1")) == "already_recorded"
    assert len(billing.events_of(EMAIL, "refunded")) == 1
    # the period's payment notified again (its invoice) brings nothing back
    again = _invoice(billing, "evt_paid_again", charge="ch_1", start=clock.now() - 10 * DAY,
                     end=clock.now() + 20 * DAY)
    assert _outcome(billing, client, again) == "refunded"
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_a_partial_refund_keeps_the_tier_and_is_recorded(stripe_app, auth, billing):
    """A goodwill refund of part of the month leaves the paid tier as it is; the history
    shows the amount given back."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)

    assert _outcome(billing, client, _refund("evt_r1", "ch_1", refunded=300)) == "recorded"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "active")
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert refunded["amount_cents"] == 300 and refunded["details"]["full"] is False
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []
    # the rest refunded later: the whole charge is given back, the tier ends
    assert _outcome(billing, client, _refund("evt_r2", "ch_1")) == "access_ended"
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_a_dispute_of_the_current_periods_charge_ends_the_paid_tier(stripe_app, auth,
                                                                    billing):
    """The user's bank disputed the month's charge (a chargeback): the money is held back
    from us, so the paid tier ends as after a refund, though the dispute names only the
    charge."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)

    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "access_ended"
    assert billing.subscription(client, headers)["tier"] == "starter"
    [disputed] = billing.events_of(EMAIL, "disputed")
    assert (disputed["from_tier"], disputed["to_tier"]) == ("premium", "starter")
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") != []
    # the refund that settles the dispute ends nothing more
    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "recorded"
    assert len(billing.events_of(EMAIL, "canceled")) == 0


def test_a_refund_of_an_older_periods_charge_keeps_the_current_period(stripe_app, auth,
                                                                      billing, set_clock):
    """Last month's charge refunded after this month's renewal was paid: the month paid for
    now runs on."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = clock.now() + 20 * DAY
    set_clock(end + timedelta(minutes=30))
    renewal = _invoice(billing, "evt_renew", charge="ch_2", start=end, end=end + 30 * DAY,
                       created=clock.now())
    assert _outcome(billing, client, renewal) == "renewed"

    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "recorded_older_period"
    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "recorded_older_period"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "active")
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []


def test_a_refund_notified_before_the_renewal_it_refunds_grants_nothing(
        stripe_app, auth, billing, set_clock):
    """The renewal was charged and refunded at once; the refund's notice came before the
    renewal's. The renewal then gives no free month: the period that ended stays ended."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = clock.now() + 20 * DAY
    set_clock(end + timedelta(minutes=30))
    charged = end + timedelta(minutes=20)

    refund = _refund("evt_r2", "ch_2", charged_at=charged)
    assert _outcome(billing, client, refund) == "recorded_next_period"
    renewal = _invoice(billing, "evt_renew", charge="ch_2", start=end, end=end + 30 * DAY,
                       created=charged)
    assert _outcome(billing, client, renewal) == "refunded"
    assert billing.events_of(EMAIL, "renewed") == []


def test_a_refund_and_a_dispute_of_the_month_at_once_end_it_once(stripe_app, auth, billing):
    """The refund made in the dashboard and the bank's dispute of the same charge arrive at
    the same moment (real threads, PostgreSQL): the tier ends once, Stripe is asked once, and
    both are in the history."""
    import threading

    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    events = [_refund("evt_r1", "ch_1"), _dispute("evt_d1", "ch_1"), _refund("evt_r1b", "ch_1")]
    outcomes, barrier = [], threading.Barrier(len(events))

    def deliver(event):
        with app.app_context():
            barrier.wait()
            resp = billing.post_webhook(app.test_client(), event)
            outcomes.append((resp.status_code, resp.get_json()["data"]["outcome"]))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(o for _, o in outcomes).count("access_ended") == 1, outcomes
    assert all(status == 200 for status, _ in outcomes), outcomes
    assert billing.subscription(client, headers)["tier"] == "starter"
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_s1")) == 1
    ended = [e for e in billing.events_of(EMAIL) if e["details"].get("ended_access")]
    assert len(ended) == 1


def _upgraded_to_pro(client, headers, billing, stripe, *, notify_invoice=True):
    """Premium paid by ``ch_1`` (its period began ten days ago), then Pro chosen here: Stripe
    charges the difference for the rest of the period at once (charge ``ch_up``, 667)."""
    _paid(client, headers, billing)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    end = datetime.fromisoformat(billing.subscription(client, headers)["current_period_end"])
    if notify_invoice:
        upgrade = _invoice(billing, "evt_upgrade", charge="ch_up", start=clock.now(), end=end,
                           created=clock.now())
        upgrade["data"]["object"].update(amount_paid=667, billing_reason="subscription_update")
        line = upgrade["data"]["object"]["lines"]["data"][0]
        line.update(amount=667, pricing={"price_details": {"price": "price_pro"}},
                    parent={"subscription_item_details": {"proration": True}})
        assert _outcome(billing, client, upgrade) == "already_recorded"
    return billing.subscription(client, headers)["current_period_end"]


def _upgrade_refund(event_id="evt_r_up", *, invoice=None):
    event = _refund(event_id, "ch_up", refunded=667, amount=667)
    if invoice:
        event["data"]["object"]["invoice"] = invoice
    return event


def _period_kept_on(tier, client, headers, billing, stripe, period_end):
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == (tier, "active"), data
    assert data["current_period_end"] == period_end, data
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []


def test_a_refund_of_an_upgrades_charge_keeps_the_period_the_base_payment_paid(
        stripe_app, auth, billing):
    """Premium paid for the month, Pro chosen mid-month, and support refunded the upgrade's
    difference: the user fell to Starter and Stripe's subscription was canceled, though the
    month's Premium payment was never given back. Now the refund takes back only the
    upgrade: Premium to the period's end, Stripe renewing Premium."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    end = _upgraded_to_pro(client, headers, billing, stripe)
    [upgraded] = billing.events_of(EMAIL, "upgraded")
    assert upgraded["details"]["charge_id"] == "ch_up"  # its invoice's charge, kept

    assert _outcome(billing, client, _upgrade_refund(invoice="in_evt_upgrade")) \
        == "upgrade_refunded"
    _period_kept_on("premium", client, headers, billing, stripe, end)
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert (refunded["from_tier"], refunded["to_tier"], refunded["amount_cents"]) \
        == ("pro", "premium", 667)
    back = [form for method, path, form, _ in stripe.requests
            if method == "POST" and path == "/v1/subscriptions/sub_s1"][-1]
    assert back["items[0][price]"] == ["price_prem"] and back["proration_behavior"] == ["none"]
    # the same refund notified again takes nothing more
    assert _outcome(billing, client, _upgrade_refund("evt_r_up2")) == "already_recorded"
    _period_kept_on("premium", client, headers, billing, stripe, end)


def test_a_refund_of_an_upgrade_notified_before_its_invoice_keeps_the_base_period(
        stripe_app, auth, billing):
    """The upgrade's charge refunded before its invoice's notice arrived: no stored charge
    matches it, and it is smaller than the month's payment, so it cannot be that payment.
    It takes back the upgrade made in the period, never the period; the invoice's notice
    afterwards grants nothing."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    end = _upgraded_to_pro(client, headers, billing, stripe, notify_invoice=False)

    assert _outcome(billing, client, _upgrade_refund()) == "upgrade_refunded"
    _period_kept_on("premium", client, headers, billing, stripe, end)
    # the upgrade's invoice notified now: it grants nothing, and Stripe's subscription,
    # renewing the month the base payment paid, is not canceled for it
    upgrade = _invoice(billing, "evt_upgrade", charge="ch_up", start=clock.now(),
                       end=datetime.fromisoformat(end), created=clock.now())
    upgrade["data"]["object"].update(amount_paid=667, billing_reason="subscription_update")
    upgrade["data"]["object"]["lines"]["data"][0].update(
        amount=667, pricing={"price_details": {"price": "price_pro"}},
        parent={"subscription_item_details": {"proration": True}})
    assert _outcome(billing, client, upgrade) == "refunded"
    _period_kept_on("premium", client, headers, billing, stripe, end)


def test_an_unmatched_refund_smaller_than_the_periods_payment_ends_nothing(
        stripe_app, auth, billing):
    """A charge of 3.00 nothing here knows of (made in Stripe's dashboard) refunded in full
    during the month: it is recorded, and the month paid 9.99 for runs on."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = billing.subscription(client, headers)["current_period_end"]

    assert _outcome(billing, client, _refund("evt_rx", "ch_x", refunded=300, amount=300)) \
        == "recorded"
    _period_kept_on("premium", client, headers, billing, stripe, end)
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert refunded["details"].get("ended_access") is None


def test_a_dispute_finds_its_payment_by_the_payment_id_indexes(stripe_app, auth, billing):
    """A dispute names only its charge: the payment it is of is found through an index on
    the payment's ids, not by reading every subscription event of every user (which grew
    with the whole history at each dispute notice). What it finds is unchanged: the payment
    of that charge, whoever else paid."""
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from sonicus.extensions import db
    from sonicus.services.subscriptions.refunds import payment_owner

    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    other = auth("other@example.com")
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=other).status_code == 200
    theirs = billing.invoice_event("evt_other", "invoice.paid",
                                   user_id=billing.user_id("other@example.com"), tier=None,
                                   period_start=clock.now() - DAY, period_end=clock.now() + DAY,
                                   price="price_prem", subscription="sub_o", customer="cus_o")
    theirs["data"]["object"].update(charge="ch_o", payment_intent="pi_ch_o")
    assert _outcome(billing, client, theirs) == "activated"

    with app.app_context():
        for ids in ([("charge_id", "ch_1")], [("payment_intent_id", "pi_ch_1")],
                    [("charge_id", "ch_none"), ("invoice_id", "in_evt_paid")]):
            query = payment_owner(ids)
            assert db.session.execute(query).scalar_one() == billing.user_id(EMAIL)
            db.session.execute(text("SET LOCAL enable_seqscan = off"))
            sql = query.compile(dialect=postgresql.dialect(),
                                compile_kwargs={"literal_binds": True})
            plan = "\n".join(db.session.execute(text(f"EXPLAIN {sql}")).scalars())
            db.session.rollback()
            assert "ix_subscription_events_payment_" in plan, plan

    assert _outcome(billing, client, _dispute("evt_d1", "ch_o")) == "access_ended"
    assert billing.subscription(client, other)["tier"] == "starter"
    assert billing.subscription(client, headers)["tier"] == "premium"


def _refund_amounts(client, headers) -> list:
    resp = client.get("/api/user/subscription/history", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()["data"]
    items = body["items"] if isinstance(body, dict) else body
    return sorted(str(item["amount"]) for item in items if item["type"] == "refunded")


@pytest.mark.parametrize("order", ["partial_first", "full_first"])
def test_each_refund_in_the_history_shows_the_money_it_gave_back(stripe_app, auth, billing,
                                                                 order):
    """The month's 9.99 given back in two refunds, 3.00 then the remaining 6.99. The history
    showed Stripe's running total (3.00, then 9.99: 12.99 given back in all) and, when the
    partial refund's notice arrived after the full one's, 9.99 then 3.00. Each refund now
    shows its own amount, 3.00 and 6.99, whichever notice arrives first and however often."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    partial, rest = _refund("evt_r1", "ch_1", refunded=300), _refund("evt_r2", "ch_1")
    notices = [partial, rest] if order == "partial_first" else [rest, partial]
    for event in notices:
        _outcome(billing, client, event)
    assert _refund_amounts(client, headers) == ["3.00", "6.99"]
    # each notified again (another notice of the same refund), in either order
    for event_id, event in (("evt_r1b", partial), ("evt_r2b", rest)):
        assert _outcome(billing, client, {**event, "id": event_id}) == "already_recorded"
    assert _refund_amounts(client, headers) == ["3.00", "6.99"]
    assert sum(e["amount_cents"] for e in billing.events_of(EMAIL, "refunded")) == 999
    assert billing.subscription(client, headers)["tier"] == "starter"
