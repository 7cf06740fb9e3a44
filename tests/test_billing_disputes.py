"""A dispute's end (``charge.dispute.closed``, ``charge.dispute.funds_reinstated``): a dispute
the merchant wins gives back what the dispute took, once, in whatever order Stripe's notices
arrive; a lost one, or an inquiry closed, changes nothing more."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from test_billing_refunds import EMAIL, _dispute, _invoice, _outcome, _paid, _stamp

from sonicus import clock

DAY = timedelta(days=1)


def _closed(event_id, charge, status="won"):
    event = _dispute(event_id, charge)
    event["type"] = "charge.dispute.closed"
    event["data"]["object"]["status"] = status
    return event


def _reinstated(event_id, charge):
    event = _dispute(event_id, charge)
    event["type"] = "charge.dispute.funds_reinstated"
    event["data"]["object"]["status"] = "won"
    return event


def _disputed_then(client, headers, billing):
    """Premium paid by ``ch_1`` (twenty days of it left), then disputed: Starter now, the
    Stripe subscription canceled. The period's end."""
    _paid(client, headers, billing)
    end = billing.subscription(client, headers)["current_period_end"]
    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "access_ended"
    assert billing.subscription(client, headers)["tier"] == "starter"
    return end


def _stripe_changes(stripe) -> int:
    """Requests that would change or renew a Stripe subscription (a cancel aside)."""
    return len([1 for method, path, _, _ in stripe.requests
                if method == "POST" and path.startswith("/v1/subscriptions")])


def test_a_won_dispute_gives_the_paid_month_back_until_its_end(stripe_app, auth, billing,
                                                               set_clock):
    """The bank decided for us: the month's money stays paid, so the user gets Premium back
    until the end of the month it paid for. Stripe's subscription, canceled by the dispute,
    renews nothing: the month is shown ending, and at its end the user is on Starter."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    end = _disputed_then(client, headers, billing)
    changes = _stripe_changes(stripe)

    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["current_period_end"],
            data["cancel_at_period_end"]) == ("premium", "active", end, True)
    won = [e for e in billing.events_of(EMAIL, "disputed") if e["details"].get("outcome")]
    assert [(e["from_tier"], e["to_tier"], e["details"]["outcome"]) for e in won] \
        == [("starter", "premium", "won")]
    assert _stripe_changes(stripe) == changes  # nothing renews: nobody is charged again

    set_clock(datetime.fromisoformat(end) + timedelta(minutes=1))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("starter", "active")


def test_both_notices_of_a_won_dispute_give_the_month_back_once(stripe_app, auth, billing):
    """Stripe tells of a win twice (``funds_reinstated``, then ``closed`` won), and may
    deliver each again: the month comes back once, one event in the history."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    end = _disputed_then(client, headers, billing)

    assert _outcome(billing, client, _reinstated("evt_w1", "ch_1")) == "access_restored"
    assert billing.post_webhook(client, _reinstated("evt_w1", "ch_1")).get_json()["data"][
        "duplicate"] is True
    assert _outcome(billing, client, _closed("evt_w2", "ch_1")) == "already_recorded"
    assert _outcome(billing, client, _closed("evt_w3", "ch_1")) == "already_recorded"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["current_period_end"]) == ("premium", end)
    won = [e for e in billing.events_of(EMAIL, "disputed") if e["details"].get("outcome")]
    assert len(won) == 1


def test_both_notices_of_a_won_dispute_at_once_give_the_month_back_once(stripe_app, auth,
                                                                        billing):
    """``funds_reinstated`` and ``closed`` won delivered at the same moment (real threads,
    PostgreSQL): one gives the month back, the other finds it given."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    events = [_reinstated("evt_w1", "ch_1"), _closed("evt_w2", "ch_1")]
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
    assert sorted(outcomes) == [(200, "access_restored"), (200, "already_recorded")], outcomes
    assert billing.subscription(client, headers)["tier"] == "premium"


def test_a_lost_dispute_or_a_closed_inquiry_changes_nothing_more(stripe_app, auth, billing):
    """A dispute lost (the money stays with the bank) leaves the user on Starter; an
    inquiry closed leaves the month running as it was."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    assert _outcome(billing, client, _closed("evt_l1", "ch_1", "lost")) == "ignored"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("starter", False)

    other = auth("other@example.com")
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=other).status_code == 200
    theirs = billing.invoice_event("evt_other", "invoice.paid",
                                   user_id=billing.user_id("other@example.com"), tier=None,
                                   period_start=clock.now() - DAY, period_end=clock.now() + DAY,
                                   price="price_prem", subscription="sub_o", customer="cus_o")
    theirs["data"]["object"].update(charge="ch_o", payment_intent="pi_ch_o")
    assert _outcome(billing, client, theirs) == "activated"
    inquiry = _dispute("evt_q1", "ch_o")
    inquiry["data"]["object"]["status"] = "warning_needs_response"
    assert _outcome(billing, client, inquiry) == "recorded"
    assert _outcome(billing, client, _closed("evt_q2", "ch_o", "warning_closed")) == "ignored"
    data = billing.subscription(client, other)
    assert (data["tier"], data["cancel_at_period_end"]) == ("premium", False)
    assert stripe.received("DELETE", "/v1/subscriptions/sub_o") == []


