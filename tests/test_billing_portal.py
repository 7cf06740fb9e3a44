"""The provider's billing portal: past-due users are sent there instead of buying twice, plan
changes made there are applied (once, in order), and STRIPE_API_BASE from the environment."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)
PUBLIC_BASE_URL = "http://127.0.0.1:18100"


def _stripe_paid(client, headers, billing, tier="premium"):
    """A tier bought through the stripe provider (``sub_s1`` of customer ``cus_s1``)."""
    resp = client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    price = {"premium": "price_prem", "pro": "price_pro"}[tier]
    event = billing.invoice_event("evt_paid", "invoice.paid", user_id=billing.user_id(EMAIL),
                                  tier=None, period_start=clock.now() - 10 * DAY,
                                  period_end=clock.now() + 20 * DAY, price=price,
                                  subscription="sub_s1", customer="cus_s1",
                                  created=clock.now() - 10 * DAY)
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"


def test_past_due_buying_again_is_sent_to_the_billing_portal(stripe_app, auth, billing):
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_paid(client, headers, billing)
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed",
                                   user_id=billing.user_id(EMAIL), tier=None,
                                   period_start=clock.now() + 20 * DAY,
                                   period_end=clock.now() + 50 * DAY, price="price_prem",
                                   subscription="sub_s1", customer="cus_s1")
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    before = billing.subscription(client, headers)
    checkouts = len(stripe.received("POST", "/v1/checkout/sessions"))

    for tier in ("premium", "pro"):  # their own tier again, or any paid tier
        resp = client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
        body = resp.get_json()
        assert resp.status_code == 409, body
        assert body["code"] == "use_billing_portal" and body["success"] is False
        assert body["portal_url"] == "https://billing.stripe.test/p/session_1"
        assert body["errors"]
    portal = stripe.received("POST", "/v1/billing_portal/sessions")
    assert portal[-1] == {"customer": ["cus_s1"], "return_url": [PUBLIC_BASE_URL]}
    # no checkout, no change to the provider subscription, nothing changed here
    assert len(stripe.received("POST", "/v1/checkout/sessions")) == checkouts
    assert stripe.received("POST", "/v1/subscriptions/sub_s1") == []
    assert billing.subscription(client, headers) == before
    assert before["status"] == "past_due" and before["checkout"] is None


def test_billing_portal_url(client, auth, billing, make_config):
    from sonicus import create_app
    from sonicus.extensions import db

    headers = auth()
    resp = client.post("/api/user/subscription/portal", json={}, headers=headers)
    assert resp.status_code == 409 and resp.get_json()["code"] == "conflict"  # no customer yet

    billing.buy(client, headers, "premium")  # the sandbox's checkout makes them a customer
    resp = client.post("/api/user/subscription/portal", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    url = resp.get_json()["data"]["url"]
    assert url.startswith(f"{PUBLIC_BASE_URL}/api/billing/sandbox/portal/")
    page = client.get(url.removeprefix(PUBLIC_BASE_URL))
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert f'href="{PUBLIC_BASE_URL}"' in html  # back to PUBLIC_BASE_URL by default
    assert "<script" not in html and "src=" not in html and "<link" not in html
    assert "style-src 'unsafe-inline'" in page.headers["Content-Security-Policy"]
    assert client.get(url.removeprefix(PUBLIC_BASE_URL)[:-3] + "xyz").status_code == 404

    resp = client.post("/api/user/subscription/portal", headers=headers,
                       json={"return_url": f"{PUBLIC_BASE_URL}/account?tab=billing"})
    html = client.get(resp.get_json()["data"]["url"].removeprefix(PUBLIC_BASE_URL)).get_data(
        as_text=True)
    assert f'href="{PUBLIC_BASE_URL}/account?tab=billing"' in html

    for bad in ("https://evil.example/", f"{PUBLIC_BASE_URL}.evil.example/",
                "javascript:alert(1)", f"{PUBLIC_BASE_URL}/\nx"):
        resp = client.post("/api/user/subscription/portal", json={"return_url": bad},
                           headers=headers)
        assert resp.status_code == 422, bad
        assert resp.get_json()["errors"][0].startswith("return_url:")

    spa = create_app(make_config(CORS_ORIGINS=["https://app.sonicus.example"]))
    resp = spa.test_client().post("/api/user/subscription/portal", headers=headers,
                                  json={"return_url": "https://app.sonicus.example/settings"})
    assert resp.status_code == 200, resp.get_json()
    with spa.app_context():
        db.engine.dispose()


def test_billing_portal_url_from_stripe(stripe_app, auth, billing):
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_paid(client, headers, billing)
    resp = client.post("/api/user/subscription/portal", headers=headers,
                       json={"return_url": f"{PUBLIC_BASE_URL}/account"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["url"] == "https://billing.stripe.test/p/session_1"
    assert stripe.received("POST", "/v1/billing_portal/sessions") == [
        {"customer": ["cus_s1"], "return_url": [f"{PUBLIC_BASE_URL}/account"]}]
    stripe.down = True
    resp = client.post("/api/user/subscription/portal", headers=headers)
    assert resp.status_code == 502 and resp.get_json()["code"] == "billing_unavailable"


def _updated(billing, event_id, price, **kwargs):
    return billing.subscription_updated(event_id, price=price, subscription="sub_s1",
                                        customer="cus_s1", **kwargs)


def test_plan_change_in_the_portal_is_applied(stripe_app, auth, billing):
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_paid(client, headers, billing)

    # premium -> pro in the portal (our metadata still says premium: the price decides)
    resp = billing.post_webhook(client, _updated(billing, "evt_u1", "price_pro",
                                                 metadata={"sonicus_tier": "premium"}))
    assert resp.status_code == 200 and resp.get_json()["data"]["outcome"] == "plan_changed"
    data = billing.subscription(client, headers)
    assert data["tier"] == "pro" and data["status"] == "active"
    [event] = billing.events_of(EMAIL, "plan_changed")
    assert (event["from_tier"], event["to_tier"]) == ("premium", "pro")

    # canceled in the portal, then renewed there (Stripe's subscription says so as each
    # notice comes: they share a second, so its flag is read)
    stripe.cancel_flags["sub_s1"] = True
    resp = billing.post_webhook(client, _updated(
        billing, "evt_u2", "price_pro", cancel_at_period_end=True,
        previous={"cancel_at_period_end": False}))
    assert resp.get_json()["data"]["outcome"] == "cancel_scheduled"
    data = billing.subscription(client, headers)
    assert data["cancel_at_period_end"] is True and data["pending_tier"] == "starter"
    stripe.cancel_flags["sub_s1"] = False
    resp = billing.post_webhook(client, _updated(
        billing, "evt_u3", "price_pro", cancel_at_period_end=False,
        previous={"cancel_at_period_end": True}))
    assert resp.get_json()["data"]["outcome"] == "resumed"
    data = billing.subscription(client, headers)
    assert data["cancel_at_period_end"] is False and data["pending_tier"] is None
    assert [e["type"] for e in billing.events_of(EMAIL)][-3:] == [
        "plan_changed", "cancel_scheduled", "resumed"]

    # the next renewal bills the new price (with the stale metadata): pro goes on
    end = clock.now() + 20 * DAY
    renewal = billing.invoice_event("evt_r", "invoice.paid", user_id=billing.user_id(EMAIL),
                                    tier="premium", period_start=end, period_end=end + 30 * DAY,
                                    price="price_pro", amount=1999, subscription="sub_s1",
                                    customer="cus_s1")
    assert billing.post_webhook(client, renewal).get_json()["data"]["outcome"] == "renewed"
    assert billing.subscription(client, headers)["tier"] == "pro"


def test_plan_change_replayed_or_out_of_order_changes_nothing(stripe_app, auth, billing):
    app, _ = stripe_app
    client = app.test_client()
    headers = auth()
    _stripe_paid(client, headers, billing)
    now = clock.now()
    newer = _updated(billing, "evt_new", "price_pro", created=now)
    older = _updated(billing, "evt_old", "price_prem", created=now - timedelta(minutes=5),
                     cancel_at_period_end=True,
                     previous={"items": {"data": []}, "cancel_at_period_end": False})
    assert billing.post_webhook(client, newer).get_json()["data"]["outcome"] == "plan_changed"
    after = billing.subscription(client, headers)

    replay = billing.post_webhook(client, newer).get_json()["data"]
    assert replay["duplicate"] is True and replay["outcome"] == "duplicate"
    late = billing.post_webhook(client, older).get_json()["data"]
    assert late["outcome"] == "stale"
    # an update the provider made before the latest payment we applied is stale too
    before_payment = _updated(billing, "evt_older", "price_prem", created=now - 11 * DAY)
    assert billing.post_webhook(client, before_payment).get_json()["data"]["outcome"] == "stale"
    assert billing.subscription(client, headers) == after
    assert len(billing.events_of(EMAIL, "plan_changed")) == 1


def test_our_own_changes_echoed_by_the_provider_change_nothing_more(stripe_app, auth, billing,
                                                                   set_clock):
    """A downgrade asked here switches Stripe's price at once (no charge) and takes effect at
    the period's end: its echo must not downgrade now. An event the provider made before a
    cancel asked here, arriving after it, must not undo it."""
    app, stripe = stripe_app
    client = app.test_client()
    headers = auth()
    start = clock.now()
    _stripe_paid(client, headers, billing, tier="pro")
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["pending_tier"] == "premium"
    assert stripe.received("POST", "/v1/subscriptions/sub_s1")[-1]["items[0][price]"] == [
        "price_prem"]
    echo = billing.post_webhook(client, _updated(billing, "evt_echo", "price_prem"))
    assert echo.get_json()["data"]["outcome"] == "unchanged"
    data = billing.subscription(client, headers)
    assert data["tier"] == "pro" and data["pending_tier"] == "premium"

    set_clock(start + timedelta(hours=1))
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    # made at the provider after the echo, before the cancel asked here
    older = _updated(billing, "evt_before", "price_prem",
                     created=start + timedelta(minutes=30),
                     previous={"cancel_at_period_end": True})
    assert billing.post_webhook(client, older).get_json()["data"]["outcome"] == "stale"
    data = billing.subscription(client, headers)
    assert data["cancel_at_period_end"] is True and data["pending_tier"] == "starter"


def test_stripe_api_base_is_read_from_the_environment(monkeypatch, make_config, auth,
                                                      stripe_stand_in, caplog):
    from config import load_config
    from sonicus import create_app
    from sonicus.extensions import db

    assert load_config({"STRIPE_API_BASE": " http://127.0.0.1:12111 "})["STRIPE_API_BASE"] == \
        "http://127.0.0.1:12111"
    assert load_config({})["STRIPE_API_BASE"] is None

    monkeypatch.setenv("STRIPE_API_BASE", stripe_stand_in.base)
    with caplog.at_level(logging.INFO, logger="sonicus"):
        app = create_app(make_config(BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_test_env",
                                     STRIPE_PRICE_IDS=["premium=price_prem", "pro=price_pro"]))
    said = [r.getMessage() for r in caplog.records if "STRIPE_API_BASE" in r.getMessage()]
    assert said == [f"STRIPE_API_BASE is set: Stripe's API is reached at {stripe_stand_in.base}"]

    resp = app.test_client().post("/api/user/subscription", json={"tier": "premium"},
                                  headers=auth())
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["checkout"]["url"] == \
        "https://checkout.stripe.test/c/cs_test_1"
    [(method, path, _, authorization)] = stripe_stand_in.requests
    assert (method, path, authorization) == ("POST", "/v1/checkout/sessions",
                                             "Bearer sk_test_env")
    with app.app_context():
        db.engine.dispose()


def _plan_forms(fake):
    return [form for form in fake.received("POST", "/v1/subscriptions/sub_s1")
            if "items[0][price]" in form]


@pytest.mark.parametrize("how", ["resume", "choose_pro"])
def test_a_cancel_made_in_the_portal_after_a_downgrade_and_undone_here_shows_what_is_billed(
        stripe_app, auth, billing, set_clock, how):
    """Pro paid through Stripe; the user asks here for Premium from the next period (Stripe's
    price becomes Premium's), cancels in Stripe's billing portal, then undoes the cancel here.
    ``resume`` undoes the cancel: Stripe renews Premium, so the app shows Pro until the
    period's end and Premium from then on, before Premium's invoice arrives (it used to show
    Pro, which nobody pays for). Choosing Pro again instead keeps Pro: Stripe is switched
    back to Pro's price, so it renews what the app shows."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing, "pro")
    period_end = datetime.fromisoformat(billing.subscription(client, headers)
                                        ["current_period_end"])
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.get_json()["data"]["pending_tier"] == "premium"
    assert [f["items[0][price]"] for f in _plan_forms(fake)] == [["price_prem"]]
    canceled = billing.subscription_updated(
        "evt_portal_cancel", price="price_prem", subscription="sub_s1", customer="cus_s1",
        cancel_at_period_end=True, previous={"cancel_at_period_end": False},
        created=clock.now() + timedelta(minutes=1))
    assert billing.post_webhook(client, canceled).get_json()["data"]["outcome"] == \
        "cancel_scheduled"
    assert billing.subscription(client, headers)["pending_tier"] == "starter"

    if how == "resume":
        resp = client.post("/api/user/subscription/resume", headers=headers)
    else:
        resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    renews = "premium" if how == "resume" else "pro"
    assert (data["tier"], data["cancel_at_period_end"], data["checkout"]) == \
        ("pro", False, None)
    assert data["pending_tier"] == (None if renews == "pro" else "premium")
    cancel_flags = [form["cancel_at_period_end"]
                    for form in fake.received("POST", "/v1/subscriptions/sub_s1")
                    if "cancel_at_period_end" in form]
    assert cancel_flags[-1] == ["false"]
    assert _plan_forms(fake)[-1]["items[0][price]"] == \
        [{"premium": "price_prem", "pro": "price_pro"}[renews]]
    assert billing.subscription(client, headers) == data

    set_clock(period_end + timedelta(minutes=5))  # Stripe's invoice has not arrived yet
    assert billing.subscription(client, headers)["tier"] == renews
    invoice = billing.invoice_event(
        "evt_next", "invoice.paid", user_id=billing.user_id(EMAIL), tier=None,
        period_start=period_end, period_end=period_end + 30 * DAY,
        price={"premium": "price_prem", "pro": "price_pro"}[renews],
        subscription="sub_s1", customer="cus_s1", created=period_end + timedelta(minutes=1))
    assert billing.post_webhook(client, invoice).get_json()["data"]["outcome"] == "renewed"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["pending_tier"]) == (renews, None)


