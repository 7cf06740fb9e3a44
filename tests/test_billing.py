"""Billing webhooks (Stripe scheme, idempotent, out of order) and the Stripe provider."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta

import pytest

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)


def start_checkout(client, headers, tier="premium"):
    return client.post("/api/user/subscription", json={"tier": tier},
                       headers=headers).get_json()["data"]["checkout"]["reference"]


def test_our_signature_is_the_stripe_scheme(billing):
    assert billing.stripe_header_matches_library(b'{"id": "evt_1"}')


def test_checkout_completed_webhook_activates_the_tier(client, auth, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    uid = billing.user_id(EMAIL)
    resp = billing.post_webhook(client, billing.checkout_completed(
        "evt_1", user_id=uid, tier="premium", reference=reference))
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"] == {"event_id": "evt_1",
                                       "type": "checkout.session.completed",
                                       "duplicate": False, "outcome": "activated"}
    data = billing.subscription(client, headers)
    assert data["tier"] == "premium" and data["status"] == "active" and data["checkout"] is None
    assert data["payment_method_on_file"] is True


def test_replayed_webhook_changes_nothing(client, auth, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    event = billing.checkout_completed("evt_1", user_id=billing.user_id(EMAIL), tier="premium",
                                       reference=reference)
    assert billing.post_webhook(client, event).status_code == 200
    before = billing.subscription(client, headers)
    for _ in range(2):
        resp = billing.post_webhook(client, event)
        assert resp.status_code == 200
        assert resp.get_json()["data"]["duplicate"] is True
    assert billing.subscription(client, headers) == before
    assert len(billing.events_of(EMAIL, "activated")) == 1
    assert billing.count_billing_events() == 1


@pytest.mark.parametrize("case", ["wrong_secret", "tampered", "stale", "future", "missing",
                                  "garbage", "no_v1"])
def test_bad_signatures_are_400_and_change_nothing(client, auth, case, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    event = billing.checkout_completed("evt_forged", user_id=billing.user_id(EMAIL), tier="pro",
                                       reference=reference)
    body = json.dumps(event).encode()
    kwargs = {
        "wrong_secret": {"secret": "whsec_attacker"},
        "tampered": {"header": billing.sign(body.replace(b'"pro"', b'"premium"'))},
        "stale": {"timestamp": int(time.time()) - 301},
        "future": {"timestamp": int(time.time()) + 301},
        "missing": {"header": ""},
        "garbage": {"header": "nonsense"},
        "no_v1": {"header": f"t={int(time.time())},v0=abc"},
    }[case]
    resp = billing.post_webhook(client, event, **kwargs)
    assert resp.status_code == 400
    assert resp.get_json()["code"] == "invalid_signature"
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "incomplete"
    assert billing.count_billing_events() == 0
    # the genuine event still works afterwards (the forged one did not burn its id)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"


def test_timestamp_within_tolerance_is_accepted(client, auth, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    event = billing.checkout_completed("evt_1", user_id=billing.user_id(EMAIL), tier="premium",
                                       reference=reference)
    resp = billing.post_webhook(client, event, timestamp=int(time.time()) - 240)
    assert resp.status_code == 200


def test_signed_non_event_is_400(client, billing):
    body = b'["not an event"]'
    resp = billing.post_webhook(client, {}, body=body)
    assert resp.status_code == 400


def test_unhandled_event_type_is_acknowledged(client, billing):
    event = {"id": "evt_x", "type": "customer.created", "created": int(time.time()),
             "data": {"object": {"id": "cus_9"}}}
    resp = billing.post_webhook(client, event)
    assert resp.status_code == 200 and resp.get_json()["data"]["outcome"] == "ignored"
    assert billing.count_billing_events() == 1


def test_event_for_an_unknown_customer_is_acknowledged(client, billing):
    event = billing.invoice_event("evt_u", "invoice.paid", user_id=None, tier="premium",
                                  period_start=clock.now(), period_end=clock.now() + 30 * DAY,
                                  customer="cus_zz", subscription="sub_zz")
    resp = billing.post_webhook(client, event)
    assert resp.status_code == 200 and resp.get_json()["data"]["outcome"] == "unknown_customer"


def _active_via_webhooks(client, headers, billing):
    """Premium, paid through Stripe-format webhooks; returns (user id, period start, end)."""
    reference = start_checkout(client, headers)
    uid = billing.user_id(EMAIL)
    start = clock.now() - 2 * DAY
    end = start + 30 * DAY
    billing.post_webhook(client, billing.checkout_completed("evt_c", user_id=uid, tier="premium",
                                                            reference=reference, created=start))
    resp = billing.post_webhook(client, billing.invoice_event("evt_i1", "invoice.paid", user_id=uid,
                                                              tier="premium", period_start=start,
                                                              period_end=end, created=start))
    assert resp.get_json()["data"]["outcome"] == "already_recorded"
    return uid, start, end


def test_first_invoice_after_checkout_is_the_same_period_not_a_renewal(client, auth, billing):
    headers = auth()
    _, start, end = _active_via_webhooks(client, headers, billing)
    data = billing.subscription(client, headers)
    assert datetime.fromisoformat(data["current_period_end"]) == end.replace(microsecond=0)
    assert [e["type"] for e in billing.events_of(EMAIL) if e["type"] in
            ("activated", "renewed")] == ["activated"]


def test_renewal_moves_the_period_on(client, auth, billing):
    headers = auth()
    uid, _, end = _active_via_webhooks(client, headers, billing)
    new_end = end + 30 * DAY
    resp = billing.post_webhook(client, billing.invoice_event("evt_r", "invoice.paid", user_id=uid,
                                                              tier="premium", period_start=end,
                                                              period_end=new_end))
    assert resp.get_json()["data"]["outcome"] == "renewed"
    data = billing.subscription(client, headers)
    assert datetime.fromisoformat(data["current_period_end"]) == new_end.replace(microsecond=0)
    renewed = billing.events_of(EMAIL, "renewed")
    assert len(renewed) == 1 and renewed[0]["amount_cents"] == 999
    # Stripe sends invoice.payment_succeeded for the same invoice too: not a second renewal
    billing.post_webhook(client, billing.invoice_event(
        "evt_r2", "invoice.payment_succeeded", user_id=uid, tier="premium", period_start=end,
        period_end=new_end))
    assert len(billing.events_of(EMAIL, "renewed")) == 1


def test_payment_failure_makes_it_past_due_with_grace_and_success_recovers(client, auth, billing):
    headers = auth()
    uid, _, end = _active_via_webhooks(client, headers, billing)
    resp = billing.post_webhook(client, billing.invoice_event(
        "evt_f", "invoice.payment_failed", user_id=uid, tier="premium", period_start=end,
        period_end=end + 30 * DAY))
    assert resp.get_json()["data"]["outcome"] == "past_due"
    data = billing.subscription(client, headers)
    assert data["status"] == "past_due" and data["tier"] == "premium"  # grace keeps the tier
    grace = datetime.fromisoformat(data["grace_ends_at"]) - clock.now()
    assert timedelta(days=2, hours=23) < grace <= timedelta(days=3)
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "payment_failed" and history[0]["amount"] == "9.99"
    resp = billing.post_webhook(client, billing.invoice_event("evt_ok", "invoice.paid", user_id=uid,
                                                              tier="premium", period_start=end,
                                                              period_end=end + 30 * DAY))
    assert resp.get_json()["data"]["outcome"] == "renewed"
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["past_due_since"] is None


def test_late_failure_after_a_success_does_not_demote(client, auth, billing):
    headers = auth()
    uid, _, end = _active_via_webhooks(client, headers, billing)
    new_end = end + 30 * DAY
    # the retry succeeded and arrived first ...
    billing.post_webhook(client, billing.invoice_event(
        "evt_ok", "invoice.paid", user_id=uid, tier="premium", period_start=end, period_end=new_end,
        created=clock.now()))
    # ... then the earlier failed attempt for that same period arrives
    resp = billing.post_webhook(client, billing.invoice_event(
        "evt_fail", "invoice.payment_failed", user_id=uid, tier="premium", period_start=end,
        period_end=new_end, created=clock.now() - timedelta(hours=5)))
    assert resp.status_code == 200 and resp.get_json()["data"]["outcome"] == "stale"
    # and a failure for an even older period
    resp = billing.post_webhook(client, billing.invoice_event(
        "evt_old", "invoice.payment_failed", user_id=uid, tier="premium",
        period_start=end - 30 * DAY, period_end=end))
    assert resp.get_json()["data"]["outcome"] == "stale"
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["tier"] == "premium"
    assert billing.events_of(EMAIL, "payment_failed") == []


def test_late_success_for_an_old_period_changes_nothing(client, auth, billing):
    headers = auth()
    uid, start, end = _active_via_webhooks(client, headers, billing)
    billing.post_webhook(client, billing.invoice_event(
        "evt_r", "invoice.paid", user_id=uid, tier="premium", period_start=end,
        period_end=end + 30 * DAY))
    before = billing.subscription(client, headers)
    billing.post_webhook(client, billing.invoice_event(
        "evt_old", "invoice.paid", user_id=uid, tier="premium", period_start=start, period_end=end))
    assert billing.subscription(client, headers) == before
    assert len(billing.events_of(EMAIL, "renewed")) == 1


def test_subscription_deleted_drops_to_starter_at_once(client, auth, billing):
    headers = auth()
    _active_via_webhooks(client, headers, billing)
    resp = billing.post_webhook(client, billing.subscription_deleted("evt_d"))
    assert resp.get_json()["data"]["outcome"] == "canceled"
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "active"
    assert data["current_period_end"] is None
    event = billing.events_of(EMAIL, "canceled")[0]
    assert (event["from_tier"], event["to_tier"]) == ("premium", "starter")


def test_deleted_event_of_an_older_subscription_is_ignored(client, auth, billing):
    headers = auth()
    _active_via_webhooks(client, headers, billing)
    resp = billing.post_webhook(client, billing.subscription_deleted(
        "evt_d", subscription="sub_old"))
    assert resp.get_json()["data"]["outcome"] in ("stale", "unknown_customer")
    assert billing.subscription(client, headers)["tier"] == "premium"
    # a deletion created before the latest payment is stale too
    resp = billing.post_webhook(client, billing.subscription_deleted(
        "evt_d2", created=clock.now() - 10 * DAY))
    assert resp.get_json()["data"]["outcome"] == "stale"
    assert billing.subscription(client, headers)["tier"] == "premium"


def test_sandbox_confirm_and_webhook_share_one_path(client, auth, billing):
    """A sandbox purchase, then a Stripe-format renewal webhook: the same state machine."""
    headers = auth()
    data = billing.buy(client, headers, "premium")
    end = datetime.fromisoformat(data["current_period_end"])
    resp = billing.post_webhook(client, billing.invoice_event(
        "evt_r", "invoice.paid", user_id=billing.user_id(EMAIL), tier="premium", period_start=end,
        period_end=end + 30 * DAY))
    assert resp.get_json()["data"]["outcome"] == "renewed"


def test_concurrent_deliveries_of_one_event_apply_once(app, auth, client, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    event = billing.checkout_completed("evt_same", user_id=billing.user_id(EMAIL), tier="premium",
                                       reference=reference)
    results, barrier = [], threading.Barrier(6)

    def deliver():
        with app.app_context():
            c = app.test_client()
            barrier.wait()
            resp = billing.post_webhook(c, event)
            results.append((resp.status_code, resp.get_json()["data"]["duplicate"]))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [(200, False)] + [(200, True)] * 5
    assert len(billing.events_of(EMAIL, "activated")) == 1
    assert billing.count_billing_events() == 1


# ---- the Stripe provider against a local stand-in for api.stripe.com (``stripe_app``) -----

def test_stripe_checkout_session_is_created_with_our_reference(stripe_app, auth, billing):
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    checkout = resp.get_json()["data"]["checkout"]
    assert checkout["provider"] == "stripe"
    assert checkout["url"] == "https://checkout.stripe.test/c/cs_test_1"
    method, path, form, authorization = fake.requests[-1]
    assert (method, path) == ("POST", "/v1/checkout/sessions")
    assert authorization == "Bearer sk_test_123"
    assert form["mode"] == ["subscription"]
    assert form["line_items[0][price]"] == ["price_pro"]
    assert form["client_reference_id"] == [checkout["reference"]]
    assert form["metadata[sonicus_tier]"] == ["pro"]
    assert form["customer_email"] == [EMAIL]

    # Stripe's invoice (tier known from the price only) activates it
    uid = billing.user_id(EMAIL)
    event = billing.invoice_event("evt_s1", "invoice.paid", user_id=uid, tier=None,
                                  period_start=clock.now(), period_end=clock.now() + 30 * DAY,
                                  amount=1999, price="price_pro", subscription="sub_s1",
                                  customer="cus_s1")
    resp = billing.post_webhook(client, event)
    assert resp.get_json()["data"]["outcome"] == "activated"
    data = billing.subscription(client, headers)
    assert data["tier"] == "pro" and data["status"] == "active"

    # cancel and downgrade are passed on to the Stripe subscription
    client.delete("/api/user/subscription", json={}, headers=headers)
    method, path, form, _ = fake.requests[-1]
    assert path == "/v1/subscriptions/sub_s1" and form["cancel_at_period_end"] == ["true"]
    client.post("/api/user/subscription/resume", headers=headers)
    assert fake.requests[-1][2]["cancel_at_period_end"] == ["false"]
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    method, path, form, _ = fake.requests[-1]
    assert form["items[0][price]"] == ["price_prem"] and form["proration_behavior"] == ["none"]
    assert form["metadata[sonicus_tier]"] == ["premium"]


def test_stripe_unreachable_is_502_and_changes_nothing(auth, make_config, billing):
    from sonicus import create_app

    app = create_app(make_config(BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_test_1",
                                 STRIPE_PRICE_IDS=["premium=price_prem", "pro=price_pro"],
                                 STRIPE_API_BASE="http://127.0.0.1:9"))
    client = app.test_client()
    headers = auth()
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 502 and resp.get_json()["code"] == "billing_unavailable"
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["checkout"] is None


def test_production_with_stripe_needs_an_api_key():
    from config import ConfigError, load_config, validate_config

    config = load_config({"SONICUS_ENV": "production", "OIDC_ISSUER": "https://id/",
                          "OIDC_AUDIENCE": "a", "SECRET_KEY": "s",
                          "DATABASE_URL": "postgresql://db/x", "BILLING_PROVIDER": "stripe",
                          "BILLING_WEBHOOK_SECRET": "whsec_1",
                          "PUBLIC_BASE_URL": "https://api.example.com",
                          "VAPID_PRIVATE_KEY": "4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4",
                          "VAPID_SUBJECT": "mailto:ops@example.com"})
    with pytest.raises(ConfigError, match="STRIPE_API_KEY"):
        validate_config(config)
    config["STRIPE_API_KEY"] = "sk_live_1"
    with pytest.raises(ConfigError, match="STRIPE_PRICE_IDS"):
        validate_config(config)
    config["STRIPE_PRICE_IDS"] = ["premium=price_a", "pro=price_b"]
    validate_config(config)


def _trial_with_card_on_file(client, headers):
    """A premium trial whose checkout (the card) is confirmed."""
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    ref = client.post("/api/user/subscription", json={"tier": "premium"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    client.post(f"/api/billing/sandbox/{ref}/confirm")


def test_subscription_deleted_during_a_trial_ends_it_at_trial_end(client, auth, billing):
    headers = auth()
    _trial_with_card_on_file(client, headers)
    event = billing.subscription_deleted("evt_d", subscription="sub_t")
    event["data"]["object"]["metadata"] = {"sonicus_user_id": str(billing.user_id(EMAIL))}
    resp = billing.post_webhook(client, event)
    assert resp.get_json()["data"]["outcome"] == "trial_cancel_scheduled"
    data = billing.subscription(client, headers)
    assert data["status"] == "trialing" and data["cancel_at_period_end"] is True
    assert data["payment_method_on_file"] is False


def test_stripe_checkout_during_a_trial_charges_at_its_end(stripe_app, auth):
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    data = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=headers).get_json()["data"]
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    form = fake.requests[-1][2]
    trial_end = int(datetime.fromisoformat(data["trial_ends_at"]).timestamp())
    assert form["subscription_data[trial_end]"] == [str(trial_end)]
    assert form["line_items[0][price]"] == ["price_prem"]


def test_proration_invoice_after_an_upgrade_is_not_a_new_period(client, auth, billing):
    headers = auth()
    uid, start, end = _active_via_webhooks(client, headers, billing)
    client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    before = billing.subscription(client, headers)
    assert before["tier"] == "pro"
    resp = billing.post_webhook(client, billing.invoice_event(
        "evt_pr", "invoice.paid", user_id=uid, tier="pro", period_start=clock.now(), period_end=end,
        amount=667))
    assert resp.get_json()["data"]["outcome"] == "already_recorded"
    assert billing.subscription(client, headers) == before


def _stripe_premium(client, headers, billing):
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    event = billing.invoice_event("evt_p1", "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, period_start=clock.now() - 10 * DAY,
                                  period_end=clock.now() + 20 * DAY, price="price_prem",
                                  subscription="sub_s1", customer="cus_s1")
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"


def test_stripe_upgrade_is_charged_now_with_proration(stripe_app, auth, billing):
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_premium(client, headers, billing)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "pro"
    method, path, form, _ = fake.requests[-1]
    assert path == "/v1/subscriptions/sub_s1"
    assert form["items[0][price]"] == ["price_pro"] and form["items[0][id]"] == ["si_1"]
    assert form["proration_behavior"] == ["always_invoice"]
    assert form["payment_behavior"] == ["error_if_incomplete"]


def test_stripe_upgrade_declined_is_402_and_changes_nothing(stripe_app, auth, billing):
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_premium(client, headers, billing)
    before = billing.subscription(client, headers)
    fake.decline_charges = True
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 402 and resp.get_json()["code"] == "payment_required"
    assert billing.subscription(client, headers) == before
    assert billing.events_of(EMAIL, "upgraded") == []


def test_failed_first_payment_keeps_it_incomplete(client, auth, billing):
    headers = auth()
    reference = start_checkout(client, headers)
    event = billing.invoice_event("evt_f", "invoice.payment_failed", user_id=billing.user_id(EMAIL),
                                  tier="premium", period_start=clock.now(),
                                  period_end=clock.now() + 30 * DAY)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "recorded"
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "incomplete"
    assert data["checkout"]["reference"] == reference  # they can try again
    assert billing.events_of(EMAIL, "payment_failed")[0]["amount_cents"] == 999


def test_failed_card_during_a_trial_means_no_conversion(client, auth, billing):
    headers = auth()
    _trial_with_card_on_file(client, headers)
    assert billing.subscription(client, headers)["payment_method_on_file"] is True
    event = billing.invoice_event("evt_f", "invoice.payment_failed", user_id=billing.user_id(EMAIL),
                                  tier="premium", period_start=clock.now(),
                                  period_end=clock.now() + 30 * DAY)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == \
        "payment_method_removed"
    data = billing.subscription(client, headers)
    assert data["status"] == "trialing" and data["payment_method_on_file"] is False


def _stripe_trial_with_card(client, headers, billing) -> None:
    """A Stripe premium trial with a card on file (``sub_s1``)."""
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    card = billing.checkout_completed("evt_card", user_id=billing.user_id(EMAIL),
                                      tier="premium", amount=0, customer="cus_s1",
                                      subscription="sub_s1")
    assert billing.post_webhook(client, card).get_json()["data"]["outcome"] == \
        "payment_method_added"


def _stripe_trial_with_card_converted(app, client, headers, billing) -> datetime:
    """A Stripe premium trial with a card on file, converted by the expiry job at its end;
    the trial's end."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    _stripe_trial_with_card(client, headers, billing)
    ended = (clock.now() - timedelta(minutes=5)).replace(microsecond=0)
    billing.arrange(EMAIL, trial_ends_at=ended)
    with app.app_context():
        assert process_due_subscriptions()["outcomes"] == {"trial_converted": 1}
        db.session.remove()
    return ended


