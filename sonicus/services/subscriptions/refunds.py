"""Refunds and disputes of a payment (``charge.refunded``, ``charge.dispute.created``) applied
to a LOCKED subscription.

A full refund, or a dispute, of the charge that paid the period in force ends the paid access
it bought: starter now, the provider's subscription canceled (it renews nothing more; the
provider unreachable: 502 and nothing kept, the notice comes again), a ``refunded`` or
``disputed`` event in the history. A partial refund changes nothing but is recorded. Each
refund's event shows the money it gave back (``_given_back``), not the provider's running
total for the charge, whatever order its notices arrive in: its own amount as the notice
says it (``billing.refund_amounts``), else counted from the refunds recorded before. A refund
of an older period's charge (or of a charge ended before) is recorded and ends nothing.

Which period a charge paid: the payment event recorded with the same charge, payment intent
or invoice id (``payments._stamp``; an upgrade's charge is noted on its ``upgraded`` event when
its invoice arrives, ``note_upgrade_payment``); else the charge's creation time (one made after
the period in force began paid it; one made after it ended paid the next period, whose notice
has not arrived: that payment, when it does, grants nothing, ``refunded_before_notice``).

A refund takes back no more than what it can be tied to. A full refund of an upgrade's charge
(the difference charged for the rest of the period) takes back the upgrade: the tier it came
from for the rest of the period the base payment paid, the provider renewing that tier. A
charge no payment here matches, made in the period in force for less than that period's
payment, is not that payment: it ends nothing (the upgrade made in the period before it was
charged, if any, is what it paid).
Replays are the event id's (``webhooks``); another notice of the same refund (the same amount
refunded, or the same refund id) or of a charge whose access was ended already ends nothing
again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, or_, select

from ...billing import get_provider
from ...billing.events import CHARGE_DISPUTED
from ...extensions import db
from ...models import HeldReversal, SubscriptionEvent, UserSubscription
from ...models.subscription import payment_id
from ...tiers import STARTER, get_tier
from .common import SAME_PERIOD_SLACK, _has_paid_period, _provider_told, _record, _to_starter

PERIOD_EVENT_TYPES = ("activated", "renewed")
# the payments a refund or a dispute is matched to: a period's, or an upgrade's difference
PAID_EVENT_TYPES = (*PERIOD_EVENT_TYPES, "upgraded")
REVERSAL_EVENT_TYPES = ("refunded", "disputed")
_ID_KEYS = ("charge_id", "payment_intent_id", "invoice_id")


def ids_of(source) -> list[tuple[str, str]]:
    return [(key, getattr(source, key)) for key in _ID_KEYS if getattr(source, key, None)]


def _matching(ids: list[tuple[str, str]]):
    return or_(*(payment_id(key) == value for key, value in ids))  # indexed (0022)


def payment_owner(ids: list[tuple[str, str]]):
    """The query of the user whose recorded payment, or a refund or dispute of it (one that
    made its payment grant nothing), has one of ``ids``."""
    return (select(SubscriptionEvent.user_id)
            .where(SubscriptionEvent.type.in_(PAID_EVENT_TYPES + REVERSAL_EVENT_TYPES),
                   _matching(ids))
            .order_by(SubscriptionEvent.id.desc()).limit(1))


def user_of_payment(notice) -> int | None:
    """The user whose recorded payment a refund or dispute names (a dispute names only its
    charge)."""
    ids = ids_of(notice)
    if not ids:
        return None
    return db.session.execute(payment_owner(ids)).scalar_one_or_none()


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
    grants nothing (no paid month for money given back). Reversals of it held until now
    (``hold_reversal``) are taken into the user's history first."""
    ids = ids_of(payment)
    if ids:
        lock_payment_ids(ids)
        _take_held(sub, payment, ids)
    return any((e.details or {}).get("full") for e in _reversals(sub.user_id, ids))


