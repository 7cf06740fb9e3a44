"""Checkout as with Stripe Checkout: the SPA gives ``success_url``/``cancel_url`` (addresses of
the app only), sends the browser to ``checkout.url`` (a GET), and the browser comes back.
The sandbox's checkout page (development and testing) pays or abandons, then redirects."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import pytest

from sonicus import create_app
from sonicus.extensions import db

PUBLIC = "http://127.0.0.1:18100"
SUCCESS = f"{PUBLIC}/app/welcome?session={{CHECKOUT_SESSION_ID}}"
CANCEL = f"{PUBLIC}/app/plans"


def _buy(client, headers, **urls):
    res = client.post("/api/user/subscription", json={"tier": "premium", **urls},
                      headers=headers)
    assert res.status_code == 200, res.get_json()
    return res.get_json()["data"]["checkout"]


def _path(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def test_sandbox_checkout_page_pays_and_returns_to_success_url(client, auth, billing):
    headers = auth()
    checkout = _buy(client, headers, success_url=SUCCESS, cancel_url=CANCEL)
    assert checkout["url"].startswith(f"{PUBLIC}/api/billing/sandbox/")

    page = client.get(_path(checkout["url"]))
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert "Premium" in html and "9.99" in html and checkout["reference"] in html
    # a plain form page: no script at all, nothing fetched from elsewhere
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", html)
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    actions = re.findall(r'<form method="post" action="([^"]+)"', html)
    assert actions == [f"/api/billing/sandbox/{checkout['reference']}/pay",
                       f"/api/billing/sandbox/{checkout['reference']}/cancel"]

    paid = client.post(actions[0])
    assert paid.status_code == 303
    assert paid.headers["Location"] == SUCCESS.replace("{CHECKOUT_SESSION_ID}",
                                                       checkout["reference"])
    sub = billing.subscription(client, headers)
    assert (sub["tier"], sub["status"], sub["checkout"]) == ("premium", "active", None)
    # pressing Pay again changes nothing; the page of a paid checkout is gone
    again = client.post(actions[0])
    assert again.status_code == 303 and billing.subscription(client, headers) == sub
    assert len(billing.events_of("listener@example.com", "activated")) == 1
    assert client.get(_path(checkout["url"])).status_code == 404


def test_sandbox_checkout_page_cancel_abandons_and_returns_to_cancel_url(client, auth,
                                                                         billing):
    headers = auth()
    checkout = _buy(client, headers, success_url=SUCCESS, cancel_url=CANCEL)
    assert billing.subscription(client, headers)["status"] == "incomplete"
    res = client.post(f"/api/billing/sandbox/{checkout['reference']}/cancel")
    assert res.status_code == 303 and res.headers["Location"] == CANCEL
    sub = billing.subscription(client, headers)
    assert (sub["tier"], sub["status"], sub["checkout"]) == ("starter", "active", None)
    assert [e["type"] for e in billing.events_of("listener@example.com")][-1] == \
        "checkout_abandoned"
    assert client.get(_path(checkout["url"])).status_code == 404
    assert client.post(f"/api/billing/sandbox/{checkout['reference']}/pay").status_code == 404


def test_without_return_urls_the_sandbox_says_what_happened(client, auth, billing):
    headers = auth()
    checkout = _buy(client, headers)
    res = client.post(f"/api/billing/sandbox/{checkout['reference']}/pay")
    assert res.status_code == 303
    done = client.get(res.headers["Location"])
    assert done.status_code == 200 and done.mimetype == "text/html"
    assert "Payment confirmed" in done.get_data(as_text=True)
    # the JSON confirmation for scripts keeps working
    other = _buy(client, auth("second@example.com"))
    confirm = client.post(f"/api/billing/sandbox/{other['reference']}/confirm")
    assert confirm.status_code == 200 and confirm.get_json()["data"]["outcome"] == "activated"


def test_the_sandbox_result_page_shows_the_checkout_as_it_is_not_as_the_link_says(
        client, auth, billing):
    headers = auth()
    canceled = _buy(client, headers)
    res = client.post(f"/api/billing/sandbox/{canceled['reference']}/cancel")
    assert res.status_code == 303
    done = f"/api/billing/sandbox/{canceled['reference']}/done"
    for query in ("?outcome=paid", "?outcome=canceled", ""):
        page = client.get(done + query)
        assert page.status_code == 200, query
        text = page.get_data(as_text=True)
        assert "Checkout canceled" in text and "Payment confirmed" not in text, query
    pending = _buy(client, auth("second@example.com"))
    text = client.get(f"/api/billing/sandbox/{pending['reference']}/done?outcome=paid") \
        .get_data(as_text=True)
    assert "Payment confirmed" not in text and "Checkout canceled" not in text
    assert "waiting for payment" in text
    paid = client.post(f"/api/billing/sandbox/{pending['reference']}/pay")
    assert paid.status_code == 303
    text = client.get(f"/api/billing/sandbox/{pending['reference']}/done?outcome=canceled") \
        .get_data(as_text=True)
    assert "Payment confirmed" in text and "Checkout canceled" not in text
    assert client.get("/api/billing/sandbox/sbx_nothing_here/done?outcome=paid") \
        .status_code == 404


@pytest.mark.parametrize(("field", "url"), [
    ("success_url", "https://evil.example/paid"),
    ("cancel_url", f"{PUBLIC}.evil.example/"),
    ("success_url", "http://localhost:5173/paid"),  # local dev servers: development only
    ("cancel_url", "javascript:alert(1)"),
])
def test_return_urls_outside_the_app_are_422_naming_the_field(client, auth, billing, field,
                                                               url):
    headers = auth()
    res = client.post("/api/user/subscription", headers=headers,
                      json={"tier": "premium", field: url})
    assert res.status_code == 422, res.get_json()
    assert res.get_json()["errors"][0].startswith(f"{field}:")
    assert billing.subscription(client, headers)["status"] == "active"  # nothing changed


def test_development_accepts_a_local_dev_server_and_configured_origins(make_config, auth,
                                                                       billing):
    app = create_app(make_config(SONICUS_ENV="development",
                                 CORS_ORIGINS=["https://app.sonicus.example"]))
    client = app.test_client()
    headers = auth()
    checkout = _buy(client, headers, success_url="http://localhost:5173/paid",
                    cancel_url="https://app.sonicus.example/plans")
    assert client.post(f"/api/billing/sandbox/{checkout['reference']}/pay").headers[
        "Location"] == "http://localhost:5173/paid"
    for bad in ("http://localhost:5173@evil.example/", "http://localhost.evil.example/"):
        res = client.post("/api/user/subscription", headers=auth("b@example.com"),
                          json={"tier": "premium", "success_url": bad})
        assert res.status_code == 422, bad
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # its connections go now, not whenever the app is collected


def test_stripe_checkout_gets_the_same_return_urls(stripe_app, auth):
    app, stripe = stripe_app
    client = app.test_client()
    checkout = _buy(client, auth(), success_url=SUCCESS, cancel_url=CANCEL)
    assert checkout["url"] == "https://checkout.stripe.test/c/cs_test_1"
    form = stripe.received("POST", "/v1/checkout/sessions")[-1]
    assert form["success_url"] == [SUCCESS] and form["cancel_url"] == [CANCEL]
    _buy(client, auth("other@example.com"))  # without them: pages under PUBLIC_BASE_URL
    form = stripe.received("POST", "/v1/checkout/sessions")[-1]
    assert form["success_url"][0].startswith(f"{PUBLIC}/subscription?checkout=success")


# ---- a checkout replaced by another can no longer charge ------------------------------------

def _session_paid(billing, fake, session_id, user_id, tier, reference, subscription):
    """The customer pays a Stripe Checkout Session (if Stripe still lets them) and Stripe sends
    its ``checkout.session.completed``: the event (None: Stripe refused the payment, the
    session was no longer open)."""
    if not fake.complete(session_id, subscription):
        return None
    event = billing.checkout_completed(f"evt_{session_id}", user_id=user_id, tier=tier,
                                       reference=reference, subscription=subscription,
                                       customer=f"cus_{subscription}")
    return event


@pytest.mark.parametrize("second", ["pro", "premium"])
def test_a_replaced_stripe_checkout_is_expired_and_cannot_be_paid(stripe_app, auth, billing,
                                                                  second):
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    first = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    again = client.post("/api/user/subscription", json={"tier": second},
                        headers=headers).get_json()["data"]["checkout"]
    assert again["reference"] != first["reference"]
    # the first session is expired at Stripe: its page no longer takes a payment
    assert fake.received("POST", "/v1/checkout/sessions/cs_test_1/expire") == [{}]
    assert fake.sessions["cs_test_1"]["status"] == "expired"
    assert fake.sessions["cs_test_2"]["status"] == "open"
    assert fake.complete("cs_test_1", "sub_first") is False

    uid = billing.user_id("listener@example.com")
    event = _session_paid(billing, fake, "cs_test_2", uid, second, again["reference"], "sub_2")
    assert billing.post_webhook(client, event).get_json()["data"]["outcome"] == "activated"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == (second, "active")
    types = [e["type"] for e in billing.events_of("listener@example.com")]
    assert types[-3:] == ["checkout_abandoned", "checkout_started", "activated"]


def test_a_replaced_checkout_paid_anyway_is_canceled_and_refunded(stripe_app, auth, billing):
    """The first session was paid in another tab just before it was replaced (Stripe no longer
    lets it be expired): its subscription is canceled and its payment refunded, and only the
    current checkout's subscription charges."""
    app, fake = stripe_app
    client = app.test_client()
    headers = auth()
    first = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    uid = billing.user_id("listener@example.com")
    raced = _session_paid(billing, fake, "cs_test_1", uid, "premium", first["reference"],
                          "sub_first")
    again = client.post("/api/user/subscription", json={"tier": "pro"},
                        headers=headers).get_json()["data"]["checkout"]
    current = _session_paid(billing, fake, "cs_test_2", uid, "pro", again["reference"],
                            "sub_current")
    assert billing.post_webhook(client, current).get_json()["data"]["outcome"] == "activated"
    late = billing.post_webhook(client, raced).get_json()["data"]
    assert late["outcome"] == "replaced_checkout_refunded"

    assert "sub_first" in fake.canceled and "sub_current" not in fake.canceled
    assert fake.refunds == ["pi_sub_first"]
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("pro", "active")
    [refunded] = billing.events_of("listener@example.com", "checkout_refunded")
    assert refunded["amount_cents"] == 999
    # Stripe's later notices of the canceled subscription change nothing
    ended = billing.subscription_deleted("evt_end", subscription="sub_first",
                                         customer="cus_sub_first")
    ended["data"]["object"]["metadata"] = {"sonicus_user_id": str(uid)}
    assert billing.post_webhook(client, ended).get_json()["data"]["outcome"] == "stale"
    assert billing.subscription(client, headers) == data