def test_a_declined_first_charge_before_the_expiry_job_keeps_the_grace(stripe_app, auth,
                                                                       billing):
    """The trial ended a moment ago and the expiry job (every minute) has not run yet when
    Stripe's declined first charge arrives: the webhook acts on the subscription in force
    (converted at the trial's end), so the user gets the failed renewal's 3-day grace to fix
    the card, as after the job, not a card marked removed and starter at the next job."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_trial_with_card(client, headers, billing)
    ended = (clock.now() - timedelta(seconds=20)).replace(microsecond=0)
    billing.arrange(EMAIL, trial_ends_at=ended)
    failed = _first_invoice(billing, "evt_first_fail", "invoice.payment_failed", ended)
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    with app.app_context():
        process_due_subscriptions()
        db.session.remove()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "past_due")
    assert data["grace_ends_at"] is not None and data["payment_method_on_file"] is True
    types = [e["type"] for e in billing.events_of(EMAIL)]
    assert types[-2:] == ["trial_converted", "payment_failed"]


def _first_invoice(billing, event_id: str, kind: str, trial_ended):
    """The provider's first invoice after the trial: its month, at Premium's price."""
    return billing.invoice_event(event_id, kind, user_id=billing.user_id(EMAIL), tier=None,
                                 price="price_prem", period_start=trial_ended,
                                 period_end=trial_ended + 30 * DAY, subscription="sub_s1",
                                 customer="cus_s1")


def test_a_declined_first_charge_after_a_trial_makes_it_past_due(stripe_app, auth, billing):
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    ended = _stripe_trial_with_card_converted(app, client, headers, billing)
    failed = _first_invoice(billing, "evt_first_fail", "invoice.payment_failed", ended)
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    data = billing.subscription(client, headers)
    assert data["status"] == "past_due" and data["grace_ends_at"] is not None
    # nothing was charged: the history claims no money for the converted trial
    assert sum(e["amount_cents"] or 0 for e in billing.events_of(EMAIL)
               if e["type"] in ("trial_converted", "renewed", "activated")) == 0


def test_the_first_charge_after_a_trial_is_recorded_once_with_its_month(stripe_app, auth,
                                                                        billing):
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    ended = _stripe_trial_with_card_converted(app, client, headers, billing)
    paid = _first_invoice(billing, "evt_first_paid", "invoice.paid", ended)
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "renewed"
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["tier"] == "premium"
    assert datetime.fromisoformat(data["current_period_end"]) == ended + 30 * DAY
    assert sum(e["amount_cents"] or 0 for e in billing.events_of(EMAIL)
               if e["type"] in ("trial_converted", "renewed", "activated")) == 999


def test_a_late_invoice_of_an_older_subscription_does_not_redirect_the_cancel(stripe_app, auth,
                                                                              billing):
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    current = billing.invoice_event("evt_new", "invoice.paid", user_id=billing.user_id(EMAIL),
                                    tier=None, period_start=clock.now() - 10 * DAY,
                                    period_end=clock.now() + 20 * DAY, price="price_prem",
                                    subscription="sub_new", customer="cus_s1")
    assert billing.post_webhook(client, current).get_json()["data"]["outcome"] == "activated"
    late = billing.invoice_event("evt_late", "invoice.paid", user_id=billing.user_id(EMAIL),
                                 tier=None, period_start=clock.now() - 40 * DAY,
                                 period_end=clock.now() - 10 * DAY, price="price_prem",
                                 subscription="sub_old", customer="cus_s1",
                                 created=clock.now() - 40 * DAY)
    assert billing.post_webhook(client, late).get_json()["data"]["outcome"] == \
        "already_recorded"

    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    # the running subscription stops renewing; the older one is left alone
    assert fake.received("POST", "/v1/subscriptions/sub_new")[-1]["cancel_at_period_end"] == \
        ["true"]
    assert fake.received("POST", "/v1/subscriptions/sub_old") == []


def test_an_upgrade_after_a_cancel_keeps_renewing_at_the_provider(stripe_app, auth, billing):
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200
    assert resp.get_json()["data"]["cancel_at_period_end"] is False
    # what the user sees is what the provider does: it renews, it does not end the upgrade
    flags = [form["cancel_at_period_end"] for form in
             fake.received("POST", "/v1/subscriptions/sub_s1") if "cancel_at_period_end" in form]
    assert flags[-1] == ["false"]


def test_resuming_after_a_downgrade_and_a_cancel_renews_the_tier_kept(stripe_app, auth,
                                                                       billing):
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    paid = billing.invoice_event("evt_pro", "invoice.paid", user_id=billing.user_id(EMAIL),
                                 tier=None, period_start=clock.now() - 10 * DAY,
                                 period_end=clock.now() + 20 * DAY, price="price_pro",
                                 subscription="sub_s1", customer="cus_s1")
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    client.delete("/api/user/subscription", json={}, headers=headers)
    data = client.post("/api/user/subscription/resume", headers=headers).get_json()["data"]
    assert data["tier"] == "pro" and data["pending_tier"] is None
    # the provider renews what the user sees: Pro at Pro's price, not the undone downgrade's
    prices = [form["items[0][price]"] for form in
              fake.received("POST", "/v1/subscriptions/sub_s1") if "items[0][price]" in form]
    assert prices[-1] == ["price_pro"]


def test_a_tier_chosen_during_a_trial_with_a_card_is_the_one_the_provider_charges(
        stripe_app, auth, billing):
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    card = billing.checkout_completed("evt_card", user_id=billing.user_id(EMAIL),
                                      tier="premium", amount=0, customer="cus_s1",
                                      subscription="sub_s1")
    assert billing.post_webhook(client, card).get_json()["data"]["outcome"] == \
        "payment_method_added"
    data = client.post("/api/user/subscription", json={"tier": "pro"},
                       headers=headers).get_json()["data"]
    assert data["tier"] == "pro" and data["status"] == "trialing"
    # the trial converts to Pro: the provider charges Pro's price at its end, nothing now
    form = fake.received("POST", "/v1/subscriptions/sub_s1")[-1]
    assert form["items[0][price]"] == ["price_pro"] and form["proration_behavior"] == ["none"]


def test_a_failed_charge_of_an_older_subscription_leaves_the_paid_one_active(stripe_app, auth,
                                                                             billing):
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)  # sub_s1, paid until 20 days from now
    failed = billing.invoice_event("evt_old_fail", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   price="price_prem", period_start=clock.now() + 1 * DAY,
                                   period_end=clock.now() + 31 * DAY, subscription="sub_old",
                                   customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "stale"
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["past_due_since"] is None
    assert billing.events_of(EMAIL, "payment_failed") == []


# ---- an administrator's grant to a user who pays through the provider -----------------------

def _grant(client, admin_auth, uid, tier):
    return client.patch(f"/api/admin/users/{uid}", json={"tier": tier},
                        headers=admin_auth("boss@example.com"))


def test_a_grant_above_a_paid_stripe_period_stops_its_renewal(stripe_app, auth, admin_auth,
                                                             billing):
    """Premium paid through Stripe, then Pro granted: Pro now, free; the paid month runs out
    and Stripe renews nothing (no charge for a tier the user has for free)."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    resp = _grant(client, admin_auth, billing.user_id(EMAIL), "pro")
    assert resp.status_code == 200, resp.get_json()
    assert fake.received("POST", "/v1/subscriptions/sub_s1")[-1]["cancel_at_period_end"] == \
        ["true"]
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"]) == ("pro", "active", True)
    # the paid period's end at Stripe leaves the grant as it is
    ended = billing.subscription_deleted("evt_end", subscription="sub_s1", customer="cus_s1",
                                         created=clock.now() + 21 * DAY)
    assert billing.post_webhook(client, ended).get_json()["data"]["outcome"] == "nothing_to_end"
    assert billing.subscription(client, headers)["tier"] == "pro"


