"""The subscription lifecycle through the API: choose, buy, trial, upgrade, downgrade,
cancel, resume, history."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

from sonicus import clock
from sonicus.tiers import TIERS, prorated_upgrade_cents

DAY = timedelta(days=1)


def test_new_user_is_on_starter_with_its_limits_and_usage(client, auth, billing):
    data = billing.subscription(client, auth())
    assert data["tier"] == "starter" and data["status"] == "active"
    assert data["trial_ends_at"] is None and data["current_period_end"] is None
    assert data["cancel_at_period_end"] is False
    assert data["limits"] == TIERS["starter"].limits
    assert data["usage"]["sessions_today"] == 0
    assert data["usage"]["sessions_remaining"] == TIERS["starter"].daily_sessions
    assert data["usage"]["resets_at"]
    assert data["checkout"] is None
    assert data["price"] == "0.00"


def test_a_missing_row_reads_as_starter_and_the_first_change_creates_it(client, auth, app,
                                                                       billing):
    from sqlalchemy import delete, func, select

    from sonicus.extensions import db
    from sonicus.models import UserSubscription

    headers = auth()
    billing.subscription(client, headers)
    uid = billing.user_id("listener@example.com")

    def rows() -> int:
        with app.app_context():
            count = db.session.execute(select(func.count()).select_from(UserSubscription)
                                       .where(UserSubscription.user_id == uid)).scalar_one()
            db.session.remove()
            return count

    with app.app_context():
        db.session.execute(delete(UserSubscription).where(UserSubscription.user_id == uid))
        db.session.commit()
        db.session.remove()
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "active" and data["checkout"] is None
    assert rows() == 0  # reading writes nothing
    resp = client.post("/api/user/subscription", json={"tier": "starter"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["data"]["tier"] == "starter"
    assert rows() == 1
    assert billing.events_of("listener@example.com", "tier_chosen")


def test_choosing_starter_marks_the_tier_chosen(client, auth):
    headers = auth()
    assert client.get("/api/user/profile", headers=headers).get_json()[
        "data"]["onboarding"]["tier_chosen"] is False
    resp = client.post("/api/user/subscription", json={"tier": "starter"}, headers=headers)
    assert resp.status_code == 200
    assert resp.get_json()["data"]["tier"] == "starter"
    onboarding = client.get("/api/user/profile", headers=headers).get_json()["data"]["onboarding"]
    assert onboarding == {"email_verified": True, "tier_chosen": True, "payment_pending": False,
                          "completed": True}
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "tier_chosen"


def test_paid_tier_needs_a_verified_email(client, auth, billing):
    headers = auth(email_verified=False)
    for body in ({"tier": "premium"}, {"tier": "pro", "start_trial": True}):
        resp = client.post("/api/user/subscription", json=body, headers=headers)
        assert resp.status_code == 403
        assert resp.get_json()["code"] == "email_not_verified"
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "active" and data["checkout"] is None
    assert data["trial_used"] is False


def test_paid_tier_waits_for_payment_then_takes_effect(client, auth, billing):
    headers = auth()
    resp = client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert data["tier"] == "starter"  # nothing paid yet
    assert data["status"] == "incomplete"
    checkout = data["checkout"]
    assert checkout["provider"] == "sandbox" and checkout["reference"].startswith("chk_")
    assert checkout["url"].endswith(f"/api/billing/sandbox/{checkout['reference']}")  # a page
    assert checkout["amount"] == "9.99"
    profile = client.get("/api/user/profile", headers=headers).get_json()["data"]
    assert profile["tier"] == "starter" and profile["onboarding"]["payment_pending"] is True

    confirm = client.post(f"/api/billing/sandbox/{checkout['reference']}/confirm")
    assert confirm.status_code == 200 and confirm.get_json()["data"]["outcome"] == "activated"
    data = billing.subscription(client, headers)
    assert data["tier"] == "premium" and data["status"] == "active" and data["checkout"] is None
    assert data["payment_method_on_file"] is True
    assert data["limits"] == TIERS["premium"].limits
    end = datetime.fromisoformat(data["current_period_end"])
    assert timedelta(days=27) < end - clock.now() <= timedelta(days=31)
    profile = client.get("/api/user/profile", headers=headers).get_json()["data"]
    assert profile["tier"] == "premium" and profile["onboarding"]["completed"] is True
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "activated"
    assert history[0]["from_tier"] == "starter" and history[0]["to_tier"] == "premium"
    assert history[0]["amount"] == "9.99"
    assert history[0]["reference"] == checkout["reference"]
    assert billing.events_of("listener@example.com", "activated")[0]["amount_cents"] == 999


def test_sandbox_confirm_twice_is_one_payment_and_unknown_reference_is_404(client, auth, billing):
    headers = auth()
    ref = client.post("/api/user/subscription", json={"tier": "pro"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    assert client.post("/api/billing/sandbox/chk_nope/confirm").status_code == 404
    first = client.post(f"/api/billing/sandbox/{ref}/confirm")
    second = client.post(f"/api/billing/sandbox/{ref}/confirm")
    assert first.status_code == second.status_code == 200
    assert second.get_json()["data"]["duplicate"] is True
    assert len(billing.events_of("listener@example.com", "activated")) == 1
    assert billing.subscription(client, headers)["tier"] == "pro"


def test_a_new_checkout_replaces_the_old_one(client, auth, billing):
    headers = auth()
    old = client.post("/api/user/subscription", json={"tier": "premium"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    new = client.post("/api/user/subscription", json={"tier": "pro"},
                      headers=headers).get_json()["data"]["checkout"]
    assert new["reference"] != old and new["tier"] == "pro"
    assert client.post(f"/api/billing/sandbox/{old}/confirm").status_code == 404
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_choosing_starter_while_incomplete_drops_the_checkout(client, auth, billing):
    headers = auth()
    ref = client.post("/api/user/subscription", json={"tier": "premium"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    data = client.post("/api/user/subscription", json={"tier": "starter"},
                       headers=headers).get_json()["data"]
    assert data["status"] == "active" and data["checkout"] is None and data["tier"] == "starter"
    assert client.post(f"/api/billing/sandbox/{ref}/confirm").status_code == 404


def test_trial_once_per_user(client, auth, app, billing):
    headers = auth()
    resp = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=headers)
    assert resp.status_code == 200, resp.get_json()
    data = resp.get_json()["data"]
    assert data["tier"] == "premium" and data["status"] == "trialing"
    ends = datetime.fromisoformat(data["trial_ends_at"])
    days = app.config["TRIAL_DAYS"]
    assert abs((ends - clock.now()) - timedelta(days=days)) < timedelta(minutes=1)
    assert data["limits"] == TIERS["premium"].limits

    again = client.post("/api/user/subscription", json={"tier": "pro", "start_trial": True},
                        headers=headers)
    assert again.status_code == 409 and again.get_json()["code"] == "trial_already_used"
    # even after falling back to starter, the trial stays used
    client.delete("/api/user/subscription", json={}, headers=headers)
    billing.arrange("listener@example.com", trial_ends_at=clock.now() - DAY)
    from sonicus.services.subscriptions import process_due_subscriptions
    with app.app_context():
        process_due_subscriptions()
    assert billing.subscription(client, headers)["tier"] == "starter"
    again = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                        headers=headers)
    assert again.status_code == 409 and again.get_json()["code"] == "trial_already_used"


def test_trial_of_starter_is_invalid(client, auth):
    resp = client.post("/api/user/subscription", json={"tier": "starter", "start_trial": True},
                       headers=auth())
    assert resp.status_code == 422
    assert any(e.startswith("start_trial") for e in resp.get_json()["errors"])


def test_payment_during_trial_puts_a_card_on_file_and_trial_continues(client, auth, billing):
    headers = auth()
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    data = client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).get_json()["data"]
    assert data["status"] == "trialing" and data["checkout"]["amount"] == "9.99"
    out = client.post(f"/api/billing/sandbox/{data['checkout']['reference']}/confirm")
    assert out.get_json()["data"]["outcome"] == "payment_method_added"
    data = billing.subscription(client, headers)
    assert data["status"] == "trialing" and data["tier"] == "premium"
    assert data["payment_method_on_file"] is True and data["checkout"] is None


def test_paying_a_trial_checkout_after_the_trial_ended_is_404_as_once_the_expiry_job_ran(
        client, auth, billing):
    """A trial without a card, its checkout (to add one) opened; the trial ends and the
    sandbox's Pay is pressed before the expiry job (every minute) has run: the trial's end
    acts first, as it does for a webhook, so the checkout is gone (404, as after the job)
    and the user is on starter, not given a card that converts a trial already over into a
    charged month that started in the past."""
    headers = auth()
    client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                headers=headers)
    data = client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).get_json()["data"]
    reference = data["checkout"]["reference"]
    billing.arrange("listener@example.com", trial_ends_at=clock.now() - timedelta(seconds=30))
    resp = client.post(f"/api/billing/sandbox/{reference}/confirm")
    assert resp.status_code == 404, resp.get_json()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["status"], data["checkout"]) == ("starter", "active", None)
    assert data["payment_method_on_file"] is False
    types = [e["type"] for e in billing.events_of("listener@example.com")]
    assert "payment_method_added" not in types and "trial_converted" not in types
    assert "trial_ended" in types


def test_a_grant_over_a_sandbox_paid_period_keeps_that_period_to_its_end(app, client, auth,
                                                                         admin_auth, billing):
    """Premium paid in the sandbox, Pro granted over it: as with a provider, the month paid
    for is not taken away (a revoke is 409 while it runs), the user's cancel keeps Pro until
    its end, and the sandbox renews nothing (no charge for a tier given free)."""
    from sonicus.extensions import db
    from sonicus.services.subscriptions import process_due_subscriptions

    headers = auth()
    period_end = datetime.fromisoformat(billing.buy(client, headers)["current_period_end"])
    uid, admin = billing.user_id("listener@example.com"), admin_auth("boss@example.com")
    assert client.patch(f"/api/admin/users/{uid}", json={"tier": "pro"},
                        headers=admin).status_code == 200
    revoke = client.patch(f"/api/admin/users/{uid}", json={"tier": "starter"}, headers=admin)
    assert revoke.status_code == 409 and revoke.get_json()["code"] == "conflict"
    data = client.delete("/api/user/subscription", json={}, headers=headers).get_json()["data"]
    assert (data["tier"], data["complimentary"], data["cancel_at_period_end"]) == \
        ("pro", True, True)
    assert datetime.fromisoformat(data["current_period_end"]) == period_end

    billing.arrange("listener@example.com", current_period_end=clock.now() - DAY)
    with app.app_context():
        process_due_subscriptions()
        db.session.remove()
    data = billing.subscription(client, headers)
    assert (data["tier"], data["complimentary"]) == ("starter", False)
    types = [e["type"] for e in billing.events_of("listener@example.com")]
    assert types[-1] == "canceled" and "renewed" not in types


def test_invalid_bodies_are_422_and_change_nothing(client, auth, billing):
    headers = auth()
    cases = [({"tier": "gold"}, "tier"), ({}, "tier"),
             ({"tier": "premium", "coupon": "x"}, "coupon"),
             ({"tier": "premium", "start_trial": "maybe"}, "start_trial")]
    for body, field in cases:
        resp = client.post("/api/user/subscription", json=body, headers=headers)
        assert resp.status_code == 422, body
        payload = resp.get_json()
        assert payload["code"] == "validation_error"
        assert any(e.startswith(field) for e in payload["errors"]), payload
    data = billing.subscription(client, headers)
    assert data["status"] == "active" and data["checkout"] is None
    resp = client.delete("/api/user/subscription", json={"reason": "bored"}, headers=headers)
    assert resp.status_code == 422 and "reason" in resp.get_json()["errors"][0]
    resp = client.delete("/api/user/subscription", json={"why": "x"}, headers=headers)
    assert resp.status_code == 422 and "why" in resp.get_json()["errors"][0]


def test_requires_a_token(client):
    assert client.get("/api/user/subscription").status_code == 401
    assert client.post("/api/user/subscription", json={"tier": "starter"}).status_code == 401


def test_upgrade_premium_to_pro_is_immediate_and_prorated(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    start, end = clock.now() - timedelta(days=10), clock.now() + timedelta(days=20)
    billing.arrange("listener@example.com", current_period_start=start, current_period_end=end)
    resp = client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert data["tier"] == "pro" and data["status"] == "active" and data["checkout"] is None
    assert datetime.fromisoformat(data["current_period_end"]) == \
        end.replace(microsecond=end.microsecond)
    event = client.get("/api/user/subscription/history",
                       headers=headers).get_json()["data"][0]
    assert event["type"] == "upgraded"
    assert (event["from_tier"], event["to_tier"]) == ("premium", "pro")
    expected = prorated_upgrade_cents("premium", "pro", 20 * 86400, 30 * 86400)
    assert expected == 667
    charged = Decimal(event["amount"]) * 100
    assert abs(charged - expected) <= 1  # a few ms pass between arranging and asking
    assert event["details"]["proration"] is True


def test_downgrade_waits_for_period_end_and_resume_undoes_it(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "pro")
    data = client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).get_json()["data"]
    assert data["tier"] == "pro" and data["pending_tier"] == "premium"
    assert data["cancel_at_period_end"] is False
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    assert history[0]["type"] == "downgrade_scheduled"
    resumed = client.post("/api/user/subscription/resume", headers=headers)
    assert resumed.status_code == 200
    assert resumed.get_json()["data"]["pending_tier"] is None
    assert resumed.get_json()["data"]["tier"] == "pro"
    again = client.post("/api/user/subscription/resume", headers=headers)
    assert again.status_code == 409 and again.get_json()["code"] == "conflict"


def test_cancel_at_period_end_with_reason_and_resume(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    resp = client.delete("/api/user/subscription",
                         json={"reason": "too_expensive", "comment": "maybe later"},
                         headers=headers)
    assert resp.status_code == 200
    data = resp.get_json()["data"]
    assert data["tier"] == "premium" and data["cancel_at_period_end"] is True
    assert data["pending_tier"] == "starter"
    event = billing.events_of("listener@example.com", "cancel_scheduled")[0]
    assert event["details"]["reason"] == "too_expensive"
    assert event["details"]["comment"] == "maybe later"
    # cancelling again changes nothing
    assert client.delete("/api/user/subscription", json={}, headers=headers).status_code == 200
    assert len(billing.events_of("listener@example.com", "cancel_scheduled")) == 1
    data = client.post("/api/user/subscription/resume", headers=headers).get_json()["data"]
    assert data["cancel_at_period_end"] is False and data["tier"] == "premium"
    assert client.post("/api/user/subscription/resume", headers=headers).status_code == 409


def test_resume_after_the_period_ended_is_a_conflict(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    client.delete("/api/user/subscription", json={}, headers=headers)
    billing.arrange("listener@example.com", current_period_end=clock.now() - timedelta(minutes=1))
    resp = client.post("/api/user/subscription/resume", headers=headers)
    assert resp.status_code == 409
    shown = billing.subscription(client, headers)  # canceled at the period's end
    assert (shown["tier"], shown["cancel_at_period_end"]) == ("starter", False), shown


def test_choosing_starter_from_paid_is_a_cancel_at_period_end(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    data = client.post("/api/user/subscription", json={"tier": "starter"},
                       headers=headers).get_json()["data"]
    assert data["tier"] == "premium" and data["cancel_at_period_end"] is True


def test_cancel_with_nothing_to_cancel_is_a_conflict(client, auth):
    resp = client.delete("/api/user/subscription", json={}, headers=auth())
    assert resp.status_code == 409 and resp.get_json()["code"] == "conflict"


def test_cancel_without_a_body_works(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    resp = client.delete("/api/user/subscription", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["cancel_at_period_end"] is True


def test_choosing_the_current_tier_again_changes_nothing(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    before = len(billing.events_of("listener@example.com"))
    data = client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).get_json()["data"]
    assert data["tier"] == "premium" and data["checkout"] is None
    assert len(billing.events_of("listener@example.com")) == before


def test_history_is_newest_first_paginated_and_only_mine(client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    client.post("/api/user/subscription", json={"tier": "pro"}, headers=headers)
    client.delete("/api/user/subscription", json={"reason": "other"}, headers=headers)
    other = auth("other@example.com")
    client.post("/api/user/subscription", json={"tier": "starter"}, headers=other)

    resp = client.get("/api/user/subscription/history?per_page=2", headers=headers)
    body = resp.get_json()
    types = [e["type"] for e in body["data"]]
    assert types == ["cancel_scheduled", "upgraded"]
    assert body["pagination"] == {"page": 1, "per_page": 2, "total": 5, "pages": 3}
    page3 = client.get("/api/user/subscription/history?per_page=2&page=3",
                       headers=headers).get_json()["data"]
    assert [e["type"] for e in page3] == ["signed_up"]
    for event in body["data"]:
        assert set(event) >= {"type", "from_tier", "to_tier", "at", "amount", "reference"}
    mine = client.get("/api/user/subscription/history", headers=other).get_json()
    assert [e["type"] for e in mine["data"]] == ["tier_chosen", "signed_up"]
    assert client.get("/api/user/subscription/history?per_page=101",
                      headers=headers).status_code == 422


def test_sandbox_confirm_is_404_outside_the_sandbox(auth, make_config, billing):
    from sonicus import create_app

    app = create_app(make_config(BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_test_x"))
    client = app.test_client()
    resp = client.post("/api/billing/sandbox/chk_anything/confirm")
    assert resp.status_code == 404 and resp.get_json()["code"] == "not_found"


def test_openapi_documents_the_routes(client, billing):
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for path in ("/api/user/subscription", "/api/user/subscription/resume",
                 "/api/user/subscription/history", "/api/billing/webhook",
                 "/api/billing/sandbox/{reference}/confirm"):
        assert path in paths, path


def test_no_trials_when_trial_days_is_zero(auth, make_config):
    from sonicus import create_app

    app = create_app(make_config(TRIAL_DAYS=0))
    client = app.test_client()
    resp = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=auth())
    assert resp.status_code == 409
    assert client.get("/api/user/subscription", headers=auth()).get_json()[
        "data"]["trial_used"] is False


def test_a_change_asked_after_the_period_ended_starts_from_what_the_period_fell_to(
        client, auth, billing):
    """A canceled period is over, the expiry job has not run yet: the user is on starter
    (the tier in force), so buying again is a new checkout, not a free upgrade or a resume."""
    headers = auth()
    billing.buy(client, headers, "premium")
    client.delete("/api/user/subscription", json={}, headers=headers)
    billing.arrange("listener@example.com",
                    current_period_end=clock.now() - timedelta(minutes=1))
    for tier in ("pro", "premium"):
        resp = client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
        assert resp.status_code == 200, resp.get_json()
        data = resp.get_json()["data"]
        assert data["tier"] == "starter" and data["status"] == "incomplete"
        assert data["checkout"]["tier"] == tier
    types = [e["type"] for e in billing.events_of("listener@example.com")]
    assert "upgraded" not in types and "resumed" not in types
    assert types.count("canceled") == 1


def test_the_subscription_shown_once_the_trial_has_ended_is_the_tier_after_it(
        client, auth, app, make_user, set_clock):
    """In the minute before the expiry job writes the end of a trial without a card, the
    subscription, the profile and the dashboard show Starter, as a start is judged, and the
    trial's end is in the history once, when the job runs too."""
    make_user("shown@example.com")
    headers = auth("shown@example.com")
    set_clock(datetime.combine(clock.now().date() + timedelta(days=1), time(12), UTC))
    trial = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                        headers=headers)
    ends = datetime.fromisoformat(trial.json["data"]["trial_ends_at"])
    set_clock(ends + timedelta(seconds=20))  # the job has not run yet
    shown = client.get("/api/user/subscription", headers=headers).json["data"]
    assert (shown["tier"], shown["status"]) == ("starter", "active"), shown
    assert shown["limits"] == TIERS["starter"].limits
    assert client.get("/api/user/profile", headers=headers).json["data"]["tier"] == "starter"
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert dashboard["subscription"]["tier"] == "starter", dashboard["subscription"]
    from sonicus.services.subscriptions import process_due_subscriptions
    with app.app_context():
        assert process_due_subscriptions(ends + timedelta(seconds=30))["processed"] == 0
    events = client.get("/api/user/subscription/history", headers=headers).json["data"]
    assert [e["type"] for e in events].count("trial_ended") == 1, events


