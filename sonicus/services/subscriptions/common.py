"""What every part of the subscription lifecycle shares: deadlines, money, the event log and
the small state transitions of a LOCKED row."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from decimal import Decimal

from sqlalchemy import select

from ... import clock
from ...billing import get_provider
from ...extensions import db
from ...models import SubscriptionEvent, UserSubscription
from ...models.subscription import ACTIVE, INCOMPLETE, PAST_DUE, TRIALING
from ...tiers import STARTER, TIERS, is_upgrade

GRACE_PERIOD = timedelta(days=3)
# Two payments whose periods start within this much of each other are for the same period.
SAME_PERIOD_SLACK = timedelta(hours=1)
PAYMENT_EVENT_TYPES = ("activated", "renewed", "trial_converted", "upgraded")
# A payment of a checkout dropped here, refunded and its provider subscription canceled.
CHECKOUT_REFUNDED = "checkout_refunded"


def cents_to_decimal(cents: int | None) -> Decimal | None:
    return None if cents is None else Decimal(cents) / 100


def add_month(moment: datetime, day: int | None = None) -> datetime:
    """The same time next month, on the same day (or on ``day``), clamped to the month's last
    day."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(day or moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def following_period_end(start: datetime | None, end: datetime) -> datetime:
    """The end of the monthly period that follows ``start`` to ``end``: a month after ``end``
    on the period's own day of the month, as a provider's billing anchor keeps it. A period
    cut to a short month's last day (January 31 to February 28) goes back to its day after
    it (March 31), instead of renewing on the 28th for good."""
    day = end.day
    if start is not None and start.day > end.day and add_month(start) == end:
        day = start.day
    return add_month(end, day)


def _record(sub: UserSubscription, type_: str, from_tier: str | None, to_tier: str | None, *,
            amount_cents: int | None = None, reference: str | None = None,
            at: datetime | None = None, **details) -> SubscriptionEvent:
    event = SubscriptionEvent(user_id=sub.user_id, type=type_, from_tier=from_tier,
                              to_tier=to_tier, amount_cents=amount_cents, reference=reference,
                              at=at or clock.now(),
                              details={k: v for k, v in details.items() if v is not None})
    db.session.add(event)
    return event


def _latest_payment_created(user_id: int) -> datetime | None:
    """When the provider created the newest payment we applied (for out-of-order events)."""
    events = db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == user_id,
                                        SubscriptionEvent.type.in_(PAYMENT_EVENT_TYPES))
        .order_by(SubscriptionEvent.id.desc()).limit(5)).scalars()
    stamps = [e.details.get("provider_created") for e in events if e.details]
    stamps = [s for s in stamps if isinstance(s, str)]
    latest = max((datetime.fromisoformat(s) for s in stamps), default=None)
    # providers stamp events in whole seconds
    return None if latest is None else latest.replace(microsecond=0)


def _provider_told(sub: UserSubscription, now: datetime) -> None:
    """We just changed the provider's subscription: provider events created before this
    (whole seconds, as providers stamp them) are older than the state kept here."""
    if sub.provider_subscription_id:
        _note_provider_state(sub, now.replace(microsecond=0))


def _note_provider_state(sub: UserSubscription, moment: datetime) -> None:
    if sub.provider_state_at is None or moment > sub.provider_state_at:
        sub.provider_state_at = moment


def _older_than_provider_state(sub: UserSubscription, created: datetime) -> bool:
    """The provider created this before the state kept here (out of order: stale)."""
    return sub.provider_state_at is not None and created < sub.provider_state_at


def _of_another_subscription(sub: UserSubscription, notice) -> bool:
    """The provider's notice is about another provider subscription of this user than the one
    running (an older one, or one of a checkout given up and refunded): it changes nothing
    here."""
    if not notice.subscription_id or notice.subscription_id == sub.provider_subscription_id:
        return False
    if sub.tier != STARTER and sub.provider_subscription_id:
        return True
    return _refunded_here(sub.user_id, notice.subscription_id)


def _refunded_here(user_id: int, subscription_id: str) -> bool:
    """The provider subscription was a given-up checkout's, canceled and refunded here."""
    return db.session.execute(
        select(SubscriptionEvent.id).where(SubscriptionEvent.user_id == user_id,
                                           SubscriptionEvent.type == CHECKOUT_REFUNDED,
                                           SubscriptionEvent.reference == subscription_id)
        .limit(1)).first() is not None


def ended_by_a_grant(sub: UserSubscription) -> bool:
    """The row's provider subscription was canceled at once by a grant, and the provider
    confirmed it (``grants.grant_tier``: that grant's event is referenced by the provider
    subscription's id). It charges nothing any more: it is never asked to cancel again (by
    a later grant, or an erasure)."""
    return ended_by_a_grant_id(sub.user_id, sub.provider_subscription_id)