def test_a_grant_to_a_past_due_stripe_payer_cancels_the_failing_subscription(
        stripe_app, auth, admin_auth, billing):
    """A failed renewal is being retried by Stripe; the grant gives the tier free, so the
    retries must not charge for it: the Stripe subscription is canceled at once."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    uid = billing.user_id(EMAIL)
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed", user_id=uid, tier=None,
                                   price="price_prem", period_start=clock.now() + 20 * DAY,
                                   period_end=clock.now() + 50 * DAY, subscription="sub_s1",
                                   customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    assert _grant(client, admin_auth, uid, "premium").status_code == 200
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"]) == ("premium", "active", True)


def test_a_grant_below_a_paid_stripe_period_is_409_and_changes_nothing(stripe_app, auth,
                                                                      admin_auth, billing):
    """Taking away part of a period the user paid for is not a grant: 409, nothing changed,
    nothing sent to Stripe (the user's own cancel or downgrade ends it at the period's end)."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    before, sent = billing.subscription(client, headers), len(fake.requests)
    for tier in ("starter",):
        resp = _grant(client, admin_auth, billing.user_id(EMAIL), tier)
        assert resp.status_code == 409 and resp.get_json()["code"] == "conflict", resp.get_json()
        assert resp.get_json()["errors"]
    assert billing.subscription(client, headers) == before
    assert len(fake.requests) == sent
    assert billing.events_of(EMAIL, "complimentary_grant") == []