def test_a_checkout_left_open_when_another_subscription_pays_is_expired(stripe_app, auth,
                                                                        billing, set_clock):
    """A failed renewal's grace ran out (starter) and the user opened a new checkout; then
    Stripe's retry of the old subscription succeeds and gives the tier back. The open
    checkout can no longer be paid, so it cannot start a second subscription charging."""
    from sonicus.services.subscriptions import process_due_subscriptions

    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    first = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    uid = billing.user_id("listener@example.com")
    paid = _session_paid(billing, fake, "cs_test_1", uid, "premium", first["reference"],
                         "sub_old")
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    period_end = datetime.fromisoformat(billing.subscription(client, headers)
                                        ["current_period_end"])
    renewal = {"user_id": uid, "tier": None, "price": "price_prem", "subscription": "sub_old",
               "customer": "cus_sub_old", "period_start": period_end,
               "period_end": period_end + timedelta(days=30)}
    failed_at = set_clock(period_end + timedelta(hours=1))
    failed = billing.invoice_event("evt_fail", "invoice.payment_failed", created=failed_at,
                                   **renewal)
    assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    later = set_clock(failed_at + timedelta(days=4))
    with app.app_context():
        assert process_due_subscriptions(now=later)["outcomes"] == {"grace_ended": 1}
    again = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    assert fake.sessions["cs_test_2"]["status"] == "open"

    retried = billing.invoice_event("evt_retry", "invoice.paid", created=later, **renewal)
    retried["data"]["object"]["parent"]["subscription_details"]["metadata"][
        "sonicus_reference"] = first["reference"]
    assert billing.post_webhook(client, retried).get_json()["data"]["outcome"] == "activated"
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["checkout"]) == ("premium", "active", None)
    assert fake.sessions["cs_test_2"]["status"] == "expired"
    assert fake.complete("cs_test_2", "sub_second") is False
    assert again["reference"] in _abandoned_references(billing)


