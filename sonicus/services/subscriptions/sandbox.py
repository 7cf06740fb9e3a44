"""The sandbox provider's payment page: the checkout it shows, its "pay" (the same path as a
payment-succeeded webhook, claimed exactly once like one: ``webhooks``) and its "cancel" (the
checkout dropped)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ... import clock
from ...api_errors import fail
from ...extensions import db
from ...models import SubscriptionEvent, UserSubscription
from ...models.subscription import TRIALING
from ...tiers import get_tier
from ..transaction import unit_of_work
from .common import _drop_checkout
from .expiry import apply_due_deadlines
from .payments import Payment, apply_payment_succeeded
from .webhooks import _claim_event, _Replay


def confirm_sandbox_checkout(reference: str, now: datetime | None = None) -> dict:
    """The sandbox's payment page said yes: the same path as a payment-succeeded webhook,
    which acts on the subscription in force: a trial's, a grace's or a period's end that has
    passed is applied first, under the same lock, as the expiry job would (one that ended
    the checkout, as a trial's end does, leaves nothing to pay: 404, as after the job)."""
    now = now or clock.now()
    event_id = f"sandbox_confirm_{reference}"
    try:
        with unit_of_work() as work:
            record = _claim_event("sandbox", event_id, "sandbox.checkout.confirmed",
                                  {"reference": reference})
            if record is None:
                raise _Replay
            sub = _lock_checkout(reference)
            if sub is None or sub.provider != "sandbox":
                fail(404, "not_found", "Checkout not found.")  # rolls back the claim
            apply_due_deadlines(sub, now)
            if sub.checkout_reference != reference:
                fail(404, "not_found", "Checkout not found.")  # ended by the deadline
            work.changed_user(sub.user_id)
            amount = 0 if sub.status == TRIALING else get_tier(sub.checkout_tier).price_cents
            # the sandbox's customer, as a provider's checkout creates one (the billing portal
            # is for customers)
            customer = sub.provider_customer_id or f"cus_sandbox_{sub.user_id}"
            outcome = apply_payment_succeeded(sub, Payment(
                provider="sandbox", created=now, tier=sub.checkout_tier, amount_cents=amount,
                reference=reference, customer_id=customer, event_id=event_id), now)
            record.processed_at = now
    except _Replay:
        return {"reference": reference, "outcome": "duplicate", "duplicate": True}
    return {"reference": reference, "outcome": outcome, "duplicate": False}


def _lock_checkout(reference: str) -> UserSubscription | None:
    return db.session.execute(
        select(UserSubscription).where(UserSubscription.checkout_reference == reference)
        .with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()


@dataclass(frozen=True)
class SandboxCheckout:
    """A pending sandbox checkout as its payment page shows it."""

    reference: str
    tier: str
    amount_cents: int
    trial_ends_at: datetime | None
    success_url: str | None
    cancel_url: str | None


def sandbox_checkout(reference: str) -> SandboxCheckout | None:
    """The sandbox checkout waiting for payment under ``reference``; None when there is none
    (never created, paid, abandoned or replaced)."""
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.checkout_reference == reference)
    ).scalar_one_or_none()
    if sub is None or sub.provider != "sandbox" or not sub.checkout_tier:
        return None
    trial = sub.status == TRIALING
    return SandboxCheckout(reference, sub.checkout_tier,
                           0 if trial else get_tier(sub.checkout_tier).price_cents,
                           sub.trial_ends_at if trial else None,
                           sub.checkout_success_url, sub.checkout_cancel_url)


def abandon_sandbox_checkout(reference: str, now: datetime | None = None) -> str | None:
    """The sandbox's payment page said no: the checkout is dropped (an ``incomplete`` starter
    is ``active`` again; a trial goes on without a payment method), as abandoning it through
    ``DELETE /api/user/subscription`` does. Returns the checkout's ``cancel_url``; 404 when
    no such checkout is pending."""
    now = now or clock.now()
    with unit_of_work() as work:
        sub = _lock_checkout(reference)
        if sub is None or sub.provider != "sandbox":
            fail(404, "not_found", "Checkout not found.")
        work.changed_user(sub.user_id)
        cancel_url = sub.checkout_cancel_url
        _drop_checkout(sub, now, via="checkout_page")
    return cancel_url


def sandbox_checkout_state(reference: str) -> str | None:
    """What became of the checkout ``reference``, as recorded (its result page says this, not
    what its link says): ``pending`` (waiting for payment), ``canceled`` (abandoned, replaced
    or ended before it was paid), ``paid`` (a payment of it was recorded), ``closed`` (paid,
    but the payment granted nothing new); None for a reference never given out."""
    types = set(db.session.execute(
        select(SubscriptionEvent.type).where(SubscriptionEvent.reference == reference)
    ).scalars())
    if "checkout_abandoned" in types:
        return "canceled"
    pending = db.session.execute(
        select(UserSubscription.id).where(UserSubscription.checkout_reference == reference)
    ).first()
    if pending is not None:
        return "pending"
    if types - {"checkout_started"}:
        return "paid"
    return "closed" if types else None