def test_revoking_a_grant_over_a_paid_stripe_period_is_409_and_keeps_the_paid_month(
        stripe_app, auth, admin_auth, billing):
    """Premium paid through Stripe until 20 days from now, Pro granted over it, then the
    grant revoked (starter granted): the month the user paid for is not taken away (409,
    nothing changed, Stripe's subscription not canceled); once it is over, the revoke goes
    through."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "pro").status_code == 200
    before = billing.subscription(client, headers)
    resp = _grant(client, admin_auth, uid, "starter")
    assert resp.status_code == 409 and resp.get_json()["code"] == "conflict", resp.get_json()
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == []
    assert billing.subscription(client, headers) == before
    assert billing.events_of(EMAIL, "canceled") == []

    billing.arrange(EMAIL, current_period_end=clock.now() - DAY)  # the paid month is over
    assert _grant(client, admin_auth, uid, "starter").status_code == 200
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_revoking_a_grant_made_while_past_due_goes_through_at_once(stripe_app, auth,
                                                                   admin_auth, billing):
    """A renewal failed (past due) and Premium was granted: Stripe's subscription was
    canceled then, so no paid period runs under the grant and a revoke (starter granted) is
    not held back until the old period's end."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    uid = billing.user_id(EMAIL)
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed", user_id=uid, tier=None,
                                   price="price_prem", period_start=clock.now() + 20 * DAY,
                                   period_end=clock.now() + 50 * DAY, subscription="sub_s1",
                                   customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    assert _grant(client, admin_auth, uid, "premium").status_code == 200
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    resp = _grant(client, admin_auth, uid, "starter")
    assert resp.status_code == 200, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"]) == ("starter", "active", False)
    # Stripe is never asked to renew anything
    assert fake.received("POST", "/v1/subscriptions/sub_s1") == []


