"""The subscription row: read it (never writing), lock it (creating the starter default), and
show it as the API does.

One row per user in ``user_subscriptions``; every change locks it first (``SELECT ... FOR
UPDATE``), so API calls, webhooks and the expiry job serialise on it.
"""

from __future__ import annotations

from datetime import datetime

from flask import current_app
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from ...extensions import db
from ...models import SubscriptionEvent, User, UserSubscription
from ...models.subscription import ACTIVE, INCOMPLETE
from ...tiers import STARTER, get_tier
from .. import quota
from .common import GRACE_PERIOD, cents_to_decimal


def get_subscription(user: User) -> UserSubscription:
    """The user's subscription for reading; never writes. A user without a row (yet) is on
    the starter tier: a transient default is returned, not added to the session."""
    if user.subscription is not None:  # joined-loaded with the user
        return user.subscription
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == user.id)
    ).scalar_one_or_none()
    return sub if sub is not None else _default_subscription(user.id)


def _default_subscription(user_id: int) -> UserSubscription:
    return UserSubscription(user_id=user_id, tier=STARTER, status=ACTIVE, trial_used=False,
                            cancel_at_period_end=False, payment_method_on_file=False,
                            complimentary=False)


def lock_or_create_subscription(user_id: int) -> UserSubscription:
    """The user's subscription row, locked until the transaction ends, freshly read.

    A missing row is inserted first as the starter default (a concurrent insert of the same
    row is a no-op), inside the caller's transaction: nothing is committed here.
    """
    stmt = (select(UserSubscription).where(UserSubscription.user_id == user_id)
            .with_for_update().execution_options(populate_existing=True))
    sub = db.session.execute(stmt).scalar_one_or_none()
    if sub is None:
        _insert_default_row(user_id)
        sub = db.session.execute(stmt).scalar_one()
    return sub


def _insert_default_row(user_id: int) -> None:
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UserSubscription).values(user_id=user_id, tier=STARTER, status=ACTIVE)
    db.session.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))


def onboarding(user: User, sub: UserSubscription) -> dict:
    tier_chosen = sub.tier_chosen_at is not None
    payment_pending = sub.status == INCOMPLETE
    return {
        "email_verified": bool(user.email_verified),
        "tier_chosen": tier_chosen,
        "payment_pending": payment_pending,
        "completed": tier_chosen and bool(user.email_verified) and not payment_pending,
    }


def _checkout_view(sub: UserSubscription) -> dict | None:
    if not sub.checkout_reference:
        return None
    return {"provider": sub.provider or current_app.config["BILLING_PROVIDER"],
            "reference": sub.checkout_reference, "url": sub.checkout_url,
            "tier": sub.checkout_tier,
            "amount": cents_to_decimal(get_tier(sub.checkout_tier).price_cents)}


def describe(user: User, sub: UserSubscription | None = None, now: datetime | None = None) -> dict:
    """The subscription as the API shows it (``SubscriptionSchema``), with today's usage."""
    sub = sub or get_subscription(user)
    tier = get_tier(sub.tier)
    return {
        "tier": sub.tier, "status": sub.status, "price": tier.price,
        "trial_ends_at": sub.trial_ends_at, "trial_used": sub.trial_used,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end, "pending_tier": sub.pending_tier,
        "past_due_since": sub.past_due_since,
        "grace_ends_at": sub.past_due_since + GRACE_PERIOD if sub.past_due_since else None,
        "payment_method_on_file": sub.payment_method_on_file,
        "complimentary": sub.complimentary, "checkout": _checkout_view(sub),
        "limits": tier.limits, "usage": quota.usage_today(user, sub.tier, now),
        "onboarding": onboarding(user, sub),
    }


def history_query(user: User):
    """The caller's subscription events, newest first (a select for ``paginate``)."""
    return (select(SubscriptionEvent).where(SubscriptionEvent.user_id == user.id)
            .order_by(SubscriptionEvent.at.desc(), SubscriptionEvent.id.desc()))


def event_view(event: SubscriptionEvent) -> dict:
    return {"id": event.id, "type": event.type, "from_tier": event.from_tier,
            "to_tier": event.to_tier, "at": event.at,
            "amount": cents_to_decimal(event.amount_cents), "currency": event.currency,
            "reference": event.reference, "details": event.details or {}}