@pytest.mark.parametrize("last", ["resumed_in_the_portal", "canceled_in_the_portal"])
def test_cancel_notices_of_one_second_arriving_out_of_order_leave_the_flag_right(
        stripe_app, auth, billing, set_clock, last):
    """A change here and the opposite one in Stripe's billing portal a fraction of a second
    later: both of Stripe's notices are stamped with the same second and arrive in the
    wrong order. The older one used to win, so the subscription was shown canceled while
    Stripe renews it (or renewing while Stripe ends it) until the next notice. The flag is
    what Stripe has last, whatever the order."""
    app, stripe = stripe_app
    client, headers = app.test_client(), auth()
    _stripe_paid(client, headers, billing)
    if last == "canceled_in_the_portal":  # canceled first, resumed here
        assert client.delete("/api/user/subscription", json={},
                             headers=headers).status_code == 200
    second = set_clock(clock.now().replace(microsecond=0) + timedelta(seconds=5,
                                                                      microseconds=200000))
    here = "/api/user/subscription" + ("/resume" if last == "canceled_in_the_portal" else "")
    resp = client.open(here, method="POST" if last == "canceled_in_the_portal" else "DELETE",
                       json={}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    ours = last == "resumed_in_the_portal"  # the flag our change set at Stripe
    stripe.cancel_flags["sub_s1"] = not ours  # the portal's change, half a second later

    def notice(event_id, flag):
        return billing.subscription_updated(
            event_id, price="price_prem", subscription="sub_s1", customer="cus_s1",
            cancel_at_period_end=flag, previous={"cancel_at_period_end": not flag},
            created=second.replace(microsecond=0))

    billing.post_webhook(client, notice("evt_portal", not ours))  # the later one first
    billing.post_webhook(client, notice("evt_ours", ours))
    data = billing.subscription(client, headers)
    assert data["cancel_at_period_end"] is (not ours), data
    assert (data["pending_tier"] == "starter") is (not ours), data