def test_a_users_cancel_under_a_grant_keeps_the_granted_tier_until_the_paid_period_ends(
        stripe_app, auth, admin_auth, billing, set_clock):
    """Premium paid through Stripe until 20 days from now, Pro granted over it, then the user
    cancels: like any cancel it takes effect at the end of the period paid for (the granted
    Pro is kept until then, so no paid day is lost), Stripe renews nothing, and at the
    period's end the user is on starter."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    period_end = datetime.fromisoformat(billing.subscription(client, headers)["current_period_end"])
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    resp = client.delete("/api/user/subscription", json={"reason": "not_using"},
                         headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert (data["tier"], data["status"], data["cancel_at_period_end"]) == ("pro", "active", True)
    assert datetime.fromisoformat(data["current_period_end"]) == period_end
    assert billing.events_of(EMAIL, "canceled") == []
    [scheduled] = billing.events_of(EMAIL, "cancel_scheduled")
    assert datetime.fromisoformat(scheduled["details"]["effective_at"]) == period_end
    # Stripe renews nothing and ends nothing early
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == []
    assert [f["cancel_at_period_end"] for f in fake.received("POST", "/v1/subscriptions/sub_s1")
            if "cancel_at_period_end" in f][-1] == ["true"]
    assert billing.subscription(client, headers)["tier"] == "pro"

    # the period's end, before the expiry job: what the user is shown is already starter
    set_clock(period_end + timedelta(seconds=30))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"]) == ("starter", "active", False)
    with app.app_context():
        process_due_subscriptions()
        db.session.remove()
    [canceled] = billing.events_of(EMAIL, "canceled")
    assert (canceled["from_tier"], canceled["to_tier"]) == ("pro", "starter")
    assert canceled["at"] == period_end
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_resuming_a_cancel_under_a_grant_keeps_the_grant_and_stripe_still_renews_nothing(
        stripe_app, auth, admin_auth, billing):
    """The user cancels under a grant over a paid period, then resumes: the grant goes on
    (free, with no end), and Stripe is not asked to renew the paid tier."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    resp = client.post("/api/user/subscription/resume", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert (data["tier"], data["complimentary"], data["cancel_at_period_end"]) == \
        ("pro", True, False)
    flags = [f["cancel_at_period_end"] for f in fake.received("POST", "/v1/subscriptions/sub_s1")
             if "cancel_at_period_end" in f]
    assert ["false"] not in flags
    # the paid period's end at Stripe leaves the grant as it is
    ended = billing.subscription_deleted("evt_end", subscription="sub_s1", customer="cus_s1",
                                         created=clock.now() + 21 * DAY)
    billing.post_webhook(client, ended)
    assert billing.subscription(client, headers)["tier"] == "pro"


