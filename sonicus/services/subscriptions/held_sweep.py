"""Refunds and disputes held for a payment whose notice never came (``refunds.hold_reversal``)
are removed after ``HELD_REVERSAL_RETENTION_DAYS`` (hourly periodic job, ``tasks.schedule``).

A payment's notice comes within the provider's retries (Stripe: up to 3 days), so a refund
held far longer is of a payment this platform will never hear of (a charge made in the
provider's dashboard, another product's customer): nothing will take it. Removed, a payment
notified after all would grant its period as if never refunded.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, select

from ... import clock
from ...extensions import db
from ...models import HeldReversal

log = logging.getLogger(__name__)

SWEEP_BATCH = 500


def sweep_unclaimed_held_reversals(now: datetime | None = None) -> int:
    """Delete held refunds and disputes received more than the retention ago; returns how
    many went. Safe to run twice or at once (a row already gone is not counted)."""
    now = now or clock.now()
    cutoff = now - timedelta(days=current_app.config["HELD_REVERSAL_RETENTION_DAYS"])
    swept = 0
    while True:
        batch = select(HeldReversal.id).where(HeldReversal.received_at < cutoff) \
            .order_by(HeldReversal.id).limit(SWEEP_BATCH)
        count = db.session.execute(
            delete(HeldReversal).where(HeldReversal.id.in_(batch.scalar_subquery()))
            .execution_options(synchronize_session=False)).rowcount
        db.session.commit()
        swept += count
        if count < SWEEP_BATCH:
            break
    if swept:
        log.info("swept %d held refunds and disputes no payment took", swept)
    return swept
