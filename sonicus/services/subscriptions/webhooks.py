"""Provider events (verified webhooks), applied exactly once: the event row is inserted first
and its unique index decides who handles it (a replay changes nothing); the notice is then
applied to the subscription it is about, locked, once the deadlines that have passed are
(``expiry.apply_due_deadlines``, as for every change a user asks for), by ``payments`` and
``provider_updates``. Every notice takes its locks in one order: its event row, the payment
ids it names (``refunds.lock_payment_ids``), then the subscription row; a transaction
PostgreSQL still finds in a deadlock or a serialization failure is run again (at most
``ATTEMPTS`` times) rather than answered 5xx. Notices about an erased account's customer or
subscription change nothing (``ERASED_CUSTOMER``) and are stored without their content; a
running subscription of an erased account is owed a cancellation."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError

from ... import clock
from ...billing import get_provider
from ...billing.dispute_events import DISPUTE_WON
from ...billing.events import (
    CHARGE_DISPUTED,
    CHARGE_REFUNDED,
    PAYMENT_FAILED,
    PAYMENT_SUCCEEDED,
    SUBSCRIPTION_ENDED,
    SUBSCRIPTION_UPDATED,
)
from ...extensions import db
from ...models import BillingEvent, UserSubscription
from ..erasure import (
    attempt_owed_cancellation,
    is_erased_account,
    is_erased_billing,
    owe,
    without_content,
)
from ..transaction import Work, unit_of_work
from .disputes import (
    apply_dispute_notice,
    apply_refund_notice,
    hold_dispute_notice,
    not_of_the_period_given_back,
)
from .expiry import apply_due_deadlines
from .payments import (
    Payment,
    apply_payment_failed,
    apply_payment_succeeded,
    apply_subscription_ended,
)
from .provider_updates import apply_subscription_updated
from .refunds import (
    hold_reversal,
    ids_of,
    lock_payment_ids,
    user_of_payment,
)

ERASED_CUSTOMER = "erased_customer"


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


class _Replay(Exception):
    """The event was claimed before: this delivery changes nothing (and is rolled back)."""


HANDLED_KINDS = (PAYMENT_SUCCEEDED, PAYMENT_FAILED, SUBSCRIPTION_ENDED, SUBSCRIPTION_UPDATED,
                 CHARGE_REFUNDED, CHARGE_DISPUTED, DISPUTE_WON)
# the notices of a charge (no subscription named): a refund, a dispute, a dispute won
REVERSAL_KINDS = (CHARGE_REFUNDED, CHARGE_DISPUTED, DISPUTE_WON)
DISPUTE_KINDS = (CHARGE_DISPUTED, DISPUTE_WON)
# the notices that take the locks of the payment ids they name (``lock_payment_ids``)
PAYMENT_ID_KINDS = (PAYMENT_SUCCEEDED, *REVERSAL_KINDS)


# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled back
# as a whole and may simply run again.
RETRIED_SQLSTATES = ("40P01", "40001")
ATTEMPTS = 3


def _worth_running_again(exc: DBAPIError) -> bool:
    return getattr(getattr(exc, "orig", None), "pgcode", None) in RETRIED_SQLSTATES


def handle_billing_event(provider: str, event: dict, notice, now: datetime | None = None) -> dict:
    """Apply one verified webhook event exactly once; returns ``{event_id, type, outcome}``.
    A deadlock or serialization failure (rolled back whole) runs it again, ``ATTEMPTS``
    times at most."""
    for _ in range(ATTEMPTS - 1):
        try:
            return _handle_once(provider, event, notice, now)
        except DBAPIError as exc:
            if not _worth_running_again(exc):
                raise
    return _handle_once(provider, event, notice, now)  # the last attempt: a failure raises


def _handle_once(provider: str, event: dict, notice, now: datetime | None) -> dict:
    now = now or clock.now()
    result = {"event_id": notice.event_id, "type": notice.event_type, "duplicate": False}
    owed: list[int] = []
    try:
        with unit_of_work() as work:
            record = _claim_event(provider, notice.event_id, notice.event_type, event)
            if record is None:
                raise _Replay
            outcome = _apply_notice(provider, notice, now, work, owed)
            record.processed_at = now
            record.payload = {**event, "sonicus_outcome": outcome} \
                if outcome != ERASED_CUSTOMER else without_content(event, outcome)
    except _Replay:
        return {**result, "duplicate": True, "outcome": "duplicate"}
    for owed_id in owed:
        attempt_owed_cancellation(owed_id)
    return {**result, "outcome": outcome}


# Notices that mean a provider subscription is running (and may charge).
LIVE_SUBSCRIPTION_KINDS = (PAYMENT_SUCCEEDED, PAYMENT_FAILED, SUBSCRIPTION_UPDATED)
# Notices of a provider subscription that change nothing of a period a won dispute gave
# back (``disputes.not_of_the_period_given_back``).
STALE_AFTER_A_WIN = (PAYMENT_FAILED, SUBSCRIPTION_UPDATED, SUBSCRIPTION_ENDED)


def _apply_notice(provider: str, notice, now: datetime, work: Work, owed: list[int]) -> str:
    """The notice applied to the subscription it is about (locked); the outcome. A running
    subscription of an erased account is owed a cancellation (its id added to ``owed``, to
    try after the commit)."""
    if is_erased_billing(notice.customer_id, notice.subscription_id):
        # no account to change, nobody else's to touch; a subscription of the erased
        # customer that the erasure did not know of (a checkout paid as it happened) ends
        return _of_an_erased_account(provider, notice, now, owed)
    if notice.kind not in HANDLED_KINDS:
        return "ignored"
    if notice.kind in PAYMENT_ID_KINDS:
        # the payment's ids before the subscription row, in every path: a payment's notice
        # and a refund of it each wait for the other's commit, never for each other's locks
        # (the payment's notice, being applied now, commits first)
        lock_payment_ids(ids_of(notice))
    if notice.kind in REVERSAL_KINDS and notice.user_id is None:
        notice = replace(notice, user_id=user_of_payment(notice))  # a dispute names a charge
    sub = _find_subscription_for(notice)
    if sub is None and notice.kind in REVERSAL_KINDS and not is_erased_account(notice.user_id):
        if notice.kind in DISPUTE_KINDS:
            return hold_dispute_notice(provider, notice)
        return hold_reversal(provider, notice)  # its payment's notice not here yet
    if sub is None:
        if is_erased_account(notice.user_id):
            return _of_an_erased_account(provider, notice, now, owed)
        return "unknown_customer"
    # a notice arriving after a trial's, grace's or period's end, before the expiry job wrote
    # it, acts on the subscription in force: that end first, under the same lock
    apply_due_deadlines(sub, now)
    work.changed_user(sub.user_id)
    if notice.kind == PAYMENT_SUCCEEDED:
        return apply_payment_succeeded(sub, _payment_of(provider, notice), now)
    if notice.kind in STALE_AFTER_A_WIN and not_of_the_period_given_back(sub, notice):
        return "stale"  # no provider subscription renews the period a won dispute gave back
    if notice.kind == PAYMENT_FAILED:
        return apply_payment_failed(sub, notice, now)
    if notice.kind == SUBSCRIPTION_UPDATED:
        return apply_subscription_updated(sub, notice, now)
    if notice.kind in DISPUTE_KINDS:
        return apply_dispute_notice(sub, notice, now)
    if notice.kind in REVERSAL_KINDS:
        return apply_refund_notice(sub, notice, now)
    return apply_subscription_ended(sub, notice, now)


def _of_an_erased_account(provider: str, notice, now: datetime, owed: list[int]) -> str:
    """A notice about an erased account's provider customer or subscription. A running
    subscription not owed a cancellation yet is: a payment of it (a checkout paid as or
    after the account was erased) is refunded and the subscription canceled at once, nobody
    being charged for an account that is gone (the provider unreachable: 502, sent again);
    any other notice of it owes it a cancellation (in ``owed``, tried after the commit)."""
    if notice.kind not in LIVE_SUBSCRIPTION_KINDS or not notice.subscription_id \
            or is_erased_billing(None, notice.subscription_id):
        return ERASED_CUSTOMER
    if notice.kind == PAYMENT_SUCCEEDED:
        done = get_provider(provider).refund_and_cancel(notice.customer_id,
                                                        notice.subscription_id)
        owe(provider, notice.customer_id, notice.subscription_id, now, settled=done)
        return ERASED_CUSTOMER
    owed.append(owe(provider, notice.customer_id, notice.subscription_id, now).id)
    return ERASED_CUSTOMER


def _payment_of(provider: str, notice) -> Payment:
    return Payment(provider=provider, created=notice.created, tier=notice.tier,
                   amount_cents=notice.amount_cents, reference=notice.reference,
                   period_start=notice.period_start, period_end=notice.period_end,
                   customer_id=notice.customer_id, subscription_id=notice.subscription_id,
                   event_id=notice.event_id, invoice_id=notice.invoice_id,
                   charge_id=notice.charge_id, payment_intent_id=notice.payment_intent_id)