@pytest.mark.parametrize("undo", ["user_chooses_it", "admin_grants_it"])
def test_the_granted_tier_chosen_or_granted_again_after_a_cancel_keeps_the_grant(
        stripe_app, auth, admin_auth, billing, undo):
    """The user canceled under a grant over a paid period (the grant would end with that
    period); then the user picks the granted tier on the plans page, or the admin grants it
    again: the grant goes on without an end, no checkout is opened and Stripe is still not
    asked to renew."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "pro").status_code == 200
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    if undo == "user_chooses_it":
        resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    else:
        resp = _grant(client, admin_auth, uid, "pro")
    assert resp.status_code == 200, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"], data["cancel_at_period_end"],
            data["checkout"]) == ("pro", True, False, None)
    assert billing.events_of(EMAIL, "checkout_started")[1:] == []
    flags = [f["cancel_at_period_end"] for f in fake.received("POST", "/v1/subscriptions/sub_s1")
             if "cancel_at_period_end" in f]
    assert ["false"] not in flags


@pytest.mark.parametrize("late", ["checkout", "invoice"])
def test_a_late_notice_of_the_paid_period_under_a_grant_keeps_the_grant(stripe_app, auth,
                                                                        admin_auth, billing,
                                                                        late):
    """Premium paid through Stripe, Pro granted over it; then Stripe's other notice of that
    same first payment arrives (its checkout's completion, or the invoice again under another
    event): nothing new was paid, so the user keeps the free Pro and no second payment shows
    in the history."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "pro").status_code == 200
    if late == "checkout":
        event = billing.checkout_completed("evt_cs", user_id=uid, tier="premium",
                                           customer="cus_s1", subscription="sub_s1")
    else:
        event = billing.invoice_event("evt_p1_again", "invoice.payment_succeeded",
                                      user_id=uid, tier=None,
                                      period_start=clock.now() - 10 * DAY,
                                      period_end=clock.now() + 20 * DAY, price="price_prem",
                                      subscription="sub_s1", customer="cus_s1")
    resp = billing.post_webhook(client, event)
    assert resp.status_code == 200, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("pro", True)
    assert len(billing.events_of(EMAIL, "activated")) == 1