def _abandoned_references(billing) -> list[str]:
    from sonicus.models import SubscriptionEvent

    with billing.app.app_context():
        rows = db.session.query(SubscriptionEvent).filter_by(type="checkout_abandoned").all()
        out = [r.reference for r in rows]
        db.session.remove()
    return out


def test_erasure_expires_an_open_checkout_and_one_paid_anyway_is_refunded(stripe_app, auth,
                                                                          billing):
    """An account erased with a Stripe checkout open: the page can no longer be paid. One paid
    in another tab just before the erasure reached Stripe has its subscription canceled and
    its payment refunded: nobody is charged for an account that is gone."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    open_one = client.post("/api/user/subscription", json={"tier": "premium"},
                           headers=headers).get_json()["data"]["checkout"]
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    assert fake.sessions["cs_test_1"]["status"] == "expired"
    assert fake.complete("cs_test_1", "sub_gone") is False

    headers = auth()  # the same person again: a fresh account
    raced = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    assert raced["reference"] != open_one["reference"]
    paid = _session_paid(billing, fake, "cs_test_2", billing.user_id("listener@example.com"),
                         "premium", raced["reference"], "sub_raced")
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    late = billing.post_webhook(client, paid).get_json()["data"]
    assert late["outcome"] == "erased_customer"
    assert "sub_raced" in fake.canceled and fake.refunds == ["pi_sub_raced"]


def test_a_checkout_paid_as_the_account_is_erased_is_refunded_when_its_customer_had_paid_before(
        stripe_app, auth, billing):
    """The user's earlier Stripe subscription lapsed (its customer is kept), they opened a new
    checkout, paid it in another tab just before erasing the account: the erasure owes the
    old subscription a cancellation, and the new one is canceled and refunded too, not left
    charging an account that is gone because its customer is the same."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    checkout = client.post("/api/user/subscription", json={"tier": "premium"},
                           headers=headers).get_json()["data"]["checkout"]
    billing.arrange("listener@example.com", provider_customer_id="cus_again",
                    provider_subscription_id="sub_lapsed")
    uid = billing.user_id("listener@example.com")
    assert fake.complete("cs_test_1", "sub_raced")
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    paid = billing.checkout_completed("evt_raced", user_id=uid, tier="premium",
                                      reference=checkout["reference"], customer="cus_again",
                                      subscription="sub_raced")
    late = billing.post_webhook(client, paid).get_json()["data"]
    assert late["outcome"] == "erased_customer"
    assert "sub_raced" in fake.canceled and fake.refunds == ["pi_sub_raced"]


