"""Operator actions on users (admin API and CLI)."""

from __future__ import annotations

from ..extensions import db
from ..models import SubscriptionEvent, User
from ..models.base import utcnow
from ..tiers import TIERS
from .subscriptions import get_subscription


def grant_tier_from_cli(user: User, tier: str, actor_label: str = "cli") -> None:
    """A complimentary tier, recorded as an event."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")
    sub = get_subscription(user)
    if sub.tier == tier and sub.status == "active":
        return
    before = sub.tier
    sub.tier, sub.status, sub.complimentary = tier, "active", tier != "starter"
    sub.tier_chosen_at = sub.tier_chosen_at or utcnow()
    sub.cancel_at_period_end, sub.pending_tier = False, None
    db.session.add(SubscriptionEvent(user_id=user.id, type="complimentary_grant",
                                     from_tier=before, to_tier=tier, amount_cents=0,
                                     details={"by": actor_label}))
    db.session.commit()