def test_a_dispute_won_after_its_month_ended_is_recorded_and_gives_nothing(
        stripe_app, auth, billing, set_clock):
    """Won weeks later, when the month it paid for is over: nothing is left to give back, the
    history says it was won."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    end = _disputed_then(client, headers, billing)
    set_clock(datetime.fromisoformat(end) + 5 * DAY)

    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "recorded_period_over"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("starter", False)
    [won] = [e for e in billing.events_of(EMAIL, "disputed") if e["details"].get("outcome")]
    assert (won["from_tier"], won["to_tier"]) == ("starter", "starter")


def test_a_dispute_won_before_its_own_notice_leaves_the_month_as_it_was(stripe_app, auth,
                                                                        billing):
    """Stripe delivered the win before the dispute's own notice (and its funds withdrawn
    after it): the month runs on as if the dispute never took it, renewing as before;
    Stripe's subscription is not canceled."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = billing.subscription(client, headers)["current_period_end"]

    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "recorded"
    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "recorded_dispute_won"
    withdrawn = _dispute("evt_d2", "ch_1")
    withdrawn["type"] = "charge.dispute.funds_withdrawn"
    assert _outcome(billing, client, withdrawn) == "already_recorded"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["current_period_end"],
            data["cancel_at_period_end"]) == ("premium", "active", end, False)
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []


def test_a_dispute_won_before_its_payments_notice_lets_the_payment_grant_its_month(
        stripe_app, auth, billing):
    """The first month's charge disputed and the dispute won, both notified before the
    payment's own (Stripe retrying after an outage): the payment, when it comes, gives the
    month it paid for, and Stripe's subscription is not canceled."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "held_for_its_payment"
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "held_for_its_payment"
    assert _outcome(billing, client, _closed("evt_w2", "ch_1")) == "already_recorded"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "activated"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("premium", False)
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []
    outcomes = [e["details"].get("outcome") for e in billing.events_of(EMAIL, "disputed")]
    assert outcomes.count("won") == 1


def test_a_won_dispute_never_replaces_the_tier_bought_since(stripe_app, auth, billing):
    """After the dispute the user bought Pro (a new Stripe subscription and period): the
    win of the old Premium month is recorded and takes nothing of the Pro period."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    now = clock.now()
    pro = billing.invoice_event("evt_pro", "invoice.paid", user_id=billing.user_id(EMAIL),
                                tier=None, period_start=now, period_end=now + 30 * DAY,
                                price="price_pro", subscription="sub_s2", customer="cus_s1")
    pro["data"]["object"].update(charge="ch_2", payment_intent="pi_ch_2")
    assert _outcome(billing, client, pro) == "activated"
    before = billing.subscription(client, headers)

    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "recorded_superseded"
    after = billing.subscription(client, headers)
    assert (after["tier"], after["current_period_end"], after["cancel_at_period_end"]) \
        == ("pro", before["current_period_end"], False)


def test_the_month_given_back_neither_resumes_nor_downgrades(stripe_app, auth, billing):
    """The month given back by a won dispute has no subscription behind it to renew: a
    resume, or choosing the same tier again, or a lower paid tier, is 409 ``conflict`` and
    changes nothing; choosing Starter leaves it ending as it does."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    # Pro, so that there is a lower paid tier to ask for
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    end = billing.subscription(client, headers)["current_period_end"]
    assert _outcome(billing, client, _dispute("evt_d1", "ch_1")) == "access_ended"
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"
    changes = _stripe_changes(stripe)

    for method, path, body in (("post", "/api/user/subscription/resume", None),
                               ("post", "/api/user/subscription", {"tier": "pro"}),
                               ("post", "/api/user/subscription", {"tier": "premium"})):
        resp = getattr(client, method)(path, json=body, headers=headers)
        assert (resp.status_code, resp.get_json()["code"]) == (409, "conflict"), (path, body)
    data = billing.subscription(client, headers)
    assert (data["tier"], data["current_period_end"], data["cancel_at_period_end"]) \
        == ("pro", end, True)
    resp = client.post("/api/user/subscription", json={"tier": "starter"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("pro", True)
    assert _stripe_changes(stripe) == changes


def test_an_upgrade_of_the_month_given_back_goes_through_a_checkout(stripe_app, auth,
                                                                    billing):
    """Premium given back by a won dispute, then Pro asked for: no subscription is there to
    prorate, so Pro is a new checkout (Premium kept meanwhile), never an upgrade for free."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"
    changes = _stripe_changes(stripe)

    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert data["tier"] == "premium" and data["checkout"]["url"], data
    assert _stripe_changes(stripe) == changes
    assert billing.events_of(EMAIL, "upgraded") == []