# ---- a new subscription ends the older one the provider may still charge --------------------

def _old_subscription_stopped(app, client, headers, billing, fake, set_clock, how):
    """Premium paid through ``sub_old``; then its renewal failed and the grace ran out, or no
    renewal came at all and the period lapsed: starter, ``sub_old`` kept (Stripe may still
    retry or renew it). Returns the old renewal's invoice fields and the moment now."""
    from sonicus.services.subscriptions import process_due_subscriptions

    first = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    uid = billing.user_id("listener@example.com")
    paid = _session_paid(billing, fake, "cs_test_1", uid, "premium", first["reference"],
                         "sub_old")
    assert billing.post_webhook(client, paid).get_json()["data"]["outcome"] == "activated"
    period_end = datetime.fromisoformat(billing.subscription(client, headers)
                                        ["current_period_end"])
    renewal = {"user_id": uid, "tier": None, "price": "price_prem", "subscription": "sub_old",
               "customer": "cus_sub_old", "period_start": period_end,
               "period_end": period_end + timedelta(days=30)}
    if how == "grace_ended":
        failed_at = set_clock(period_end + timedelta(hours=1))
        failed = billing.invoice_event("evt_fail", "invoice.payment_failed", created=failed_at,
                                       **renewal)
        assert billing.post_webhook(client, failed).get_json()["data"]["outcome"] == "past_due"
    later = set_clock(period_end + timedelta(days=4))
    with app.app_context():
        assert process_due_subscriptions(now=later)["outcomes"] == {how: 1}
    assert billing.subscription(client, headers)["tier"] == "starter"
    return renewal, later