def test_a_grant_of_the_tier_a_stripe_payer_pays_for_stops_its_renewal(stripe_app, auth,
                                                                      admin_auth, billing):
    """Premium paid through Stripe, then Premium granted: it is free from now on, so the paid
    month runs out and Stripe renews nothing (the grant is not a no-op that leaves the user
    paying for what was given)."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    resp = _grant(client, admin_auth, billing.user_id(EMAIL), "premium")
    assert resp.status_code == 200, resp.get_json()
    assert fake.received("POST", "/v1/subscriptions/sub_s1")[-1]["cancel_at_period_end"] == \
        ["true"]
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["complimentary"]) == ("premium", "active", True)
    [grant] = billing.events_of(EMAIL, "complimentary_grant")
    assert grant["amount_cents"] == 0


def test_choosing_the_tier_granted_free_opens_no_checkout(stripe_app, auth, admin_auth,
                                                          billing):
    """Premium granted free; the user then picks Premium on the plans page: they already
    have it, so no checkout is opened that would charge for what is given."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    client.get("/api/user/subscription", headers=headers)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    sent = len(fake.requests)
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert data["checkout"] is None
    assert (data["tier"], data["status"], data["complimentary"]) == ("premium", "active", True)
    assert len(fake.requests) == sent
    assert billing.events_of(EMAIL, "checkout_started") == []