def test_resume_refuses_an_unknown_body_field_and_changes_nothing(client, auth, billing):
    """``resume`` takes no body: a field sent to it (a typo, a misplaced ``reason``) is a 422
    naming it, the cancellation stays scheduled; nothing, ``{}`` or an empty JSON body resume."""
    headers = auth()
    billing.buy(client, headers, "premium")
    assert client.delete("/api/user/subscription", headers=headers).status_code == 200
    for body in ({"foo": 1}, {"reason": "other"}):
        res = client.post("/api/user/subscription/resume", json=body, headers=headers)
        assert res.status_code == 422, res.get_json()
        assert res.get_json()["code"] == "validation_error"
        assert res.get_json()["errors"] == [f"{next(iter(body))}: Unknown field."]
        data = client.get("/api/user/subscription", headers=headers).get_json()["data"]
        assert data["cancel_at_period_end"] is True
    for send in ({"json": {}}, {}, {"data": "", "content_type": "application/json"}):
        res = client.post("/api/user/subscription/resume", headers=headers, **send)
        assert res.status_code == 200, (send, res.get_json())
        assert res.get_json()["data"]["cancel_at_period_end"] is False
        assert client.delete("/api/user/subscription", headers=headers).status_code == 200
    res = client.post("/api/user/subscription/resume", data="{not json", headers=headers,
                      content_type="application/json")
    assert res.status_code == 400 and res.get_json()["code"] == "validation_error"


