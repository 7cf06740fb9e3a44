"""The expiry job: trial end, grace end, period end; run twice, run in parallel, CLI, RQ."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sonicus import clock

EMAIL = "listener@example.com"
DAY = timedelta(days=1)


def run_job(app):
    from sonicus.services.subscriptions import process_due_subscriptions

    with app.app_context():
        try:
            return process_due_subscriptions()
        finally:
            from sonicus.extensions import db

            db.session.remove()


def start_trial(client, headers, tier="premium"):
    resp = client.post("/api/user/subscription", json={"tier": tier, "start_trial": True},
                       headers=headers)
    assert resp.status_code == 200


def test_trial_without_payment_method_falls_back_to_starter_once(client, auth, app, billing):
    headers = auth()
    start_trial(client, headers)
    ended_at = clock.now() - timedelta(minutes=5)
    billing.arrange(EMAIL, trial_ends_at=ended_at)
    first = run_job(app)
    assert first["outcomes"] == {"trial_ended": 1}
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "active"
    assert data["limits"]["daily_sessions"] == 3
    second = run_job(app)
    assert second["outcomes"] == {} and second["processed"] == 0
    events = billing.events_of(EMAIL, "trial_ended")
    assert len(events) == 1
    assert events[0]["details"]["reason"] == "no_payment_method"
    assert abs(events[0]["at"] - ended_at) < timedelta(seconds=1)


def test_trial_not_yet_over_is_left_alone(client, auth, app, billing):
    headers = auth()
    start_trial(client, headers)
    assert run_job(app)["outcomes"] == {}
    assert billing.subscription(client, headers)["status"] == "trialing"


def test_trial_with_payment_method_converts_to_paid(client, auth, app, billing):
    headers = auth()
    start_trial(client, headers)
    ref = client.post("/api/user/subscription", json={"tier": "premium"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    client.post(f"/api/billing/sandbox/{ref}/confirm")
    ended_at = clock.now() - timedelta(hours=1)
    billing.arrange(EMAIL, trial_ends_at=ended_at)
    assert run_job(app)["outcomes"] == {"trial_converted": 1}
    data = billing.subscription(client, headers)
    assert data["tier"] == "premium" and data["status"] == "active"
    period_start = datetime.fromisoformat(data["current_period_start"])
    assert period_start == ended_at.replace(microsecond=0) or \
        abs(period_start - ended_at) < timedelta(seconds=1)
    assert datetime.fromisoformat(data["current_period_end"]) > clock.now() + 27 * DAY
    history = client.get("/api/user/subscription/history", headers=headers).get_json()["data"]
    converted = [e for e in history if e["type"] == "trial_converted"]
    assert len(converted) == 1 and converted[0]["amount"] == "9.99"
    assert run_job(app)["outcomes"] == {}


def test_canceled_trial_ends_on_starter_even_with_a_card(client, auth, app, billing):
    headers = auth()
    start_trial(client, headers, "pro")
    ref = client.post("/api/user/subscription", json={"tier": "pro"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    client.post(f"/api/billing/sandbox/{ref}/confirm")
    client.delete("/api/user/subscription", json={"reason": "not_using"}, headers=headers)
    billing.arrange(EMAIL, trial_ends_at=clock.now() - DAY)
    assert run_job(app)["outcomes"] == {"trial_ended": 1}
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_past_due_keeps_the_tier_for_the_grace_period_then_starter(client, auth, app, billing):
    headers = auth()
    data = billing.buy(client, headers, "premium")
    end = datetime.fromisoformat(data["current_period_end"])
    billing.post_webhook(client, billing.invoice_event(
        "evt_f", "invoice.payment_failed", user_id=billing.user_id(EMAIL), tier="premium",
        period_start=end, period_end=end + 30 * DAY))
    billing.arrange(EMAIL, past_due_since=clock.now() - timedelta(days=2, hours=23))
    assert run_job(app)["outcomes"] == {}
    assert billing.subscription(client, headers)["tier"] == "premium"
    billing.arrange(EMAIL, past_due_since=clock.now() - timedelta(days=3, minutes=1))
    assert run_job(app)["outcomes"] == {"grace_ended": 1}
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["status"] == "active"
    assert run_job(app)["outcomes"] == {}
    assert len(billing.events_of(EMAIL, "grace_ended")) == 1


def test_cancel_takes_effect_at_period_end(client, auth, app, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    client.delete("/api/user/subscription", json={}, headers=headers)
    assert run_job(app)["outcomes"] == {}
    assert billing.subscription(client, headers)["tier"] == "premium"
    billing.arrange(EMAIL, current_period_end=clock.now() - timedelta(minutes=1))
    assert run_job(app)["outcomes"] == {"canceled": 1}
    data = billing.subscription(client, headers)
    assert data["tier"] == "starter" and data["cancel_at_period_end"] is False
    assert run_job(app)["outcomes"] == {}


def test_downgrade_takes_effect_at_period_end_and_the_lower_tier_renews(client, auth, app, billing):
    headers = auth()
    billing.buy(client, headers, "pro")
    client.post("/api/user/subscription", json={"tier": "premium"}, headers=headers)
    period_end = clock.now() - timedelta(minutes=1)
    billing.arrange(EMAIL, current_period_end=period_end)
    assert run_job(app)["outcomes"] == {"downgraded": 1, "renewed": 1}
    data = billing.subscription(client, headers)
    assert data["tier"] == "premium" and data["pending_tier"] is None
    assert datetime.fromisoformat(data["current_period_end"]) > clock.now() + 27 * DAY
    renewed = billing.events_of(EMAIL, "renewed")
    assert len(renewed) == 1 and renewed[0]["amount_cents"] == 999


def test_sandbox_renews_at_period_end(client, auth, app, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    billing.arrange(EMAIL, current_period_end=clock.now() - timedelta(minutes=1))
    assert run_job(app)["outcomes"] == {"renewed": 1}
    assert billing.subscription(client, headers)["status"] == "active"
    assert run_job(app)["outcomes"] == {}


def test_provider_subscription_without_renewal_lapses_after_grace(client, auth, app, billing):
    headers = auth()
    billing.buy(client, headers, "premium")
    billing.arrange(EMAIL, provider="stripe", current_period_end=clock.now() - timedelta(days=1))
    assert run_job(app)["outcomes"] == {}  # the provider's renewal may still arrive
    assert billing.subscription(client, headers)["tier"] == "premium"
    billing.arrange(EMAIL, current_period_end=clock.now() - timedelta(days=3, minutes=1))
    assert run_job(app)["outcomes"] == {"lapsed": 1}
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_complimentary_tier_is_not_expired(client, auth, app, billing):
    headers = auth()
    client.get("/api/user/subscription", headers=headers)
    billing.arrange(EMAIL, tier="pro", complimentary=True,
                    current_period_end=clock.now() - 10 * DAY)
    assert run_job(app)["outcomes"] == {}
    assert billing.subscription(client, headers)["tier"] == "pro"


def _many_due_trials(client, auth, billing, n):
    for i in range(n):
        email = f"user{i}@example.com"
        start_trial(client, auth(email))
        billing.arrange(email, trial_ends_at=clock.now() - DAY)


def test_two_workers_at_once_process_each_subscription_once(client, auth, app, billing):
    n = 30
    _many_due_trials(client, auth, billing, n)
    results, barrier = [], threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(run_job(app))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r["outcomes"].get("trial_ended", 0) for r in results) == n
    from sqlalchemy import func, select

    from sonicus.extensions import db
    from sonicus.models import SubscriptionEvent

    with app.app_context():
        ended = db.session.execute(select(func.count(SubscriptionEvent.id)).where(
            SubscriptionEvent.type == "trial_ended")).scalar_one()
        db.session.remove()
    assert ended == n
    assert run_job(app)["outcomes"] == {}


def test_cli_expire_trials(client, auth, runner, billing):
    result = runner.invoke(args=["sonicus", "expire-trials"])
    assert result.exit_code == 0 and "Nothing was due." in result.output
    _many_due_trials(client, auth, billing, 2)
    result = runner.invoke(args=["sonicus", "expire-trials"])
    assert result.exit_code == 0, result.output
    assert "Processed 2 subscription(s)" in result.output
    assert "trial_ended: 2" in result.output
    result = runner.invoke(args=["sonicus", "expire-trials"])
    assert "Nothing was due." in result.output


def test_job_runs_on_an_rq_worker(client, auth, app, billing):
    from sonicus.services.subscriptions import process_due_subscriptions
    from sonicus.tasks.queue import QUEUE_MAINTENANCE, enqueue
    from sonicus.tasks.worker import make_worker

    _many_due_trials(client, auth, billing, 3)
    with app.app_context():
        job = enqueue(process_due_subscriptions, queue=QUEUE_MAINTENANCE,
                      job_id="process-due-subscriptions")
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)
    job.refresh()
    assert job.get_status() == "finished"
    result = job.return_value()
    assert (result["processed"], result["outcomes"]) == (3, {"trial_ended": 3})
    assert billing.subscription(client, auth("user0@example.com"))["tier"] == "starter"


def test_settling_at_sign_in_racing_the_job_applies_the_trial_end_once(client, auth, app,
                                                                        billing):
    """A trial ended a moment ago: sign-ins settling it and expiry workers running at once
    (real threads, real row locks) end it once, with one event."""
    from sqlalchemy import select

    from sonicus.extensions import db
    from sonicus.models import User
    from sonicus.services.subscriptions import settle_due_change

    headers = auth()
    start_trial(client, headers)
    billing.arrange(EMAIL, trial_ends_at=clock.now() - timedelta(seconds=1))
    barrier, errors = threading.Barrier(6), []

    def sign_in():
        with app.app_context():
            try:
                user = db.session.execute(select(User).where(User.email == EMAIL)).scalar_one()
                sub = user.subscription
                barrier.wait()
                settled = settle_due_change(sub)
                assert settled.tier == "starter"
            except Exception as exc:  # reported below
                errors.append(exc)
            finally:
                db.session.remove()

    def job():
        barrier.wait()
        run_job(app)

    threads = [threading.Thread(target=sign_in) for _ in range(3)] + \
        [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(billing.events_of(EMAIL, "trial_ended")) == 1
    assert billing.subscription(client, headers)["tier"] == "starter"


def test_a_month_end_subscription_renews_on_the_months_last_day_not_the_28th(
        client, auth, app, billing, set_clock):
    """Bought on January 31: February's period ends on the 28th (the month has no 31st), and
    the next ones go back to the 31st, the 30th in a 30-day month: the renewal day does not
    drift to the 28th for good (as a provider's billing anchor keeps it)."""
    set_clock(datetime(2027, 1, 31, 10, 0, tzinfo=UTC))
    headers = auth()
    bought = billing.buy(client, headers, "premium")
    assert datetime.fromisoformat(bought["current_period_end"]) == \
        datetime(2027, 2, 28, 10, 0, tzinfo=UTC)
    ends = []
    for moment in (datetime(2027, 3, 1, tzinfo=UTC), datetime(2027, 4, 1, tzinfo=UTC),
                   datetime(2027, 5, 1, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)):
        set_clock(moment)
        assert run_job(app)["outcomes"] == {"renewed": 1}
        ends.append(datetime.fromisoformat(billing.subscription(client, headers)
                                           ["current_period_end"]))
    assert ends == [datetime(2027, 3, 31, 10, 0, tzinfo=UTC),
                    datetime(2027, 4, 30, 10, 0, tzinfo=UTC),
                    datetime(2027, 5, 31, 10, 0, tzinfo=UTC),
                    datetime(2027, 6, 30, 10, 0, tzinfo=UTC)]
    renewed = billing.events_of(EMAIL, "renewed")
    assert [datetime.fromisoformat(e["details"]["period_end"]) for e in renewed] == ends


def test_a_trial_converting_on_the_31st_renews_on_the_31st_after_february(
        client, auth, app, billing, set_clock):
    """A trial that ends on January 31, 2028 converts into a month to February 29 (a leap
    year), then to March 31."""
    set_clock(datetime(2028, 1, 17, 9, 30, tzinfo=UTC))
    headers = auth()
    start_trial(client, headers)
    ref = client.post("/api/user/subscription", json={"tier": "premium"},
                      headers=headers).get_json()["data"]["checkout"]["reference"]
    assert client.post(f"/api/billing/sandbox/{ref}/confirm").status_code == 200
    billing.arrange(EMAIL, trial_ends_at=datetime(2028, 1, 31, 9, 30, tzinfo=UTC))
    set_clock(datetime(2028, 2, 1, tzinfo=UTC))
    assert run_job(app)["outcomes"] == {"trial_converted": 1}
    assert datetime.fromisoformat(billing.subscription(client, headers)
                                  ["current_period_end"]) == \
        datetime(2028, 2, 29, 9, 30, tzinfo=UTC)
    set_clock(datetime(2028, 3, 1, tzinfo=UTC))
    assert run_job(app)["outcomes"] == {"renewed": 1}
    assert datetime.fromisoformat(billing.subscription(client, headers)
                                  ["current_period_end"]) == \
        datetime(2028, 3, 31, 9, 30, tzinfo=UTC)
