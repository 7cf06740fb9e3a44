"""Refunds and disputes arriving as Stripe really delivers them: again, out of order, before
the payment's own notice, after the period, for an erased or a downgraded account, at the
same time as other notices (real threads, PostgreSQL)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from test_billing_refunds import (
    EMAIL,
    _dispute,
    _invoice,
    _outcome,
    _paid,
    _refund,
    _refund_amounts,
)

from sonicus import clock

DAY = timedelta(days=1)


def test_a_refund_of_a_period_already_over_leaves_its_renewal(stripe_app, auth, billing,
                                                              set_clock):
    """The month ended and Stripe is renewing it (its notice not here yet) when last month's
    charge is refunded: nothing of last month is left to take back. The refund is recorded;
    the subscription is not canceled under the renewal Stripe just charged."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = clock.now() + 20 * DAY
    set_clock(end + timedelta(minutes=30))

    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "recorded_older_period"
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []
    renewal = _invoice(billing, "evt_renew", charge="ch_2", start=end, end=end + 30 * DAY,
                       created=end + timedelta(minutes=20))
    assert _outcome(billing, client, renewal) == "renewed"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "active")


def test_a_refund_before_the_first_payments_notice_grants_nothing(stripe_app, auth, billing):
    """The first month's charge refunded before its invoice's notice arrived (Stripe retrying
    after an outage): the payment, when its notice comes, gives no month."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    refund = _refund("evt_r1", "ch_1", charged_at=now - timedelta(minutes=5))
    assert _outcome(billing, client, refund) == "held_for_its_payment"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "refunded"
    assert billing.subscription(client, headers)["tier"] == "starter"
    [refunded] = billing.events_of(EMAIL, "refunded")  # in the history, as the payment's
    assert (refunded["amount_cents"], refunded["details"]["full"],
            refunded["details"]["charge_id"]) == (999, True, "ch_1")
    # the same refund notified again, now that its payment is known, ends nothing more
    assert _outcome(billing, client, _refund("evt_r1b", "ch_1")) == "already_recorded"


def test_a_first_payment_and_its_refund_at_once_grant_nothing(stripe_app, auth, billing):
    """A new customer's first invoice and its refund notified at the same moment (real
    threads, PostgreSQL): the refund is either applied to the payment or held for it, never
    lost between the two; the user ends on Starter."""
    import threading

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    refund = _refund("evt_r1", "ch_1", charged_at=now - timedelta(minutes=5))
    outcomes, barrier = [], threading.Barrier(2)

    def deliver(event):
        with app.app_context():
            barrier.wait()
            resp = billing.post_webhook(app.test_client(), event)
            outcomes.append((resp.status_code, resp.get_json()["data"]["outcome"]))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in (paid, refund)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 200 for status, _ in outcomes), outcomes
    assert billing.subscription(client, headers)["tier"] == "starter", outcomes
    assert len(billing.events_of(EMAIL, "refunded")) == 1, outcomes


def test_a_dispute_before_its_renewals_notice_grants_nothing(stripe_app, auth, billing,
                                                             set_clock):
    """The renewal's charge disputed before the renewal's notice arrived (a dispute names
    only the charge, no customer): the renewal, when its notice comes, gives no month."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = clock.now() + 20 * DAY
    set_clock(end + timedelta(minutes=30))
    charged = end + timedelta(minutes=20)
    assert billing.post_webhook(client, _dispute("evt_d2", "ch_2")).status_code == 200
    renewal = _invoice(billing, "evt_renew", charge="ch_2", start=end, end=end + 30 * DAY,
                       created=charged)
    assert _outcome(billing, client, renewal) == "refunded"
    assert billing.events_of(EMAIL, "renewed") == []


def test_a_full_refund_of_a_downgraded_users_month_ends_it_and_the_downgrade(
        stripe_app, auth, billing):
    """Pro paid, a downgrade to Premium scheduled, then the Pro month refunded in full: the
    paid tier ends now and no downgrade is left pending."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200
    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "access_ended"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["pending_tier"], data["cancel_at_period_end"]) \
        == ("starter", None, False)


def test_a_refund_of_an_erased_accounts_charge_changes_nothing(stripe_app, auth, billing):
    """The account was erased, then its last charge refunded and disputed: 200, nothing of
    anyone's changes and nothing is asked of Stripe again."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    deletes = len(stripe.received("DELETE", "/v1/subscriptions/sub_s1"))
    for event in (_refund("evt_r1", "ch_1"), _dispute("evt_d1", "ch_1")):
        resp = billing.post_webhook(client, event)
        assert resp.status_code == 200, resp.get_json()
        # no account to tie it to: at most its payment's ids are kept
        assert resp.get_json()["data"]["outcome"] in ("erased_customer", "unknown_customer",
                                                      "held_for_its_payment")
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_s1")) == deletes