def test_the_canceled_subscriptions_late_end_leaves_the_month_given_back(stripe_app, auth,
                                                                         billing):
    """Stripe's notice that the subscription the dispute canceled has ended arrives after the
    win: that subscription ended long ago; the month given back runs on."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    end = _disputed_then(client, headers, billing)
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"

    late = billing.subscription_deleted("evt_del", subscription="sub_s1", customer="cus_s1",
                                        created=clock.now() - DAY)
    assert _outcome(billing, client, late) == "stale"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["current_period_end"]) == ("premium", end)


def test_a_won_dispute_notice_carries_its_charge_expanded(stripe_app, auth, billing):
    """A dispute's ``charge`` may come expanded (an object): the win is matched all the
    same."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    won = _closed("evt_w1", "ch_1")
    won["data"]["object"]["charge"] = {"id": "ch_1", "object": "charge", "amount": 999,
                                       "customer": "cus_s1", "payment_intent": "pi_ch_1",
                                       "created": _stamp(clock.now() - 10 * DAY)}
    assert _outcome(billing, client, won) == "access_restored"


def test_a_refund_after_a_won_dispute_ends_the_month_given_back(stripe_app, auth, billing):
    """The dispute won gave the month back, then support refunded its charge in full: the
    money is given back after all, so the month ends (Starter now, a ``refunded`` event that
    ended the access)."""
    from test_billing_refunds import _refund

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _disputed_then(client, headers, billing)
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"

    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "access_ended"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["cancel_at_period_end"]) == ("starter", False)
    [refunded] = billing.events_of(EMAIL, "refunded")
    assert (refunded["from_tier"], refunded["to_tier"], refunded["details"]["ended_access"]) \
        == ("premium", "starter", True)


def test_a_won_dispute_of_an_upgrades_charge_gives_the_upgrade_back(stripe_app, auth, billing,
                                                                   set_clock):
    """Pro chosen mid-month (its difference charged), that charge disputed (Premium back for
    the rest of the month, Stripe renewing Premium), then the dispute won: Pro comes back for
    the rest of the month it was paid for, Premium after it, as Stripe renews it; nothing is
    asked of Stripe."""
    from test_billing_refunds import _upgraded_to_pro

    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    end = _upgraded_to_pro(client, headers, billing, stripe)
    assert _outcome(billing, client, _dispute("evt_d_up", "ch_up")) == "upgrade_disputed"
    assert billing.subscription(client, headers)["tier"] == "premium"
    changes = _stripe_changes(stripe)

    assert _outcome(billing, client, _closed("evt_w_up", "ch_up")) == "upgrade_restored"
    assert _outcome(billing, client, _reinstated("evt_w_up2", "ch_up")) == "already_recorded"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["current_period_end"], data["cancel_at_period_end"],
            data["pending_tier"]) == ("pro", end, False, "premium")
    assert _stripe_changes(stripe) == changes
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []

    set_clock(datetime.fromisoformat(end) + timedelta(minutes=1))
    assert billing.subscription(client, headers)["tier"] == "premium"


def test_a_failed_first_charge_of_a_new_checkout_leaves_the_month_given_back(
        stripe_app, auth, billing):
    """Premium given back by a won dispute; Pro's checkout then fails its first charge (a
    new Stripe subscription of its own): the month given back is not past due for it."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    end = _disputed_then(client, headers, billing)
    assert _outcome(billing, client, _closed("evt_w1", "ch_1")) == "access_restored"
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    now = clock.now()
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None, period_start=now,
                                   period_end=now + 30 * DAY, price="price_pro",
                                   subscription="sub_s2", customer="cus_s1")
    assert _outcome(billing, client, failed) == "stale"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["current_period_end"]) \
        == ("premium", "active", end)