@pytest.mark.parametrize("how", ["grace_ended", "lapsed"])
def test_buying_again_after_a_failed_renewal_ends_the_old_subscription_at_the_provider(
        stripe_app, auth, billing, set_clock, how):
    """A renewal failed and the grace ran out (or no renewal came): starter, while Stripe
    may still retry the old subscription. The user buys Premium again with a new card: the
    old subscription is canceled at Stripe then, so its retry can no longer charge the
    user a second time for the same month (and every month after), a subscription the app
    no longer knows of and the user's cancel here never reaches."""
    app, fake = stripe_app
    client, headers = app.test_client(), auth()
    renewal, later = _old_subscription_stopped(app, client, headers, billing, fake, set_clock,
                                               how)
    again = client.post("/api/user/subscription", json={"tier": "premium"},
                        headers=headers).get_json()["data"]["checkout"]
    new = _session_paid(billing, fake, "cs_test_2", billing.user_id("listener@example.com"),
                        "premium", again["reference"], "sub_new")
    assert billing.post_webhook(client, new).get_json()["data"]["outcome"] == "activated"
    assert "sub_old" in fake.canceled and "sub_new" not in fake.canceled
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"]) == ("premium", "active")

    # a retry Stripe made a moment before the cancel reached it changes nothing here
    retried = billing.invoice_event("evt_retry", "invoice.paid", created=later, **renewal)
    assert billing.post_webhook(client, retried).get_json()["data"]["outcome"] in (
        "stale", "already_recorded")
    assert billing.subscription(client, headers) == data
    # the user's cancel reaches the subscription that charges
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    assert fake.received("POST", "/v1/subscriptions/sub_new")[-1]["cancel_at_period_end"] == \
        ["true"]


# ---- a tier chosen whose payment has not arrived: 402, not 403 ------------------------------

def _use(client, headers, package_id, key=None):
    """Start a session on the package (with an ``Idempotency-Key`` when ``key``) and ask for
    its download licence."""
    start_headers = {**headers, "Idempotency-Key": key} if key else headers
    return (client.post("/api/user/sessions", json={"package_id": package_id},
                        headers=start_headers),
            client.post("/api/user/downloads", json={"package_id": package_id},
                        headers=headers))


def _codes(*answers):
    return [(res.status_code, res.get_json()["code"]) for res in answers]