def test_the_trial_invoice_arriving_after_a_grant_keeps_the_grant(stripe_app, auth,
                                                                   admin_auth, billing):
    """A Stripe trial with a card, then Premium granted (Stripe's subscription canceled);
    the trial's $0 invoice arrives late: nothing was paid, so the free Premium stays (it is
    not turned into a paid month that lapses when Stripe renews nothing)."""
    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_trial_with_card(client, headers, billing)
    uid = billing.user_id(EMAIL)
    assert _grant(client, admin_auth, uid, "premium").status_code == 200
    trial_invoice = billing.invoice_event("evt_trial_inv", "invoice.paid", user_id=uid,
                                          tier=None, amount=0, price="price_prem",
                                          period_start=clock.now() - DAY,
                                          period_end=clock.now() + 13 * DAY,
                                          subscription="sub_s1", customer="cus_s1")
    resp = billing.post_webhook(client, trial_invoice)
    assert resp.status_code == 200, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("premium", True)
    assert billing.events_of(EMAIL, "activated") == []


# ---- a cancel while a renewal is past due ----------------------------------------------------

def test_cancel_while_past_due_ends_now_and_its_history_reads_in_order(stripe_app, auth,
                                                                      billing, set_clock):
    """The renewal failed (past due, the grace keeps the tier) and the user cancels: nothing
    paid for is left, so the cancel ends it now: Stripe stops retrying the charge, the user
    is on starter, and the history tells what happened in the order it happened (no event
    dated before the ones that led to it)."""
    from sonicus.services.subscriptions import process_due_subscriptions

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)  # paid until 20 days from now
    start = clock.now()
    period_end = billing.subscription(client, headers)["current_period_end"]
    failed_at = set_clock(start + 20 * DAY + timedelta(hours=1))
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   price="price_prem", period_start=start + 20 * DAY,
                                   period_end=start + 50 * DAY, subscription="sub_s1",
                                   customer="cus_s1", created=failed_at)
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"

    canceled_at = set_clock(failed_at + timedelta(hours=5))
    resp = client.delete("/api/user/subscription", json={"reason": "too_expensive"},
                         headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    with app.app_context():
        process_due_subscriptions(now=canceled_at + timedelta(minutes=1))
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("starter", "active")

    events = billing.events_of(EMAIL)
    stamps = [e["at"] for e in events]
    assert stamps == sorted(stamps), [(e["type"], e["at"]) for e in events]
    last = events[-1]
    assert (last["type"], last["to_tier"], last["at"]) == ("canceled", "starter", canceled_at)
    assert last["details"]["reason"] == "too_expensive"
    for event in events:
        effective = event["details"].get("effective_at")
        assert effective is None or datetime.fromisoformat(effective) >= event["at"], event
    assert period_end  # the period that was paid for ended before the failure


def test_a_grant_during_a_stripe_trial_with_a_card_cancels_the_charge_to_come(
        stripe_app, auth, admin_auth, billing):
    """Stripe would charge the card at the trial's end; the grant gives the tier free, so the
    Stripe subscription is canceled at once and nothing is charged."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_trial_with_card(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "premium").status_code == 200
    assert fake.received("DELETE", "/v1/subscriptions/sub_s1") == [{}]
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["trial_ends_at"]) == ("premium", "active", None)


def test_undoing_the_cancel_in_the_portal_under_a_grant_is_canceled_again(stripe_app, auth,
                                                                          admin_auth, billing):
    """Premium paid through Stripe, then Pro granted (Stripe renews nothing). The user undoes
    the cancel in Stripe's billing portal: Stripe is told again to renew nothing, so the free
    tier is never charged for, and the grant stays."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_premium(client, headers, billing)
    assert _grant(client, admin_auth, billing.user_id(EMAIL), "pro").status_code == 200
    undone = billing.subscription_updated(
        "evt_undo", price="price_prem", subscription="sub_s1", customer="cus_s1",
        cancel_at_period_end=False, previous={"cancel_at_period_end": True},
        created=clock.now() + timedelta(minutes=1))
    assert billing.post_webhook(client, undone).get_json()["data"]["outcome"] == \
        "kept_canceled"
    assert [p["cancel_at_period_end"] for p in
            fake.received("POST", "/v1/subscriptions/sub_s1")][-1:] == [["true"]]
    assert len(fake.received("POST", "/v1/subscriptions/sub_s1")) == 2
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("pro", True)