def cancel_what_it_started(sub: UserSubscription, payment) -> None:
    """A payment refunded in full or disputed before its notice (``refunded_before_notice``):
    the provider's subscription it paid is canceled, so it renews nothing, as after a
    reversal of the period in force; once (the reversal notes it), and never when a
    reversal of it ended the access already (which canceled it), nor for a charge within the
    period in force (an upgrade's difference: the subscription renews the period the base
    payment paid). The provider unreachable: 502 and nothing kept, the notice comes again."""
    if _has_paid_period(sub) and payment.period_start is not None \
            and payment.period_start < sub.current_period_end - SAME_PERIOD_SLACK:
        return  # a charge within the period in force (an upgrade's difference) renews nothing
    reversals = _reversals(sub.user_id, ids_of(payment))
    if not payment.subscription_id or any(
            (e.details or {}).get("ended_access") or (e.details or {}).get("canceled_unpaid")
            for e in reversals):
        return
    get_provider(payment.provider).cancel_now(payment.customer_id, payment.subscription_id)
    full = next(e for e in reversals if (e.details or {}).get("full"))
    full.details = {**(full.details or {}), "canceled_unpaid": payment.subscription_id}


def lock_payment_ids(ids: list[tuple[str, str]]) -> None:
    """Serialise the payment's notice and a refund or dispute of it that no account could be
    tied to (a transaction-scoped advisory lock per id, PostgreSQL): the refund either sees
    the payment committed or is held before the payment looks (``hold_reversal``)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return
    for value in sorted({value for _, value in ids}):
        db.session.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended(f"sonicus-payment:{value}", 0))))


def hold_reversal(provider: str, notice) -> str:
    """A refund or a dispute of a charge no account here can be tied to yet (called under
    ``lock_payment_ids``): kept by its ids for the payment's notice to take."""
    ids = dict(ids_of(notice))
    if not ids:
        return "unknown_customer"
    type_, full = "disputed" if notice.kind == CHARGE_DISPUTED else "refunded", _full(notice)
    if any(held.type == type_ and held.refunded_cents == notice.refunded_cents
           and (held.full or not full) for held in _held(ids_of(notice))):
        return "already_recorded"  # another notice of the same refund
    db.session.add(HeldReversal(
        provider=provider, event_id=notice.event_id, type=type_, full=full,
        amount_cents=notice.amount_cents, refunded_cents=notice.refunded_cents,
        refund_cents=notice.refund_cents,
        refund_id=notice.refund_id, provider_created=notice.created, **ids))
    return "held_for_its_payment"


def _take_held(sub: UserSubscription, payment, ids) -> None:
    """The reversals held for this payment (``hold_reversal``), recorded in the user's
    history as the payment's (``refunded_before_notice`` then reads them)."""
    held = _held(ids)
    for reversal in held:
        _record(sub, reversal.type, sub.tier, sub.tier,
                amount_cents=_given_back(sub, ids, reversal.refunded_cents,
                                         reversal.refund_cents)
                if reversal.type == "refunded" else reversal.amount_cents,
                refund_id=reversal.refund_id,
                reference=reversal.charge_id or reversal.event_id, at=reversal.received_at,
                full=reversal.full, refunded_cents=reversal.refunded_cents,
                provider_created=reversal.provider_created.isoformat(),
                provider_event_id=reversal.event_id, held=True,
                **{**dict(ids), **{key: getattr(reversal, key) for key in _ID_KEYS
                                   if getattr(reversal, key)}})
        db.session.delete(reversal)
    if held:
        db.session.flush()


def _given_back(sub: UserSubscription, ids, refunded_cents: int | None,
                own: int | None = None) -> int | None:
    """What one refund gave back: its own amount where its notice says (``own``), else the
    provider's running total for the charge (``amount_refunded``) less the largest total of
    its refunds recorded before it. Notices of one charge's refunds arrive in any order: a
    refund recorded with a larger total, counted from below this one (its notice came first,
    without its own amount), is counted from this one now."""
    if refunded_cents is None:
        return own
    totals = [(e, (e.details or {}).get("refunded_cents")) for e in _reversals(sub.user_id, ids)
              if e.type == "refunded"]
    totals = [(e, total) for e, total in totals if isinstance(total, int)]
    below = max((total for _, total in totals if total < refunded_cents), default=0)
    above = min(((total, e.id, e) for e, total in totals if total > refunded_cents),
                default=None)
    if above is not None:
        total, _, event = above
        if total - (event.amount_cents or 0) < refunded_cents:
            event.amount_cents = total - refunded_cents
    return own if own is not None else refunded_cents - below