def test_another_account_of_the_email_that_used_the_trial_shows_it_used(client, auth):
    """Two sign-in identities of one person (the same verified email), each its own account:
    the first used the free trial. The second was shown ``trial_used: false`` and offered a
    trial that was then refused with 409 trial_already_used; it is shown used, whether the
    first account is live or erased since, and whether the second existed before."""
    email = "listener@example.com"
    first, second = auth(email, sub="identity-a"), auth(email, sub="identity-b")
    assert client.get("/api/user/subscription", headers=second).get_json()["data"][
        "trial_used"] is False  # B exists, nobody used the trial yet
    resp = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=first)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["data"]["trial_used"] is True

    for headers in (second, auth(email, sub="identity-c")):  # before and after A's trial
        shown = client.get("/api/user/subscription", headers=headers).get_json()["data"]
        assert shown["trial_used"] is True, shown
        resp = client.post("/api/user/subscription",
                           json={"tier": "premium", "start_trial": True}, headers=headers)
        assert resp.get_json()["code"] == "trial_already_used"
        assert client.get("/api/user/dashboard", headers=headers).get_json()["data"][
            "subscription"]["trial_used"] is True
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    assert client.get("/api/user/subscription", headers=second).get_json()["data"][
        "trial_used"] is True
    # someone else's account is not touched by it
    assert client.get("/api/user/subscription", headers=auth("other@example.com")).get_json()[
        "data"]["trial_used"] is False
