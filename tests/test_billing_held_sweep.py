"""Refunds and disputes held for a payment whose notice never comes are removed after the
retention (``HELD_REVERSAL_RETENTION_DAYS``, 90 days), by the hourly periodic sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_billing_refunds import EMAIL, _dispute, _invoice, _outcome, _refund

from sonicus import clock

DAY = timedelta(days=1)


def _held_event_ids(app) -> list[str]:
    from sqlalchemy import select

    from sonicus.extensions import db
    from sonicus.models import HeldReversal

    with app.app_context():
        ids = sorted(db.session.execute(select(HeldReversal.event_id)).scalars())
        db.session.remove()
    return ids


def _received_days_ago(app, event_id: str, days: int) -> None:
    from sqlalchemy import update

    from sonicus.extensions import db
    from sonicus.models import HeldReversal

    with app.app_context():
        db.session.execute(update(HeldReversal).where(HeldReversal.event_id == event_id)
                           .values(received_at=clock.now() - days * DAY))
        db.session.commit()


def test_a_refund_held_for_a_payment_that_never_comes_is_removed_after_90_days(
        stripe_app, auth, billing):
    """Refunds and disputes of charges no payment here was ever notified of (a charge made in
    Stripe's dashboard) were held forever. The sweep removes those held more than 90 days,
    keeps the younger ones (their payment's notice may still come and take them), and does
    it once."""
    from sonicus.services.subscriptions.held_sweep import sweep_unclaimed_held_reversals

    app, _ = stripe_app
    client, headers = app.test_client(), auth()
    assert client.post("/api/user/subscription", json={"tier": "premium"},
                       headers=headers).status_code == 200
    for event in (_refund("evt_r_old", "ch_old"), _dispute("evt_d_old", "ch_old2"),
                  _refund("evt_r_young", "ch_young")):
        assert _outcome(billing, client, event) == "held_for_its_payment"
    _received_days_ago(app, "evt_r_old", 91)
    _received_days_ago(app, "evt_d_old", 120)
    _received_days_ago(app, "evt_r_young", 89)

    with app.app_context():
        assert sweep_unclaimed_held_reversals() == 2
        assert sweep_unclaimed_held_reversals() == 0
    assert _held_event_ids(app) == ["evt_r_young"]

    # the younger refund is still taken by its payment when it comes: no month for it
    now = clock.now()
    paid = _invoice(billing, "evt_paid", charge="ch_young", start=now - timedelta(minutes=5),
                    end=now + 30 * DAY, created=now - timedelta(minutes=5))
    assert _outcome(billing, client, paid) == "refunded"
    assert billing.subscription(client, headers)["tier"] == "starter"
    assert [e["details"]["provider_event_id"] for e in billing.events_of(EMAIL, "refunded")] \
        == ["evt_r_young"]
    assert _held_event_ids(app) == []


def test_the_held_refunds_retention_is_a_setting(stripe_app, billing):
    """``HELD_REVERSAL_RETENTION_DAYS`` sets how long a held refund is kept; below a day it is
    refused at start."""
    from config import ConfigError, load_config, validate_config
    from sonicus.services.subscriptions.held_sweep import sweep_unclaimed_held_reversals

    app, _ = stripe_app
    client = app.test_client()
    assert _outcome(billing, client, _refund("evt_r1", "ch_1")) == "held_for_its_payment"
    _received_days_ago(app, "evt_r1", 8)
    app.config["HELD_REVERSAL_RETENTION_DAYS"] = 10
    with app.app_context():
        assert sweep_unclaimed_held_reversals() == 0
    app.config["HELD_REVERSAL_RETENTION_DAYS"] = 7
    with app.app_context():
        assert sweep_unclaimed_held_reversals() == 1
    assert _held_event_ids(app) == []
    assert load_config({})["HELD_REVERSAL_RETENTION_DAYS"] == 90
    with pytest.raises(ConfigError, match="HELD_REVERSAL_RETENTION_DAYS"):
        validate_config({**load_config({}), "HELD_REVERSAL_RETENTION_DAYS": 0})