def _refund_recorded(earlier: list[SubscriptionEvent], refund_id: str | None) -> bool:
    """A refund of that id is in the history already (another notice of it)."""
    return refund_id is not None and any(
        e.type == "refunded" and (e.details or {}).get("refund_id") == refund_id for e in earlier)


def _held(ids) -> list[HeldReversal]:
    return list(db.session.execute(select(HeldReversal).where(or_(
        *(getattr(HeldReversal, key) == value for key, value in ids)))
        .order_by(HeldReversal.id)).scalars())


def _full(notice) -> bool:
    """A dispute (its money taken: not an inquiry only), or a refund of the whole charge."""
    if notice.kind == CHARGE_DISPUTED:
        return not notice.inquiry
    return (
        notice.refunded_cents is not None and notice.amount_cents is not None
        and notice.refunded_cents >= notice.amount_cents)


def _same_moment(iso: str | None, moment: datetime | None) -> bool:
    if not iso or moment is None:
        return False
    return abs(datetime.fromisoformat(iso) - moment) <= SAME_PERIOD_SLACK


def _which_period(sub: UserSubscription, notice, paid: SubscriptionEvent | None,
                  now: datetime) -> str:
    """``current`` (the charge paid the period in force), ``next`` (a payment not notified
    yet) or ``older``. A period already over (its renewal on its way, or its grace) is an
    older one: nothing it paid for is left to take back, and the provider's subscription
    is renewing, or retrying, the next."""
    if not _has_paid_period(sub):
        return "older"
    if paid is not None:
        return "current" if _same_moment((paid.details or {}).get("period_end"),
                                         sub.current_period_end) \
            and sub.current_period_end > now else "older"
    if notice.charged_at is None:
        return "older"
    if notice.charged_at >= sub.current_period_end - SAME_PERIOD_SLACK:
        return "next"
    if notice.charged_at >= sub.current_period_start - SAME_PERIOD_SLACK \
            and sub.current_period_end > now:
        return "current"
    return "older"


def _period_event(sub: UserSubscription, types) -> SubscriptionEvent | None:
    """The newest event of ``types`` for the period in force (its ``period_end``)."""
    for event in db.session.execute(
            select(SubscriptionEvent).where(SubscriptionEvent.user_id == sub.user_id,
                                            SubscriptionEvent.type.in_(types))
            .order_by(SubscriptionEvent.id.desc()).limit(5)).scalars():
        if _same_moment((event.details or {}).get("period_end"), sub.current_period_end):
            return event
    return None


def _less_than_the_period(sub: UserSubscription, notice) -> bool:
    """The charge is for less than what paid the period in force (its payment's amount, else
    the tier's price): it cannot be that payment."""
    base = _period_event(sub, PERIOD_EVENT_TYPES)
    paid = base.amount_cents if base is not None and base.amount_cents else \
        get_tier(sub.tier).price_cents
    return notice.amount_cents is not None and notice.amount_cents < paid


def _upgrade_charged(sub: UserSubscription, notice, paid) -> SubscriptionEvent | None:
    """The upgrade of the period in force whose difference the charge paid: the ``upgraded``
    event matched by the charge's ids, else (its invoice not notified yet) the one made
    before a charge no payment matches, smaller than the period's payment."""
    if paid is not None:
        return paid if paid.type == "upgraded" else None
    if notice.charged_at is None or not _has_paid_period(sub) \
            or not _less_than_the_period(sub, notice):
        return None
    upgrade = _period_event(sub, ("upgraded",))
    if upgrade is None or notice.charged_at < upgrade.at - SAME_PERIOD_SLACK \
            or (upgrade.details or {}).get("charge_id") not in (None, notice.charge_id):
        return None
    return upgrade


