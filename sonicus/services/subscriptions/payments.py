"""Payments and provider notices applied to a LOCKED subscription: a successful payment
(``Payment``, whichever way it arrived: a webhook, the sandbox's checkout confirmation, the
sandbox's own renewals), a failed charge and the provider's end of a subscription. Every change
adds a ``SubscriptionEvent`` (money in integer cents).

Finding and locking the subscription, and handling each notice exactly once, is the caller's:
``webhooks`` (provider events), ``sandbox`` (the sandbox's payment page), ``expiry`` (the
sandbox's renewals)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from ...billing import get_provider
from ...extensions import db
from ...models import SubscriptionEvent, UserSubscription
from ...models.subscription import ACTIVE, INCOMPLETE, PAST_DUE, TRIALING
from ...tiers import STARTER, get_tier, is_upgrade
from .common import (
    CHECKOUT_REFUNDED,
    GRACE_PERIOD,
    SAME_PERIOD_SLACK,
    _clear_checkout,
    _clear_scheduled_change,
    _drop_checkout,
    _dropped_checkout,
    _has_paid_period,
    _latest_payment_created,
    _of_another_subscription,
    _older_than_provider_state,
    _provider_told,
    _record,
    _refunded_here,
    _to_starter,
    add_month,
    ended_by_a_grant,
    ended_by_a_grant_id,
)
from .disputes import take_held_wins
from .refunds import cancel_what_it_started, note_upgrade_payment, refunded_before_notice


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
    invoice_id: str | None = None
    charge_id: str | None = None
    payment_intent_id: str | None = None


def apply_payment_succeeded(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """Activate, renew or record a payment on a LOCKED subscription; returns the outcome.

    The cases, in the order they are checked: a checkout dropped here (replaced or given
    up) paid anyway; no tier to pay for; a card added to a trial; the tier already paid for
    (the same period, an older one or the next); the period paid before a grant over it,
    notified again; a renewal under a grant in force (it never ends the grant); a late
    payment for a period that is over; a card that paid nothing (a trial's, notified after
    the trial ended); a new paid tier.
    """
    if _dropped_checkout(sub, payment.reference) \
            and payment.subscription_id != sub.provider_subscription_id:
        return _refund_dropped_checkout(sub, payment, now)
    if _replaced_here(sub, payment.subscription_id):
        return "stale"  # a charge of a subscription canceled when another one took its place
    take_held_wins(sub, payment)  # a dispute won before this notice: it took nothing
    if refunded_before_notice(sub, payment):
        # refunded or disputed in full before its notice arrived: what it paid renews nothing
        cancel_what_it_started(sub, payment)
        return "refunded"
    _note_provider_ids(sub, payment)
    tier = _paid_tier(sub, payment)
    if tier is None:
        return "ignored_unknown_tier"
    had_payment_method = sub.payment_method_on_file
    sub.payment_method_on_file = True
    if payment.reference and payment.reference == sub.checkout_reference:
        _clear_checkout(sub)
    if sub.status == TRIALING and not payment.amount_cents:
        return _trial_card_added(sub, payment, tier, had_payment_method, now)
    if sub.tier == tier and _has_paid_period(sub):
        return _current_tier_paid(sub, payment, now)
    if _paid_before_the_grant(sub, payment):
        return "already_recorded"
    if _renewal_under_the_grant(sub, payment, tier):
        return _renewed_under_the_grant(sub, payment, tier, now)
    if _stale_for_a_new_tier(sub, payment, now):
        return "stale"
    if payment.amount_cents == 0:
        return _card_without_payment(sub, payment, now)
    return _new_paid_tier(sub, payment, tier, now)


def _card_without_payment(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """A notice that charged nothing for a tier not in force: a trial's card whose notice
    arrived after the trial ended here (without a card: starter). Nothing is paid, so no
    month is granted; the provider charges its first period at the trial's end, and that
    invoice activates the tier with what it paid."""
    _record(sub, "payment_method_added", sub.tier, sub.tier, amount_cents=0,
            reference=_reference(payment), at=now, **_stamp(payment))
    return "payment_method_added"


def _refund_dropped_checkout(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """A checkout replaced or given up here was paid before its page expired (in another
    tab, a moment before): nobody wants its subscription any more. It is canceled at the
    provider at once and what it charged refunded (both safe to repeat: each notice of it
    asks again); the subscription here is unchanged. The provider unreachable: 502 and
    nothing kept, so the provider sends the notice again."""
    get_provider(payment.provider).refund_and_cancel(payment.customer_id,
                                                     payment.subscription_id)
    if payment.subscription_id and not _refunded_here(sub.user_id, payment.subscription_id):
        _record(sub, CHECKOUT_REFUNDED, sub.tier, sub.tier, amount_cents=payment.amount_cents,
                reference=payment.subscription_id, at=now,
                checkout_reference=payment.reference, **_stamp(payment))
    return "replaced_checkout_refunded"


def _paid_before_the_grant(sub: UserSubscription, payment: Payment) -> bool:
    """A notice of the provider subscription a grant stopped that pays nothing new: another
    notice of the period paid before the grant (a checkout's completion, the invoice again),
    or one charging nothing (a trial's invoice); the grant stays."""
    if not (sub.complimentary and payment.subscription_id
            and payment.subscription_id == sub.provider_subscription_id):
        return False
    if payment.amount_cents == 0:
        return True
    return sub.current_period_end is not None and (
        payment.period_start is None
        or payment.period_start < sub.current_period_end - SAME_PERIOD_SLACK)


def _renewal_under_the_grant(sub: UserSubscription, payment: Payment, tier: str) -> bool:
    """The provider subscription a grant stopped renewing renewed all the same (a cancel
    undone in the billing portal whose notice was lost), for a tier the grant in force
    includes: a payment of the next period, not a new tier."""
    return bool(sub.complimentary and sub.status == ACTIVE and payment.subscription_id
                and payment.subscription_id == sub.provider_subscription_id
                and not is_upgrade(sub.tier, tier))


def _renewed_under_the_grant(sub: UserSubscription, payment: Payment, tier: str,
                             now: datetime) -> str:
    """A renewal never ends a grant in force (``grants.grant_tier``: nothing paid for is
    taken away, nothing given free is charged again). The period it paid runs under the
    grant, as the one paid before the grant did (kept to its end, protected from a grant
    below it), and the provider is asked again to renew nothing (502 when it cannot be
    reached: nothing kept, the notice comes again). One for a period already over only
    stays in the history of the provider's notices."""
    if payment.period_end is not None and payment.period_end <= now:
        return "stale"
    start = payment.period_start or max(now, sub.current_period_end or now)
    end = payment.period_end or add_month(start)
    if not ended_by_a_grant(sub):  # one the grant canceled at once renews nothing
        get_provider(sub.provider).set_cancel_at_period_end(sub, True)
        _provider_told(sub, now)
    sub.current_period_start, sub.current_period_end = start, end
    _record(sub, "renewed", sub.tier, sub.tier, amount_cents=payment.amount_cents,
            reference=_reference(payment), at=now, period_end=end.isoformat(),
            paid_tier=tier, complimentary=True, **_stamp(payment))
    return "renewed_under_grant"


def _stale_for_a_new_tier(sub: UserSubscription, payment: Payment, now: datetime) -> bool:
    """A late payment for a period that is over (nothing to grant now), or one made before
    the plan in force was changed at the provider."""
    if payment.period_end is not None and payment.period_end <= now:
        return True
    return _has_paid_period(sub) and _older_than_provider_state(sub, payment.created)


def _note_provider_ids(sub: UserSubscription, payment: Payment) -> None:
    """The provider's customer id, whatever the payment turns out to be; its subscription id
    when none is known yet (``_now_running`` when the payment takes effect)."""
    if payment.customer_id:
        sub.provider_customer_id = payment.customer_id
    if not sub.provider_subscription_id:
        sub.provider_subscription_id = payment.subscription_id
    sub.provider = payment.provider


def _now_running(sub: UserSubscription, payment: Payment) -> str | None:
    """The payment took effect: its provider subscription is the one running, which cancels
    and plan changes go to. A payment that changes nothing (a late one of an older
    subscription) never takes its place.

    The provider subscription it takes the place of (one kept after a failed renewal's grace
    or a lapse, which the provider may still retry or renew; a trial's with a card) is
    canceled at the provider at once, so the user never has two subscriptions charging: its
    id is returned, for the event to name (``_replaced_here``). The provider unreachable:
    502 and nothing kept, the notice comes again."""
    old = sub.provider_subscription_id
    if not payment.subscription_id or old == payment.subscription_id:
        return None
    sub.provider_subscription_id = payment.subscription_id
    if not old or ended_by_a_grant_id(sub.user_id, old) or _refunded_here(sub.user_id, old):
        return None  # nothing, or one ended already
    get_provider(sub.provider).cancel_now(sub.provider_customer_id, old)
    return old


def _replaced_here(sub: UserSubscription, subscription_id: str | None) -> bool:
    """``subscription_id`` is of a provider subscription canceled here when another one's
    payment took its place (``_now_running``): a late charge of it changes nothing."""
    if not subscription_id or subscription_id == sub.provider_subscription_id:
        return False
    return db.session.execute(
        select(SubscriptionEvent.id).where(
            SubscriptionEvent.user_id == sub.user_id,
            SubscriptionEvent.type.in_(("activated", "renewed", "payment_method_added")),
            SubscriptionEvent.details["replaced_subscription"].as_string()
            == subscription_id).limit(1)).first() is not None


def _paid_tier(sub: UserSubscription, payment: Payment) -> str | None:
    """The tier paid for: the payment's, else the checkout's, else the paid tier in force."""
    return payment.tier or sub.checkout_tier or (sub.tier if sub.tier != STARTER else None)


def _reference(payment: Payment) -> str | None:
    """What the recorded event is referenced by: our checkout reference, else the event id."""
    return payment.reference or payment.event_id


def _stamp(payment: Payment) -> dict:
    """The provider's marks on the recorded event (``provider_created`` orders payments)."""
    return {"provider_created": payment.created.isoformat(), "provider": payment.provider,
            "provider_event_id": payment.event_id, "invoice_id": payment.invoice_id,
            "charge_id": payment.charge_id, "payment_intent_id": payment.payment_intent_id}


def _trial_card_added(sub: UserSubscription, payment: Payment, tier: str,
                      had_payment_method: bool, now: datetime) -> str:
    """A trial with a payment method added: it converts at the end of the trial."""
    _clear_scheduled_change(sub)
    if sub.checkout_tier == tier:
        _clear_checkout(sub)
    if tier != sub.tier:
        _record(sub, "trial_changed", sub.tier, tier, amount_cents=0, at=now)
        sub.tier = tier
    elif had_payment_method:
        return "already_recorded"
    replaced = _now_running(sub, payment)
    _record(sub, "payment_method_added", sub.tier, sub.tier, amount_cents=0,
            reference=_reference(payment), at=now, replaced_subscription=replaced,
            **_stamp(payment))
    return "payment_method_added"


def _current_tier_paid(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """Already paying for this tier: the same period again, an older one, or the next one."""
    if payment.period_start is None:
        if sub.status == ACTIVE and sub.current_period_end > now:
            return "already_active"
    elif payment.period_start < sub.current_period_end - SAME_PERIOD_SLACK:
        # not the next period: the current one again, an older one, or an upgrade's difference
        _provider_period_dates(sub, payment, now)
        note_upgrade_payment(sub, payment)
        return "already_recorded"
    return _renewal_of_current_tier(sub, payment, now)


def _provider_period_dates(sub: UserSubscription, payment: Payment, now: datetime) -> None:
    """The provider's exact dates for the period we activated on a checkout: taken when the
    payment is for the running period in force."""
    if sub.status == ACTIVE and payment.period_end \
            and payment.period_start <= now < payment.period_end \
            and payment.period_start <= sub.current_period_start + SAME_PERIOD_SLACK \
            and payment.period_end > sub.current_period_start + SAME_PERIOD_SLACK:
        sub.current_period_start = payment.period_start
        sub.current_period_end = payment.period_end


def _renewal_of_current_tier(sub: UserSubscription, payment: Payment, now: datetime) -> str:
    """The next period of the tier in force; a past-due subscription recovers with it."""
    tier, from_status = sub.tier, sub.status
    start = payment.period_start or max(now, sub.current_period_end)
    end = payment.period_end or add_month(start)
    sub.current_period_start, sub.current_period_end = start, end
    sub.status, sub.past_due_since = ACTIVE, None
    replaced = _now_running(sub, payment)
    _record(sub, "renewed", tier, tier, amount_cents=payment.amount_cents,
            reference=_reference(payment), at=now, period_end=end.isoformat(),
            recovered_from=from_status if from_status == PAST_DUE else None,
            replaced_subscription=replaced, **_stamp(payment))
    return "renewed"


def _new_paid_tier(sub: UserSubscription, payment: Payment, tier: str, now: datetime) -> str:
    """A new paid tier: it takes effect now, for the provider's period while that runs."""
    from_tier = sub.tier
    start = payment.period_start or now
    end = payment.period_end if payment.period_end and payment.period_end > now \
        else add_month(start)
    sub.tier, sub.status = tier, ACTIVE
    sub.current_period_start, sub.current_period_end = start, end
    sub.past_due_since, sub.complimentary = None, False
    replaced = _now_running(sub, payment)
    _clear_scheduled_change(sub)
    if payment.reference and sub.checkout_reference:
        # another checkout's subscription pays (e.g. an old one's retry succeeded): the one
        # still open can no longer be paid, so it cannot start a second subscription
        _drop_checkout(sub, now, via="paid_otherwise")
    elif sub.checkout_tier == tier:
        _clear_checkout(sub)
    amount = payment.amount_cents if payment.amount_cents is not None \
        else get_tier(tier).price_cents
    _record(sub, "activated", from_tier, tier, amount_cents=amount,
            reference=_reference(payment), at=now, period_end=end.isoformat(),
            replaced_subscription=replaced, **_stamp(payment))
    return "activated"


def _older_than_latest_payment(sub: UserSubscription, created: datetime) -> bool:
    """The provider created this before the newest payment we applied (out of order)."""
    latest = _latest_payment_created(sub.user_id)
    return bool(latest and created < latest)


def apply_payment_failed(sub: UserSubscription, failure, now: datetime) -> str:
    """A failed charge on a LOCKED subscription: ``past_due`` with a grace period."""
    if _of_another_subscription(sub, failure):
        return "stale"  # a charge of an older subscription of this user
    if failure.period_end and sub.current_period_end and sub.status == ACTIVE \
            and failure.period_end <= sub.current_period_end:
        return "stale"  # that period is paid already (the success arrived first)
    if _older_than_latest_payment(sub, failure.created):
        return "stale"
    if sub.tier == STARTER or sub.status == INCOMPLETE or sub.complimentary:
        _record_failure(sub, failure, now)  # nothing in force depends on this charge
        return "recorded"
    if sub.status == TRIALING:
        sub.payment_method_on_file = False
        _record_failure(sub, failure, now)
        return "payment_method_removed"
    if sub.status == PAST_DUE:
        return "already_past_due"
    # the grace runs from the failed charge, not from its notice (late by days when the
    # provider could not deliver it): a notice never lengthens it
    since = min(now, failure.created)
    sub.status, sub.past_due_since = PAST_DUE, since
    _record_failure(sub, failure, now, grace_ends_at=(since + GRACE_PERIOD).isoformat())
    return "past_due"


def _record_failure(sub: UserSubscription, failure, now: datetime, **details) -> None:
    _record(sub, "payment_failed", sub.tier, sub.tier, amount_cents=failure.amount_cents,
            reference=failure.document_id or failure.event_id, at=now, **details,
            provider_created=failure.created.isoformat(), provider_event_id=failure.event_id)


def apply_subscription_ended(sub: UserSubscription, notice, now: datetime) -> str:
    """The provider ended the subscription: starter at once (it sends this only at the end)."""
    if _of_another_subscription(sub, notice):
        return "stale"  # an older subscription of this user
    if _older_than_latest_payment(sub, notice.created):
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