def test_a_tier_awaiting_its_payment_is_402_not_403(client, auth, billing, make_package):
    """A user who chose Premium and whose payment has not arrived is told so (402), not that
    the package is above their tier; once paid, the same requests are granted."""
    premium = make_package("deep-rest", minimum_tier="premium").id
    public = make_package("rain").id
    headers = auth()
    assert _codes(*_use(client, headers, premium)) == [(403, "package_locked"),
                                                       (403, "feature_not_in_tier")]
    checkout = _buy(client, headers)
    assert billing.subscription(client, headers)["status"] == "incomplete"
    start, download = _use(client, headers, premium, key="wait-1")
    assert _codes(start, download) == [(402, "payment_required")] * 2
    for res in (start, download):
        assert "Premium" in res.get_json()["message"], res.get_json()
        assert "not arrived" in res.get_json()["message"], res.get_json()
    # Starter opens the public package but keeps nothing offline: Premium's payment would
    public_start, public_download = _use(client, headers, public)
    assert public_start.status_code == 201
    assert _codes(public_download) == [(402, "payment_required")]
    assert [s["package"]["id"] for s in client.get(
        "/api/user/sessions", headers=headers).get_json()["data"]] == [public]
    assert client.get("/api/user/downloads", headers=headers).get_json()["data"] == []

    assert client.post(f"/api/billing/sandbox/{checkout['reference']}/confirm").status_code \
        == 200
    # the key's answer is kept like any answer below 500: a new attempt takes a new key
    replay = client.post("/api/user/sessions", json={"package_id": premium},
                         headers={**headers, "Idempotency-Key": "wait-1"})
    assert replay.status_code == 402 and replay.headers.get("Idempotent-Replayed") == "true"
    assert [res.status_code for res in _use(client, headers, premium)] == [201, 201]


def test_a_cancelled_checkout_is_403_again(client, auth, billing, make_package):
    premium = make_package("deep-rest", minimum_tier="premium").id
    headers = auth()
    checkout = _buy(client, headers)
    assert _codes(*_use(client, headers, premium)) == [(402, "payment_required")] * 2
    assert client.post(f"/api/billing/sandbox/{checkout['reference']}/cancel").status_code \
        == 303
    assert _codes(*_use(client, headers, premium)) == [(403, "package_locked"),
                                                       (403, "feature_not_in_tier")]


def test_adding_a_package_awaiting_its_tiers_payment_to_the_library_is_402(client, auth,
                                                                            billing,
                                                                            make_package):
    """The library says so too: the package waits on the payment (402), not on a tier the user
    has not chosen (403); a Pro package stays 403 while Premium is paid for; once paid, added."""
    premium = make_package("deep-rest", minimum_tier="premium").id
    pro = make_package("theta", minimum_tier="pro_exclusive").id
    headers = auth()
    assert _codes(client.post(f"/api/user/packages/{premium}", headers=headers)) == \
        [(403, "package_locked")]
    checkout = _buy(client, headers)
    assert _codes(client.post(f"/api/user/packages/{premium}", headers=headers),
                  client.post(f"/api/user/packages/{pro}", headers=headers)) == \
        [(402, "payment_required"), (403, "package_locked")]
    assert client.get("/api/user/packages", headers=headers).get_json()["data"] == []
    assert client.post(f"/api/billing/sandbox/{checkout['reference']}/confirm").status_code \
        == 200
    assert client.post(f"/api/user/packages/{premium}", headers=headers).status_code == 201


def test_a_pending_tier_that_would_not_open_the_package_is_still_403(client, auth, billing,
                                                                      make_package):
    """Premium's payment pending does not make a Pro package a matter of payment."""
    pro = make_package("theta", minimum_tier="pro_exclusive").id
    headers = auth()
    _buy(client, headers)  # premium
    assert _codes(*_use(client, headers, pro)) == [(403, "package_locked"),
                                                   (403, "feature_not_in_tier")]


def test_a_start_awaiting_a_payment_costs_no_extra_statement(app, client, auth, billing,
                                                             make_package, sql_statements):
    """The pending tier is read with the start's own first statement: a start granted to a
    user waiting for a payment sends as many statements as anyone's."""
    public = make_package("rain").id
    waiting, plain = auth(), auth("plain@example.com")
    _buy(client, waiting)
    counts = []
    for headers in (plain, waiting, plain, waiting):
        client.get("/api/user/profile", headers=headers)  # the caller is known and cached
        statements = sql_statements(app, lambda headers=headers: counts.append(client.post(
            "/api/user/sessions", json={"package_id": public}, headers=headers).status_code))
        counts.append(len(statements))
    assert counts[0::2] == [201] * 4
    assert counts[1] == counts[3] == counts[5] == counts[7], counts