def note_upgrade_payment(sub: UserSubscription, payment) -> None:
    """The invoice of an upgrade's difference (its proration, dated from the upgrade to the
    period's end) paid: its ids are kept on the ``upgraded`` event, by which a refund or a
    dispute of it is matched."""
    if payment.period_start is None or not _has_paid_period(sub) or not ids_of(payment):
        return
    upgrade = _period_event(sub, ("upgraded",))
    if upgrade is None or upgrade.to_tier != sub.tier \
            or payment.period_start < upgrade.at - SAME_PERIOD_SLACK \
            or any((upgrade.details or {}).get(key) for key in _ID_KEYS):
        return
    upgrade.details = {**(upgrade.details or {}), **dict(ids_of(payment))}


def _take_back_upgrade(sub: UserSubscription, upgrade: SubscriptionEvent,
                       now: datetime) -> None:
    """The tier the upgrade came from, for the rest of the period: the provider renews it
    (502 when unreachable: nothing kept, the notice comes again). An upgrade made over a
    grant returns to the grant as it was: the tier free of charge again, canceled (ending
    with the period) if it was, and the provider renewing nothing, as the grant had it."""
    back = upgrade.from_tier
    details = upgrade.details or {}
    provider = get_provider(sub.provider)
    provider.change_tier(sub, back, prorate=False)
    if details.get("over_grant"):
        provider.set_cancel_at_period_end(sub, True)
    _provider_told(sub, now)
    sub.tier = back
    if details.get("over_grant"):
        sub.complimentary = True
        if not sub.cancel_at_period_end:  # a cancel made since stands: it ends with the period
            sub.cancel_at_period_end = bool(details.get("grant_canceled"))
            sub.pending_tier = details.get("grant_pending_tier")
    elif sub.pending_tier == back:
        sub.pending_tier = None  # the downgrade scheduled to it is done now


def apply_charge_reversed(sub: UserSubscription, notice, now: datetime) -> str:
    """A refund or a dispute of a charge of this user (see the module docstring)."""
    type_ = "disputed" if notice.kind == CHARGE_DISPUTED else "refunded"
    full = _full(notice)
    paid = _paid_event(sub.user_id, ids_of(notice))
    # the payment's own ids too: a later notice of it (its checkout, its invoice) is matched
    ids = dict(ids_of(notice))
    for key in _ID_KEYS:
        ids.setdefault(key, (paid.details or {}).get(key) if paid is not None else None)
    earlier = _reversals(sub.user_id, ids_of(notice))
    if any(e.type == type_ and (e.details or {}).get("refunded_cents") == notice.refunded_cents
           and ((e.details or {}).get("full") or not full) for e in earlier) \
            or _refund_recorded(earlier, notice.refund_id):
        return "already_recorded"  # (an inquiry, then its dispute taking the money, is not)
    ended_before = any((e.details or {}).get("ended_access")
                       or (e.details or {}).get("ended_upgrade") for e in earlier)
    period = _which_period(sub, notice, paid, now)
    upgrade = _upgrade_charged(sub, notice, paid) if period == "current" else None
    # a charge no payment matches, smaller than the period's, never ends the period
    of_the_period = upgrade is None and (paid is not None or period != "current"
                                         or not _less_than_the_period(sub, notice))
    ends = full and of_the_period and period == "current" and not ended_before
    takes_back = full and upgrade is not None and not ended_before \
        and sub.tier == upgrade.to_tier
    from_tier = sub.tier
    if ends:
        get_provider(sub.provider).cancel_now(sub.provider_customer_id,
                                              sub.provider_subscription_id)
        _to_starter(sub)
    elif takes_back:
        _take_back_upgrade(sub, upgrade, now)
    _record(sub, type_, from_tier, sub.tier, amount_cents=_given_back(
                sub, ids_of(notice), notice.refunded_cents, notice.refund_cents)
            if type_ == "refunded" else notice.amount_cents,
            refund_id=notice.refund_id,
            reference=notice.charge_id or notice.event_id, at=now, full=full,
            ended_access=ends or None, ended_upgrade=takes_back or None, period=period,
            refunded_cents=notice.refunded_cents,
            provider_created=notice.created.isoformat(), provider_event_id=notice.event_id,
            **ids)
    if ends:
        return "access_ended"
    if takes_back:
        return "upgrade_refunded" if type_ == "refunded" else "upgrade_disputed"
    return "recorded" if sub.tier == STARTER or not (full and of_the_period) \
        else f"recorded_{period}_period"
