"""Refunds and disputes of a payment (``charge.refunded``, ``charge.dispute.created``) applied
to a LOCKED subscription.

A full refund, or a dispute, of the charge that paid the period in force ends the paid access
it bought: starter now, the provider's subscription canceled (it renews nothing more; the
provider unreachable: 502 and nothing kept, the notice comes again), a ``refunded`` or
``disputed`` event in the history. A partial refund changes nothing but is recorded. A refund
of an older period's charge (or of a charge ended before) is recorded and ends nothing.

Which period a charge paid: the payment event recorded with the same charge, payment intent
or invoice id (``payments._stamp``); else the charge's creation time (one made after the
period in force began paid it; one made after it ended paid the next period, whose notice has
not arrived: that payment, when it does, grants nothing, ``refunded_before_notice``).
Replays are the event id's (``webhooks``); another notice of the same refund (the same amount
refunded) or of a charge whose access was ended already ends nothing again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import or_, select

from ...billing import get_provider
from ...billing.events import CHARGE_DISPUTED
from ...extensions import db
from ...models import SubscriptionEvent, UserSubscription
from ...tiers import STARTER
from .common import SAME_PERIOD_SLACK, _has_paid_period, _record, _to_starter

PAID_EVENT_TYPES = ("activated", "renewed")
REVERSAL_EVENT_TYPES = ("refunded", "disputed")
_ID_KEYS = ("charge_id", "payment_intent_id", "invoice_id")


def _ids(source) -> list[tuple[str, str]]:
    return [(key, getattr(source, key)) for key in _ID_KEYS if getattr(source, key, None)]


def _matching(ids: list[tuple[str, str]]):
    return or_(*(SubscriptionEvent.details[key].as_string() == value for key, value in ids))


def user_of_payment(notice) -> int | None:
    """The user whose recorded payment a refund or dispute names (a dispute names only its
    charge)."""
    ids = _ids(notice)
    if not ids:
        return None
    return db.session.execute(
        select(SubscriptionEvent.user_id).where(SubscriptionEvent.type.in_(PAID_EVENT_TYPES),
                                                _matching(ids))
        .order_by(SubscriptionEvent.id.desc()).limit(1)).scalar_one_or_none()


def _paid_event(user_id: int, ids) -> SubscriptionEvent | None:
    if not ids:
        return None
    return db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == user_id,
                                        SubscriptionEvent.type.in_(PAID_EVENT_TYPES),
                                        _matching(ids))
        .order_by(SubscriptionEvent.id.desc()).limit(1)).scalar_one_or_none()


def _reversals(user_id: int, ids) -> list[SubscriptionEvent]:
    if not ids:
        return []
    return list(db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == user_id,
                                        SubscriptionEvent.type.in_(REVERSAL_EVENT_TYPES),
                                        _matching(ids))).scalars())


def refunded_before_notice(sub: UserSubscription, payment) -> bool:
    """The payment was refunded in full or disputed before (or since) its own notice: it
    grants nothing (no paid month for money given back)."""
    return any((e.details or {}).get("full") for e in _reversals(sub.user_id, _ids(payment)))


def _same_moment(iso: str | None, moment: datetime | None) -> bool:
    if not iso or moment is None:
        return False
    return abs(datetime.fromisoformat(iso) - moment) <= SAME_PERIOD_SLACK


def _which_period(sub: UserSubscription, notice, paid: SubscriptionEvent | None) -> str:
    """``current`` (the charge paid the period in force), ``next`` (a payment not notified
    yet) or ``older``."""
    if not _has_paid_period(sub):
        return "older"
    if paid is not None:
        return "current" if _same_moment((paid.details or {}).get("period_end"),
                                         sub.current_period_end) else "older"
    if notice.charged_at is None:
        return "older"
    if notice.charged_at >= sub.current_period_end - SAME_PERIOD_SLACK:
        return "next"
    if notice.charged_at >= sub.current_period_start - SAME_PERIOD_SLACK:
        return "current"
    return "older"


def apply_charge_reversed(sub: UserSubscription, notice, now: datetime) -> str:
    """A refund or a dispute of a charge of this user (see the module docstring)."""
    type_ = "disputed" if notice.kind == CHARGE_DISPUTED else "refunded"
    full = notice.kind == CHARGE_DISPUTED or (
        notice.refunded_cents is not None and notice.amount_cents is not None
        and notice.refunded_cents >= notice.amount_cents)
    paid = _paid_event(sub.user_id, _ids(notice))
    # the payment's own ids too: a later notice of it (its checkout, its invoice) is matched
    ids = dict(_ids(notice))
    for key in _ID_KEYS:
        ids.setdefault(key, (paid.details or {}).get(key) if paid is not None else None)
    earlier = _reversals(sub.user_id, _ids(notice))
    if any(e.type == type_ and (e.details or {}).get("refunded_cents") == notice.refunded_cents
           for e in earlier):
        return "already_recorded"
    ended_before = any((e.details or {}).get("ended_access") for e in earlier)
    period = _which_period(sub, notice, paid)
    ends = full and period == "current" and not ended_before
    from_tier = sub.tier
    if ends:
        get_provider(sub.provider).cancel_now(sub.provider_customer_id,
                                              sub.provider_subscription_id)
        _to_starter(sub)
    _record(sub, type_, from_tier, sub.tier, amount_cents=notice.refunded_cents
            if type_ == "refunded" else notice.amount_cents,
            reference=notice.charge_id or notice.event_id, at=now, full=full,
            ended_access=ends or None, period=period, refunded_cents=notice.refunded_cents,
            provider_created=notice.created.isoformat(), provider_event_id=notice.event_id,
            **ids)
    if ends:
        return "access_ended"
    return "recorded" if sub.tier == STARTER or not full else f"recorded_{period}_period"