def test_a_refund_and_its_payments_notice_at_once_grant_nothing(stripe_app, auth, billing,
                                                               set_clock):
    """The renewal's notice and its refund's arrive at the same moment (real threads,
    PostgreSQL): whichever is handled first, the refunded renewal gives no month."""
    import threading

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    end = clock.now() + 20 * DAY
    charged = end + timedelta(minutes=20)
    renewal = _invoice(billing, "evt_renew", charge="ch_2", start=end, end=end + 30 * DAY,
                       created=charged)
    refund = _refund("evt_r2", "ch_2", charged_at=charged)
    set_clock(end + timedelta(minutes=30))
    outcomes, barrier = [], threading.Barrier(2)

    def deliver(event):
        with app.app_context():
            barrier.wait()
            resp = billing.post_webhook(app.test_client(), event)
            outcomes.append((resp.status_code, resp.get_json()["data"]["outcome"]))

    threads = [threading.Thread(target=deliver, args=(e,)) for e in (renewal, refund)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status == 200 for status, _ in outcomes), outcomes
    renewed = billing.events_of(EMAIL, "renewed")
    assert renewed == [] or billing.subscription(client, headers)["tier"] == "starter", \
        outcomes


def test_a_payment_refunded_before_its_notice_leaves_nothing_renewing(stripe_app, auth,
                                                                      billing):
    """The first month refunded in full before its invoice's notice: the payment grants
    nothing, and Stripe's subscription it started is canceled too (it renewed next month,
    charging a user who had been given the money back and shown Starter), once."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "held_for_its_payment"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "refunded"
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_s1")) == 1
    again = _invoice(billing, "evt_paid_again", charge="ch_1", start=now - timedelta(minutes=5),
                     end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, again) == "refunded"
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_s1")) == 1
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_a_disputes_inquiry_ends_nothing_until_the_funds_are_withdrawn(stripe_app, auth,
                                                                      billing):
    """The bank only asked about the month's charge (an inquiry: Stripe's dispute in a
    ``warning_`` status, no money taken): the month runs on, the inquiry is in the history.
    When it turns into a dispute and the money is withdrawn, the month ends (once)."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    inquiry = _dispute("evt_d1", "ch_1")
    inquiry["data"]["object"]["status"] = "warning_needs_response"
    assert _outcome(billing, client, inquiry) == "recorded"
    assert billing.subscription(client, headers)["tier"] == "premium"
    assert stripe.received("DELETE", "/v1/subscriptions/sub_s1") == []
    [asked] = billing.events_of(EMAIL, "disputed")
    assert asked["details"]["full"] is False

    withdrawn = _dispute("evt_d2", "ch_1")
    withdrawn["type"] = "charge.dispute.funds_withdrawn"
    assert _outcome(billing, client, withdrawn) == "access_ended"
    assert billing.subscription(client, headers)["tier"] == "starter"
    created = _dispute("evt_d3", "ch_1")  # the dispute's own notice, after its withdrawal
    assert _outcome(billing, client, created) == "already_recorded"
    assert len(stripe.received("DELETE", "/v1/subscriptions/sub_s1")) == 1


