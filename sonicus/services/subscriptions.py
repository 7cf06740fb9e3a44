"""Subscriptions: the tier in force, its lifecycle, and onboarding."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import User, UserSubscription
from ..models.subscription import INCOMPLETE


def get_subscription(user: User) -> UserSubscription:
    if user.subscription is not None:  # joined-loaded with the user
        return user.subscription
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == user.id)
    ).scalar_one_or_none()
    if sub is None:
        sub = UserSubscription(user_id=user.id, tier="starter", status="active")
        db.session.add(sub)
        db.session.commit()
    return sub


def onboarding(user: User, sub: UserSubscription) -> dict:
    tier_chosen = sub.tier_chosen_at is not None
    payment_pending = sub.status == INCOMPLETE
    return {
        "email_verified": bool(user.email_verified),
        "tier_chosen": tier_chosen,
        "payment_pending": payment_pending,
        "completed": tier_chosen and bool(user.email_verified) and not payment_pending,
    }