def ended_by_a_grant_id(user_id: int, subscription_id: str | None) -> bool:
    """The provider subscription ``subscription_id`` of the user was canceled at once by a
    grant, and the provider confirmed it (``ended_by_a_grant``)."""
    return bool(subscription_id) and db.session.execute(
        select(SubscriptionEvent.id).where(SubscriptionEvent.user_id == user_id,
                                           SubscriptionEvent.type == "complimentary_grant",
                                           SubscriptionEvent.reference == subscription_id)
        .limit(1)).first() is not None


def _provider_renews_below(sub: UserSubscription) -> str | None:
    """The tier below the one in force that the provider's subscription renews at once the
    cancel in force is undone: a cancel made in the billing portal after a downgrade asked
    here leaves the provider on the lower tier's price (the ``provider_tier`` of its
    ``cancel_scheduled``, ``provider_updates``). None otherwise (a cancel made here puts the
    provider back on the tier in force first; a trial or a grant renews nothing here)."""
    if not sub.cancel_at_period_end or sub.complimentary or sub.status == TRIALING \
            or sub.current_period_end is None:
        return None
    event = db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == sub.user_id,
                                        SubscriptionEvent.type == "cancel_scheduled")
        .order_by(SubscriptionEvent.id.desc()).limit(1)).scalar_one_or_none()
    tier = (event.details or {}).get("provider_tier") if event is not None else None
    return tier if tier in TIERS and is_upgrade(tier, sub.tier) else None


def _clear_checkout(sub: UserSubscription) -> None:
    """The pending checkout is done with (paid, or dropped by ``_drop_checkout``)."""
    sub.checkout_reference = sub.checkout_tier = sub.checkout_url = None
    sub.checkout_session_id = None
    sub.checkout_success_url = sub.checkout_cancel_url = None


def _drop_checkout(sub: UserSubscription, now: datetime, **details) -> None:
    """THE end of a pending checkout nobody paid (replaced by another, abandoned, or made
    needless by a change): the provider's checkout page is expired, so it can no longer be
    paid; the history says so (``checkout_abandoned``, by which a payment of it that raced
    the expiry is recognised and refunded); an ``incomplete`` starter is ``active`` again."""
    if not sub.checkout_reference:
        return
    get_provider(sub.provider).expire_checkout(sub.checkout_session_id)
    _record(sub, "checkout_abandoned", sub.tier, sub.checkout_tier,
            reference=sub.checkout_reference, at=now, **details)
    _clear_checkout(sub)
    if sub.status == INCOMPLETE:
        sub.status = ACTIVE


def _dropped_checkout(sub: UserSubscription, reference: str | None) -> bool:
    """``reference`` is of a checkout dropped here (``_drop_checkout``)."""
    return bool(reference) and reference != sub.checkout_reference and db.session.execute(
        select(SubscriptionEvent.id).where(SubscriptionEvent.user_id == sub.user_id,
                                           SubscriptionEvent.type == "checkout_abandoned",
                                           SubscriptionEvent.reference == reference)
        .limit(1)).first() is not None


def _clear_scheduled_change(sub: UserSubscription) -> None:
    sub.cancel_at_period_end = False
    sub.pending_tier = None


def _to_starter(sub: UserSubscription, *, provider_may_charge: bool = False) -> None:
    """Starter now. ``provider_may_charge``: the provider's subscription did not end with
    it (a grace or a wait for a renewal ran out while it may still retry or renew), so its id
    is kept: an erasure cancels it, a later payment of it is recognised."""
    sub.tier, sub.status = STARTER, ACTIVE
    sub.current_period_start = sub.current_period_end = None
    sub.past_due_since = None
    sub.complimentary = False
    if not provider_may_charge:
        sub.provider_subscription_id = None
    _clear_scheduled_change(sub)


def _has_paid_period(sub: UserSubscription) -> bool:
    return (sub.tier != STARTER and not sub.complimentary
            and sub.current_period_end is not None and sub.status in (ACTIVE, PAST_DUE))


def _paid_period_under_grant(sub) -> bool:
    """A period paid for before a grant, kept when the grant was made (``changes.grant_tier``:
    it runs out under the grant, renewed by nothing). A grant that ended the provider's
    subscription at once (a trial with a card, a failed renewal) ends the period it billed
    with it, so a complimentary row whose period is not over has one paid for. ``sub``: the
    row, or a result row with its columns."""
    return bool(sub.complimentary and sub.status == ACTIVE and sub.current_period_end is not None)


def _grant_ends_with_the_paid_period(sub) -> bool:
    """The user canceled under a grant over a period they paid for: the granted tier is kept
    until that period's end, then starter (``changes._schedule_cancel``)."""
    return bool(_paid_period_under_grant(sub) and sub.cancel_at_period_end)


def _period_deadline(sub) -> bool:
    """The row's ``current_period_end`` is a deadline the expiry job applies: a paid period's
    end (a change asked for, a renewal or a lapse), or the end of a grant canceled by the user
    at the end of the period paid for under it."""
    return _has_paid_period(sub) or _grant_ends_with_the_paid_period(sub)