def test_a_refund_held_for_its_payment_and_notified_twice_is_kept_once(stripe_app, auth,
                                                                        billing):
    """The same refund notified twice (two notices) before its payment's: it is held once,
    and the history shows it once when the payment comes."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "held_for_its_payment"
    assert _outcome(billing, client, _refund("evt_r1b", "ch_1")) == "already_recorded"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "refunded"
    assert len(billing.events_of(EMAIL, "refunded")) == 1


def test_two_notices_of_a_first_payment_and_its_refund_at_once_are_all_answered_200(
        stripe_app, auth, billing):
    """A new customer's first payment notified twice (its checkout's completion and its
    invoice) while its refund is notified at the same moment (real threads, PostgreSQL):
    the refund waits for the charge's ids while the checkout's notice commits, the invoice's
    notice comes in meanwhile. No delivery fails (PostgreSQL found a deadlock between the
    refund and the invoice's notice: 500, Stripe sending it again); the user ends on Starter,
    the refund recorded once."""
    from races import in_thread, lock_waiters
    from sqlalchemy import func, select

    from sonicus.extensions import db

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    reference = resp.get_json()["data"]["checkout"]["reference"]
    now = clock.now()
    user_id = billing.user_id(EMAIL)
    checkout = billing.checkout_completed("evt_cs", user_id=user_id, tier="premium",
                                          reference=reference, customer="cus_s1",
                                          subscription="sub_s1")
    checkout["data"]["object"]["invoice"] = "in_evt_paid"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    refund = _refund("evt_r1", "ch_1", charged_at=now - timedelta(minutes=5))

    def deliver(event):
        def action():
            with app.app_context():
                resp = billing.post_webhook(app.test_client(), event)
                return resp.status_code, (resp.get_json().get("data") or {}).get("outcome")
        return action

    with app.app_context():
        # another notice of the same charge being applied: holds the charge's id a moment
        other = db.engine.connect()
        transaction = other.begin()
        other.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended("sonicus-payment:ch_1", 0))))

        def wait_for(n):
            while lock_waiters(db.session) < n:
                pass

        refunding, refunded = in_thread(deliver(refund))
        wait_for(1)
        assert _outcome(billing, client, checkout) == "activated"
        invoicing, invoiced = in_thread(deliver(paid))
        wait_for(2)
        transaction.commit()
        other.close()
        refunding.join()
        invoicing.join()
    assert refunded[0][0] == 200 and invoiced[0][0] == 200, (refunded, invoiced)
    assert billing.subscription(client, headers)["tier"] == "starter", (refunded, invoiced)
    assert len(billing.events_of(EMAIL, "refunded")) == 1


def test_a_notice_caught_in_a_deadlock_is_applied_on_its_next_attempt_and_answered_200(
        stripe_app, auth, billing):
    """PostgreSQL ends a notice's transaction as a deadlock's victim (another transaction
    waits for its event row while holding the charge's id it waits for): the notice is run
    again at once, not answered 5xx for Stripe to send again later; the refund applies
    once."""
    import threading

    from races import in_thread, lock_waiters
    from sqlalchemy import func, insert, select

    from sonicus.extensions import db
    from sonicus.models import BillingEvent

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    refund = _refund("evt_r1", "ch_1")

    def deliver():
        with app.app_context():
            resp = billing.post_webhook(app.test_client(), refund)
            return resp.status_code, (resp.get_json().get("data") or {}).get("outcome")

    with app.app_context():
        other = db.engine.connect()
        transaction = other.begin()
        other.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended("sonicus-payment:ch_1", 0))))
        refunding, refunded = in_thread(deliver)
        deadline = time.monotonic() + 30
        while lock_waiters(db.session) < 1:
            assert time.monotonic() < deadline, f"the notice never waited: {refunded}"
            time.sleep(0.005)
        # the other transaction now waits for the notice's event row: a deadlock
        claimed = threading.Thread(target=lambda: other.execute(insert(BillingEvent).values(
            provider="stripe", event_id="evt_r1", type="charge.refunded", payload={})))
        claimed.start()
        claimed.join()
        transaction.rollback()
        other.close()
        refunding.join()
    assert refunded == [(200, "access_ended")], refunded
    assert billing.subscription(client, headers)["tier"] == "starter"
    assert len(billing.events_of(EMAIL, "refunded")) == 1


def _refund_notice(event_id, charge, given, *, before, refund_id, earlier=()):
    """A ``charge.refunded`` notice as Stripe sends it: the charge as it stood when this
    refund was made (its running total, its refunds newest first) and, in
    ``previous_attributes``, the running total before this refund."""
    event = _refund(event_id, charge, refunded=before + given)
    refunds = [{"id": refund_id, "object": "refund", "amount": given, "charge": charge},
               *earlier]
    event["data"]["object"]["refunds"] = {"object": "list", "data": refunds}
    event["data"]["previous_attributes"] = {"amount_refunded": before}
    return event


def _three_refunds_of_the_month():
    """The month's 9.99 given back in three refunds: 3.00, 2.00, then the remaining 4.99."""
    first = {"id": "re_1", "object": "refund", "amount": 300}
    second = {"id": "re_2", "object": "refund", "amount": 200}
    return {"r1": _refund_notice("evt_r1", "ch_1", 300, before=0, refund_id="re_1"),
            "r2": _refund_notice("evt_r2", "ch_1", 200, before=300, refund_id="re_2",
                                 earlier=[first]),
            "r3": _refund_notice("evt_r3", "ch_1", 499, before=500, refund_id="re_3",
                                 earlier=[second, first])}


@pytest.mark.parametrize("order", [
    ["r1", "r2", "r3"],
    ["r2", "r1", "r3"],                         # two partial refunds, in reverse order
    ["r3", "r2", "r1"],                         # the full one first
    ["r2", "r2", "r2b", "r3", "r1", "r3b", "r1"],  # retried, and notified again
], ids=["in_order", "two_partials_reversed", "full_first", "retried"])
def test_each_refund_shows_its_own_amount_whatever_order_its_notices_arrive_in(
        stripe_app, auth, billing, order):
    """Two partial refunds of the month (3.00, then 2.00) and the rest (4.99): a notice
    arriving before an earlier refund's showed the running total since the last refund
    known here (5.00 for the 2.00 refund, 9.99 for the 4.99 one) until the earlier notice
    came. Each refund now shows its own amount as soon as its notice arrives (Stripe's
    ``previous_attributes``), in any order, a notice sent again changing nothing; the month
    ends when, and only when, the refund that gives the last of it back is notified."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    notices = _three_refunds_of_the_month()
    own = {"r1": "3.00", "r2": "2.00", "r3": "4.99"}
    seen: list[str] = []
    for name in order:
        event = notices[name.rstrip("b")]
        if name.endswith("b"):
            event = {**event, "id": event["id"] + "b"}  # another notice of the same refund
        resp = billing.post_webhook(client, event)
        assert resp.status_code == 200, resp.get_json()
        if name not in seen and name.rstrip("b") in seen:
            assert resp.get_json()["data"]["outcome"] == "already_recorded"
        seen.append(name)
        shown = sorted({own[n.rstrip("b")] for n in seen})
        assert _refund_amounts(client, headers) == shown, (order, seen)
        tier = billing.subscription(client, headers)["tier"]
        assert tier == ("starter" if "r3" in seen else "premium"), (order, seen)
    assert sum(e["amount_cents"] for e in billing.events_of(EMAIL, "refunded")) == 999
    ended = [e for e in billing.events_of(EMAIL) if e["details"].get("ended_access")]
    assert len(ended) == 1



def test_a_refund_held_for_its_payment_shows_its_own_amount(stripe_app, auth, billing):
    """The first month's second refund (2.00, after a first of 3.00 whose notice is late) is
    notified before the payment's own notice: held, then taken into the history when the
    payment comes. It showed 5.00, both refunds, until the first refund's notice came; it
    shows 2.00, then the first one 3.00, and the payment still grants the month (not all of
    it was given back)."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    now = clock.now()
    notices = _three_refunds_of_the_month()
    assert _outcome(billing, client, notices["r2"]) == "held_for_its_payment"
    paid = _invoice(billing, "evt_paid", charge="ch_1", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "activated"
    assert _refund_amounts(client, headers) == ["2.00"]
    [held] = billing.events_of(EMAIL, "refunded")
    assert held["details"]["refund_id"] == "re_2"
    assert _outcome(billing, client, notices["r1"]) == "recorded"
    assert _refund_amounts(client, headers) == ["2.00", "3.00"]
    assert billing.subscription(client, headers)["tier"] == "premium"


def test_a_refund_without_previous_attributes_shows_the_refund_listed_on_the_charge(
        stripe_app, auth, billing):
    """A notice without ``previous_attributes`` (older API versions, a notice sent again by
    hand) but listing the charge's refunds: the newest listed is this one, and its amount is
    shown. A ``previous_attributes.amount_refunded`` that is not an amount in cents refuses
    the notice as a whole (400 naming it), nothing recorded."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _paid(client, headers, billing)
    notices = _three_refunds_of_the_month()
    broken = {**notices["r1"], "id": "evt_broken",
              "data": {**notices["r1"]["data"],
                       "previous_attributes": {"amount_refunded": "3.00"}}}
    resp = billing.post_webhook(client, broken)
    assert resp.status_code == 400, resp.get_json()
    assert "previous_attributes.amount_refunded" in resp.get_json()["message"]
    assert _refund_amounts(client, headers) == []

    listed_only = {**notices["r2"], "data": {"object": notices["r2"]["data"]["object"]}}
    assert _outcome(billing, client, listed_only) == "recorded"
    assert _refund_amounts(client, headers) == ["2.00"]
    assert _outcome(billing, client, notices["r1"]) == "recorded"
    assert _refund_amounts(client, headers) == ["2.00", "3.00"]
    assert billing.subscription(client, headers)["tier"] == "premium"
