"""Subscriptions: the tier in force, its lifecycle, payments and onboarding.

One row per user in ``user_subscriptions``; every change locks it first (``SELECT ... FOR
UPDATE``), so API calls, webhooks and the expiry job serialise on it.

- ``tier`` is ALWAYS the tier in force right now: access checks read nothing else.
- ``status``: ``active``, ``trialing``, ``incomplete`` (starter, waiting for a first payment),
  ``past_due`` (a renewal failed; the tier is kept for ``GRACE_PERIOD``), ``canceled``.
- ``checkout_reference`` / ``checkout_tier`` / ``checkout_url``: a checkout waiting for payment.
- ``pending_tier`` (with ``cancel_at_period_end`` when it is starter): the change due at
  ``current_period_end`` (or at ``trial_ends_at`` during a trial).

Every change adds a ``SubscriptionEvent`` (money in integer cents).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from .. import clock
from ..envelope import fail
from ..extensions import db
from ..models import BillingEvent, SubscriptionEvent, User, UserSubscription
from ..models.subscription import ACTIVE, INCOMPLETE, PAST_DUE, TRIALING
from ..tiers import STARTER, TIERS, get_tier, is_upgrade, prorated_upgrade_cents
from . import quota

GRACE_PERIOD = timedelta(days=3)
# Two payments whose periods start within this much of each other are for the same period.
SAME_PERIOD_SLACK = timedelta(hours=1)
CANCEL_REASONS = ("too_expensive", "not_using", "missing_features", "other")
PAYMENT_EVENT_TYPES = ("activated", "renewed", "trial_converted", "upgraded")


# ---- reading ---------------------------------------------------------------------------------

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


def cents_to_decimal(cents: int | None) -> Decimal | None:
    return None if cents is None else Decimal(cents) / 100


def describe(user: User, sub: UserSubscription | None = None, now: datetime | None = None) -> dict:
    """The subscription as the API shows it (``SubscriptionSchema``), with today's usage."""
    sub = sub or get_subscription(user)
    tier = get_tier(sub.tier)
    checkout = None
    if sub.checkout_reference:
        checkout = {"provider": sub.provider or current_app.config["BILLING_PROVIDER"],
                    "reference": sub.checkout_reference, "url": sub.checkout_url,
                    "tier": sub.checkout_tier,
                    "amount": cents_to_decimal(get_tier(sub.checkout_tier).price_cents)}
    return {
        "tier": sub.tier, "status": sub.status, "price": tier.price,
        "trial_ends_at": sub.trial_ends_at, "trial_used": sub.trial_used,
        "current_period_start": sub.current_period_start,
        "current_period_end": sub.current_period_end,
        "cancel_at_period_end": sub.cancel_at_period_end, "pending_tier": sub.pending_tier,
        "past_due_since": sub.past_due_since,
        "grace_ends_at": sub.past_due_since + GRACE_PERIOD if sub.past_due_since else None,
        "payment_method_on_file": sub.payment_method_on_file,
        "complimentary": sub.complimentary, "checkout": checkout,
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


# ---- helpers ---------------------------------------------------------------------------------

def add_month(moment: datetime) -> datetime:
    """The same day and time next month (clamped to the month's last day)."""
    year, month = (moment.year + 1, 1) if moment.month == 12 else (moment.year, moment.month + 1)
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _record(sub: UserSubscription, type_: str, from_tier: str | None, to_tier: str | None, *,
            amount_cents: int | None = None, reference: str | None = None,
            at: datetime | None = None, **details) -> SubscriptionEvent:
    event = SubscriptionEvent(user_id=sub.user_id, type=type_, from_tier=from_tier,
                              to_tier=to_tier, amount_cents=amount_cents, reference=reference,
                              at=at or clock.now(),
                              details={k: v for k, v in details.items() if v is not None})
    db.session.add(event)
    return event


def _provider(name: str | None = None):
    from ..billing import get_provider

    return get_provider(name)


def _clear_checkout(sub: UserSubscription) -> None:
    sub.checkout_reference = sub.checkout_tier = sub.checkout_url = None


def _clear_scheduled_change(sub: UserSubscription) -> None:
    sub.cancel_at_period_end = False
    sub.pending_tier = None


def _to_starter(sub: UserSubscription) -> None:
    sub.tier, sub.status = STARTER, ACTIVE
    sub.current_period_start = sub.current_period_end = None
    sub.past_due_since = None
    sub.complimentary = False
    sub.provider_subscription_id = None
    _clear_scheduled_change(sub)


def _has_paid_period(sub: UserSubscription) -> bool:
    return (sub.tier != STARTER and not sub.complimentary
            and sub.current_period_end is not None and sub.status in (ACTIVE, PAST_DUE))


def _require_verified(user: User) -> None:
    if not user.email_verified:
        fail(403, "email_not_verified",
             "Verify your email address before starting a trial or paying for a tier.")


def _start_checkout(user: User, sub: UserSubscription, tier: str, now: datetime) -> str:
    from ..billing.base import new_reference

    provider = _provider()
    reference = new_reference()
    trial_end = sub.trial_ends_at if sub.status == TRIALING else None
    checkout = provider.create_checkout(user=user, sub=sub, tier=tier, reference=reference,
                                        trial_end=trial_end)
    sub.checkout_reference, sub.checkout_tier, sub.checkout_url = (
        checkout.reference, tier, checkout.url)
    sub.provider = provider.name
    if sub.tier == STARTER and sub.status == ACTIVE:
        sub.status = INCOMPLETE
    amount = 0 if sub.status == TRIALING else get_tier(tier).price_cents
    _record(sub, "checkout_started", sub.tier, tier, amount_cents=amount, reference=reference,
            at=now, provider=provider.name)
    if sub.status == TRIALING:
        return (f"Add a payment method: your trial converts to {get_tier(tier).title} "
                "when it ends.")
    return f"Complete the payment to start {get_tier(tier).title}."


# ---- the user's changes ----------------------------------------------------------------------

def change_tier(user: User, tier: str, start_trial: bool = False,
                now: datetime | None = None) -> tuple[UserSubscription, str]:
    """``POST /api/user/subscription``: choose, buy, trial, upgrade or downgrade a tier."""
    now = now or clock.now()
    target = get_tier(tier)
    if start_trial and not target.is_paid:
        fail(422, "validation_error", "Only a paid tier has a trial.",
             errors=["start_trial: Only a paid tier has a trial."])
    if target.is_paid:
        _require_verified(user)
    try:
        sub = lock_or_create_subscription(user.id)
        first_choice = sub.tier_chosen_at is None
        sub.tier_chosen_at = sub.tier_chosen_at or now
        if start_trial:
            message = _start_trial(sub, tier, now)
        elif not target.is_paid:
            message = _choose_starter(sub, now, first_choice)
        else:
            message = _choose_paid(user, sub, tier, now)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return sub, message


def _start_trial(sub: UserSubscription, tier: str, now: datetime) -> str:
    if sub.trial_used:
        fail(409, "trial_already_used", "The free trial has already been used on this account.")
    if sub.tier != STARTER:
        fail(409, "conflict", "A trial starts from the starter tier.")
    days = current_app.config["TRIAL_DAYS"]
    if days <= 0:
        fail(409, "conflict", "Free trials are not offered.")
    from_tier = sub.tier
    _clear_checkout(sub)
    _clear_scheduled_change(sub)
    sub.tier, sub.status, sub.trial_used = tier, TRIALING, True
    sub.trial_ends_at = now + timedelta(days=days)
    sub.provider = sub.provider or current_app.config["BILLING_PROVIDER"]
    _record(sub, "trial_started", from_tier, tier, amount_cents=0, at=now,
            trial_ends_at=sub.trial_ends_at.isoformat())
    return f"Your {days}-day {get_tier(tier).title} trial has started."


def _choose_starter(sub: UserSubscription, now: datetime, first_choice: bool) -> str:
    if sub.checkout_reference:
        _record(sub, "checkout_abandoned", sub.tier, sub.checkout_tier,
                reference=sub.checkout_reference, at=now)
        _clear_checkout(sub)
        if sub.status == INCOMPLETE:
            sub.status = ACTIVE
    if sub.tier == STARTER:
        if first_choice:
            _record(sub, "tier_chosen", None, STARTER, amount_cents=0, at=now)
        return "You are on the starter tier."
    return _schedule_cancel(sub, now, reason=None, comment=None, via="tier_change")


def _choose_paid(user: User, sub: UserSubscription, tier: str, now: datetime) -> str:
    title = get_tier(tier).title
    if sub.status == TRIALING:
        if sub.cancel_at_period_end or sub.pending_tier:
            _resume(sub, now)
        if tier != sub.tier:
            _record(sub, "trial_changed", sub.tier, tier, amount_cents=0, at=now)
            sub.tier = tier
        if sub.payment_method_on_file:
            _clear_checkout(sub)
            return f"Your trial continues and converts to {title} when it ends."
        return _start_checkout(user, sub, tier, now)
    if sub.tier == tier and sub.status == ACTIVE and not sub.complimentary:
        if sub.cancel_at_period_end or sub.pending_tier:
            return _resume(sub, now)
        return f"You are already on {title}."
    if _has_paid_period(sub) and sub.status == ACTIVE and sub.payment_method_on_file:
        if is_upgrade(sub.tier, tier):
            return _upgrade_now(sub, tier, now)
        return _schedule_downgrade(sub, tier, now)
    if _has_paid_period(sub) and sub.status == PAST_DUE and not is_upgrade(sub.tier, tier) \
            and sub.tier != tier:
        return _schedule_downgrade(sub, tier, now)
    return _start_checkout(user, sub, tier, now)


def _upgrade_now(sub: UserSubscription, tier: str, now: datetime) -> str:
    start = sub.current_period_start or now
    seconds_left = (sub.current_period_end - now).total_seconds()
    period_seconds = (sub.current_period_end - start).total_seconds()
    amount = prorated_upgrade_cents(sub.tier, tier, seconds_left, period_seconds)
    _provider(sub.provider).change_tier(sub, tier, prorate=True)
    _record(sub, "upgraded", sub.tier, tier, amount_cents=amount, at=now, proration=True,
            period_end=sub.current_period_end.isoformat())
    sub.tier = tier
    _clear_checkout(sub)
    _clear_scheduled_change(sub)
    return (f"Upgraded to {get_tier(tier).title} now; "
            f"{cents_to_decimal(amount)} is charged for the rest of this period.")


def _schedule_downgrade(sub: UserSubscription, tier: str, now: datetime) -> str:
    _provider(sub.provider).change_tier(sub, tier, prorate=False)
    if sub.cancel_at_period_end:
        _provider(sub.provider).set_cancel_at_period_end(sub, False)
    sub.pending_tier, sub.cancel_at_period_end = tier, False
    _clear_checkout(sub)
    _record(sub, "downgrade_scheduled", sub.tier, tier, at=now,
            effective_at=sub.current_period_end.isoformat())
    return f"You keep {get_tier(sub.tier).title} until the end of the period, then {tier}."


def _schedule_cancel(sub: UserSubscription, now: datetime, *, reason, comment, via) -> str:
    if sub.status != TRIALING and (sub.complimentary or sub.current_period_end is None):
        # nothing paid for: a complimentary or unbilled paid tier ends at once
        from_tier = sub.tier
        _to_starter(sub)
        _record(sub, "canceled", from_tier, STARTER, amount_cents=0, at=now, reason=reason,
                comment=comment, via=via)
        return "Your subscription is canceled; you are on the starter tier."
    if not sub.cancel_at_period_end:
        _provider(sub.provider).set_cancel_at_period_end(sub, True)
        sub.cancel_at_period_end, sub.pending_tier = True, STARTER
        ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
        _record(sub, "cancel_scheduled", sub.tier, STARTER, at=now, reason=reason,
                comment=comment, via=via, effective_at=ends.isoformat())
    ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
    return f"Canceled: you keep {get_tier(sub.tier).title} until {ends:%Y-%m-%d %H:%M} UTC."


def cancel(user: User, reason: str | None = None, comment: str | None = None,
           now: datetime | None = None) -> tuple[UserSubscription, str]:
    """``DELETE /api/user/subscription``: cancel at the end of the period (or trial)."""
    now = now or clock.now()
    try:
        sub = lock_or_create_subscription(user.id)
        if sub.checkout_reference and sub.status == INCOMPLETE:
            _record(sub, "checkout_abandoned", sub.tier, sub.checkout_tier,
                    reference=sub.checkout_reference, at=now, reason=reason, comment=comment)
            _clear_checkout(sub)
            sub.status = ACTIVE
            message = "The pending checkout is canceled."
        elif sub.tier == STARTER:
            fail(409, "conflict", "There is no paid subscription to cancel.")
        else:
            _clear_checkout(sub)
            message = _schedule_cancel(sub, now, reason=reason, comment=comment, via="cancel")
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return sub, message


def _resume(sub: UserSubscription, now: datetime) -> str:
    if sub.cancel_at_period_end:
        _provider(sub.provider).set_cancel_at_period_end(sub, False)
    if sub.pending_tier and sub.pending_tier != STARTER:
        _provider(sub.provider).change_tier(sub, sub.tier, prorate=False)
    _record(sub, "resumed", sub.pending_tier, sub.tier, at=now)
    _clear_scheduled_change(sub)
    return f"Resumed: {get_tier(sub.tier).title} continues."


def resume(user: User, now: datetime | None = None) -> tuple[UserSubscription, str]:
    """``POST /api/user/subscription/resume``: undo a scheduled cancel or downgrade."""
    now = now or clock.now()
    try:
        sub = lock_or_create_subscription(user.id)
        if not (sub.cancel_at_period_end or sub.pending_tier):
            fail(409, "conflict", "There is no scheduled cancellation or downgrade to undo.")
        ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
        if ends is not None and ends <= now:
            fail(409, "conflict", "The period has already ended.")
        message = _resume(sub, now)
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return sub, message


# ---- payments (webhooks, sandbox confirmation, sandbox renewals) -----------------------------

@dataclass(frozen=True)
class Payment:
    """A successful payment, whichever way it arrived."""

    provider: str
    created: datetime
    tier: str | None = None
    amount_cents: int | None = None
    reference: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    event_id: str | None = None


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


def apply_payment_succeeded(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """Activate, renew or record a payment on a LOCKED subscription; returns the outcome."""
    if payment.customer_id:
        sub.provider_customer_id = payment.customer_id
    if payment.subscription_id:
        sub.provider_subscription_id = payment.subscription_id
    sub.provider = payment.provider
    tier = payment.tier or sub.checkout_tier or (sub.tier if sub.tier != STARTER else None)
    if tier is None:
        return "ignored_unknown_tier"
    had_payment_method = sub.payment_method_on_file
    sub.payment_method_on_file = True
    reference = payment.reference or payment.event_id
    if payment.reference and payment.reference == sub.checkout_reference:
        _clear_checkout(sub)
    stamp = {"provider_created": payment.created.isoformat(), "provider": payment.provider,
             "provider_event_id": payment.event_id}

    # A trial with a payment method added: it converts at the end of the trial.
    if sub.status == TRIALING and not payment.amount_cents:
        _clear_scheduled_change(sub)
        if sub.checkout_tier == tier:
            _clear_checkout(sub)
        if tier != sub.tier:
            _record(sub, "trial_changed", sub.tier, tier, amount_cents=0, at=now)
            sub.tier = tier
        elif had_payment_method:
            return "already_recorded"
        _record(sub, "payment_method_added", sub.tier, sub.tier, amount_cents=0,
                reference=reference, at=now, **stamp)
        return "payment_method_added"

    # Already paying for this tier: the same period again, an old one, or the next one.
    if sub.tier == tier and _has_paid_period(sub):
        if payment.period_start is None:
            if sub.status == ACTIVE and sub.current_period_end > now:
                return "already_active"
        elif payment.period_start < sub.current_period_end - SAME_PERIOD_SLACK:
            # not the next period: the current one again, or an older one
            if sub.status == ACTIVE and payment.period_end \
                    and payment.period_start <= now < payment.period_end \
                    and payment.period_start <= sub.current_period_start + SAME_PERIOD_SLACK \
                    and payment.period_end > sub.current_period_start + SAME_PERIOD_SLACK:
                # the provider's exact dates for the period we activated on a checkout
                sub.current_period_start = payment.period_start
                sub.current_period_end = payment.period_end
            return "already_recorded"
        start = payment.period_start or max(now, sub.current_period_end)
        end = payment.period_end or add_month(start)
        from_status = sub.status
        sub.current_period_start, sub.current_period_end = start, end
        sub.status, sub.past_due_since = ACTIVE, None
        _record(sub, "renewed", tier, tier, amount_cents=payment.amount_cents,
                reference=reference, at=now, period_end=end.isoformat(),
                recovered_from=from_status if from_status == PAST_DUE else None, **stamp)
        return "renewed"

    if payment.period_end is not None and payment.period_end <= now:
        return "stale"  # a late payment for a period that is over: nothing to grant now

    # A new paid tier: it takes effect now.
    from_tier = sub.tier
    start = payment.period_start or now
    end = payment.period_end if payment.period_end and payment.period_end > now \
        else add_month(start)
    sub.tier, sub.status = tier, ACTIVE
    sub.current_period_start, sub.current_period_end = start, end
    sub.past_due_since, sub.complimentary = None, False
    _clear_scheduled_change(sub)
    if sub.checkout_tier == tier:
        _clear_checkout(sub)
    amount = payment.amount_cents if payment.amount_cents is not None \
        else get_tier(tier).price_cents
    _record(sub, "activated", from_tier, tier, amount_cents=amount, reference=reference,
            at=now, period_end=end.isoformat(), **stamp)
    return "activated"


def apply_payment_failed(sub: UserSubscription, failure, now: datetime) -> str:
    """A failed charge on a LOCKED subscription: ``past_due`` with a grace period."""
    if failure.period_end and sub.current_period_end and sub.status == ACTIVE \
            and failure.period_end <= sub.current_period_end:
        return "stale"  # that period is paid already (the success arrived first)
    latest = _latest_payment_created(sub.user_id)
    if latest and failure.created < latest:
        return "stale"
    amount = failure.amount_cents
    reference = failure.document_id or failure.event_id
    stamp = {"provider_created": failure.created.isoformat(),
             "provider_event_id": failure.event_id}
    if sub.tier == STARTER or sub.status == INCOMPLETE:
        _record(sub, "payment_failed", sub.tier, sub.tier, amount_cents=amount,
                reference=reference, at=now, **stamp)
        return "recorded"
    if sub.status == TRIALING:
        sub.payment_method_on_file = False
        _record(sub, "payment_failed", sub.tier, sub.tier, amount_cents=amount,
                reference=reference, at=now, **stamp)
        return "payment_method_removed"
    if sub.status == PAST_DUE:
        return "already_past_due"
    sub.status, sub.past_due_since = PAST_DUE, now
    _record(sub, "payment_failed", sub.tier, sub.tier, amount_cents=amount,
            reference=reference, at=now,
            grace_ends_at=(now + GRACE_PERIOD).isoformat(), **stamp)
    return "past_due"


def apply_subscription_ended(sub: UserSubscription, notice, now: datetime) -> str:
    """The provider ended the subscription: starter at once (it sends this only at the end)."""
    if notice.subscription_id and sub.provider_subscription_id \
            and notice.subscription_id != sub.provider_subscription_id:
        return "stale"  # an older subscription of this user
    latest = _latest_payment_created(sub.user_id)
    if latest and notice.created < latest:
        return "stale"
    if sub.status == TRIALING:
        # the card is gone with it: the trial runs out and falls back to starter
        sub.payment_method_on_file = False
        if not sub.cancel_at_period_end:
            sub.cancel_at_period_end, sub.pending_tier = True, STARTER
            _record(sub, "cancel_scheduled", sub.tier, STARTER, at=now, via="provider",
                    effective_at=sub.trial_ends_at.isoformat(),
                    provider_event_id=notice.event_id)
        return "trial_cancel_scheduled"
    if sub.tier == STARTER or sub.complimentary:
        return "nothing_to_end"
    from_tier = sub.tier
    _to_starter(sub)
    _record(sub, "canceled", from_tier, STARTER, amount_cents=0,
            reference=notice.subscription_id, at=now, via="provider",
            provider_created=notice.created.isoformat(), provider_event_id=notice.event_id)
    return "canceled"


def _find_subscription_for(notice) -> UserSubscription | None:
    """The subscription a provider event is about, locked."""
    conditions = []
    if notice.user_id:
        conditions.append(UserSubscription.user_id == notice.user_id)
    if notice.reference:
        conditions.append(UserSubscription.checkout_reference == notice.reference)
    if notice.subscription_id:
        conditions.append(UserSubscription.provider_subscription_id == notice.subscription_id)
    if notice.customer_id:
        conditions.append(UserSubscription.provider_customer_id == notice.customer_id)
    for condition in conditions:  # most specific first
        sub = db.session.execute(
            select(UserSubscription).where(condition).order_by(UserSubscription.id).limit(1)
            .with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
        if sub is not None:
            return sub
    return None


def _claim_event(provider: str, event_id: str, type_: str, payload: dict) -> BillingEvent | None:
    """Insert the event row first: the unique index decides who handles it (None: a replay)."""
    record = BillingEvent(provider=provider, event_id=event_id, type=type_, payload=payload)
    try:
        with db.session.begin_nested():
            db.session.add(record)
            db.session.flush()
    except IntegrityError:
        return None
    return record


def handle_billing_event(provider: str, event: dict, notice, now: datetime | None = None) -> dict:
    """Apply one verified webhook event exactly once; returns ``{event_id, type, outcome}``."""
    from ..billing.events import PAYMENT_FAILED, PAYMENT_SUCCEEDED, SUBSCRIPTION_ENDED

    now = now or clock.now()
    result = {"event_id": notice.event_id, "type": notice.event_type, "duplicate": False}
    try:
        record = _claim_event(provider, notice.event_id, notice.event_type, event)
        if record is None:
            db.session.rollback()
            return {**result, "duplicate": True, "outcome": "duplicate"}
        sub = _find_subscription_for(notice) \
            if notice.kind in (PAYMENT_SUCCEEDED, PAYMENT_FAILED, SUBSCRIPTION_ENDED) else None
        if notice.kind not in (PAYMENT_SUCCEEDED, PAYMENT_FAILED, SUBSCRIPTION_ENDED):
            outcome = "ignored"
        elif sub is None:
            outcome = "unknown_customer"
        elif notice.kind == PAYMENT_SUCCEEDED:
            outcome = apply_payment_succeeded(sub, Payment(
                provider=provider, created=notice.created, tier=notice.tier,
                amount_cents=notice.amount_cents, reference=notice.reference,
                period_start=notice.period_start, period_end=notice.period_end,
                customer_id=notice.customer_id, subscription_id=notice.subscription_id,
                event_id=notice.event_id), now)
        elif notice.kind == PAYMENT_FAILED:
            outcome = apply_payment_failed(sub, notice, now)
        else:
            outcome = apply_subscription_ended(sub, notice, now)
        record.processed_at = now
        record.payload = {**event, "sonicus_outcome": outcome}
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return {**result, "outcome": outcome}


def confirm_sandbox_checkout(reference: str, now: datetime | None = None) -> dict:
    """The sandbox's payment page said yes: the same path as a payment-succeeded webhook."""
    now = now or clock.now()
    event_id = f"sandbox_confirm_{reference}"
    try:
        record = _claim_event("sandbox", event_id, "sandbox.checkout.confirmed",
                              {"reference": reference})
        if record is None:
            db.session.rollback()
            return {"reference": reference, "outcome": "duplicate", "duplicate": True}
        sub = db.session.execute(
            select(UserSubscription).where(UserSubscription.checkout_reference == reference)
            .with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
        if sub is None or sub.provider != "sandbox":
            db.session.rollback()
            fail(404, "not_found", "Checkout not found.")
        tier = sub.checkout_tier
        amount = 0 if sub.status == TRIALING else get_tier(tier).price_cents
        outcome = apply_payment_succeeded(sub, Payment(
            provider="sandbox", created=now, tier=tier, amount_cents=amount,
            reference=reference, event_id=event_id), now)
        record.processed_at = now
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return {"reference": reference, "outcome": outcome, "duplicate": False}


# ---- the expiry job: trial end, grace end, period end ----------------------------------------

def _due_condition(now: datetime):
    return or_(
        and_(UserSubscription.status == TRIALING, UserSubscription.trial_ends_at <= now),
        and_(UserSubscription.status == PAST_DUE,
             UserSubscription.past_due_since <= now - GRACE_PERIOD),
        and_(UserSubscription.status.in_((ACTIVE, PAST_DUE)),
             UserSubscription.tier != STARTER,
             UserSubscription.complimentary.is_(False),
             UserSubscription.current_period_end <= now),
    )


def _advance(sub: UserSubscription, now: datetime) -> list[str]:
    """Apply every deadline that has passed on a LOCKED subscription; the outcomes."""
    outcomes: list[str] = []
    for _ in range(24):  # at most this many missed periods in one go
        step = _advance_once(sub, now)
        if step is None:
            break
        outcomes.append(step)
    return outcomes


def _advance_once(sub: UserSubscription, now: datetime) -> str | None:
    if sub.status == TRIALING and sub.trial_ends_at and sub.trial_ends_at <= now:
        ends = sub.trial_ends_at
        if sub.cancel_at_period_end or sub.pending_tier == STARTER \
                or not sub.payment_method_on_file:
            from_tier = sub.tier
            _to_starter(sub)
            _clear_checkout(sub)
            _record(sub, "trial_ended", from_tier, STARTER, amount_cents=0, at=ends,
                    reason="canceled" if sub.payment_method_on_file else "no_payment_method")
            return "trial_ended"
        tier = sub.pending_tier or sub.tier
        price = get_tier(tier).price_cents
        from_tier = sub.tier
        sub.tier, sub.status = tier, ACTIVE
        sub.current_period_start, sub.current_period_end = ends, add_month(ends)
        _clear_scheduled_change(sub)
        _record(sub, "trial_converted", from_tier, tier, amount_cents=price, at=ends,
                period_end=sub.current_period_end.isoformat(),
                provider_created=ends.isoformat())
        return "trial_converted"
    if sub.status == PAST_DUE and sub.past_due_since \
            and sub.past_due_since + GRACE_PERIOD <= now:
        # the provider's own retries may still succeed later: that payment re-activates
        from_tier, at = sub.tier, sub.past_due_since + GRACE_PERIOD
        _to_starter(sub)
        _record(sub, "grace_ended", from_tier, STARTER, amount_cents=0, at=at,
                reason="payment_failed")
        return "grace_ended"
    if sub.status in (ACTIVE, PAST_DUE) and _has_paid_period(sub) \
            and sub.current_period_end <= now:
        ends = sub.current_period_end
        if sub.cancel_at_period_end or sub.pending_tier == STARTER:
            from_tier = sub.tier
            _to_starter(sub)
            _record(sub, "canceled", from_tier, STARTER, amount_cents=0, at=ends,
                    via="period_end")
            return "canceled"
        if sub.pending_tier and sub.pending_tier in TIERS:
            from_tier, sub.tier, sub.pending_tier = sub.tier, sub.pending_tier, None
            _record(sub, "downgraded", from_tier, sub.tier, amount_cents=0, at=ends)
            return "downgraded"  # the next step renews (or lapses) the lower tier
        if sub.status != ACTIVE:
            return None  # past_due: the grace deadline decides
        if sub.provider == "sandbox" and sub.payment_method_on_file:
            # the sandbox charges the card on file itself, like a provider's renewal would
            outcome = apply_payment_succeeded(sub, Payment(
                provider="sandbox", created=ends, tier=sub.tier,
                amount_cents=get_tier(sub.tier).price_cents,
                reference=f"sandbox_renewal_{sub.user_id}_{int(ends.timestamp())}",
                period_start=ends, period_end=add_month(ends)), now)
            return outcome if outcome == "renewed" else None
        if ends + GRACE_PERIOD <= now:
            # no renewal arrived from the provider in the whole grace period
            from_tier = sub.tier
            _to_starter(sub)
            _record(sub, "lapsed", from_tier, STARTER, amount_cents=0, at=ends + GRACE_PERIOD,
                    reason="no_renewal")
            return "lapsed"
    return None


def process_due_subscriptions(now: datetime | None = None, batch_size: int = 100) -> dict:
    """Trial ends, grace ends and period ends that are due; safe to run twice or in parallel.

    Due rows are taken in id order, a batch at a time, with ``FOR UPDATE SKIP LOCKED``: rows
    another worker (or a request) holds are skipped, rows it already finished are no longer
    due when the condition is re-checked under the lock. One transaction per batch.
    """
    now = now or clock.now()
    counts: dict[str, int] = {}
    processed, last_id = 0, 0
    while True:
        try:
            batch = db.session.execute(
                select(UserSubscription)
                .where(_due_condition(now), UserSubscription.id > last_id)
                .order_by(UserSubscription.id).limit(batch_size)
                .with_for_update(skip_locked=True)
                .execution_options(populate_existing=True)).scalars().all()
            for sub in batch:
                outcomes = _advance(sub, now)
                processed += bool(outcomes)
                for outcome in outcomes:
                    counts[outcome] = counts.get(outcome, 0) + 1
            db.session.commit()
        except BaseException:
            db.session.rollback()
            raise
        if not batch:
            break
        last_id = batch[-1].id
    return {"processed": processed, "outcomes": counts, "ran_at": now}
