"""The expiry job: trial ends, grace ends and period ends that are due."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, case, func, not_, or_, select

from ... import clock
from ...extensions import db
from ...models import UserSubscription
from ...models.subscription import ACTIVE, PAST_DUE, TRIALING
from ...tiers import STARTER, TIERS, get_tier
from ..transaction import unit_of_work
from .common import (
    GRACE_PERIOD,
    _clear_checkout,
    _clear_scheduled_change,
    _has_paid_period,
    _period_deadline,
    _record,
    _to_starter,
    add_month,
    following_period_end,
)
from .payments import Payment, apply_payment_succeeded
from .row import lock_or_create_subscription


def _due_condition(now: datetime):
    return or_(
        and_(UserSubscription.status == TRIALING, UserSubscription.trial_ends_at <= now),
        and_(UserSubscription.status == PAST_DUE,
             UserSubscription.past_due_since <= now - GRACE_PERIOD),
        and_(UserSubscription.status.in_((ACTIVE, PAST_DUE)),
             UserSubscription.tier != STARTER,
             UserSubscription.complimentary.is_(False),
             UserSubscription.current_period_end <= now),
        # a grant canceled by the user at the end of the period paid for under it
        and_(UserSubscription.status == ACTIVE,
             UserSubscription.complimentary.is_(True),
             UserSubscription.cancel_at_period_end.is_(True),
             UserSubscription.current_period_end <= now),
    )


def apply_due_deadlines(sub: UserSubscription, now: datetime) -> list[str]:
    """Apply every deadline that has passed on a LOCKED subscription; the outcomes. The job
    runs it, and so does every change a user asks for, before judging it: a change asked
    after a deadline starts from what the deadline gave, not from the row the job has not
    written yet."""
    outcomes: list[str] = []
    for _ in range(24):  # at most this many missed periods in one go
        step = _advance_once(sub, now)
        if step is None:
            break
        outcomes.append(step)
    return outcomes


def _passed_deadline(sub, now: datetime) -> str | None:
    """THE deadline this job applies next, once it has passed: ``"trial"``, ``"grace"`` (of a
    failed renewal) or ``"period"``, in that order; None when none has."""
    if sub.status == TRIALING and sub.trial_ends_at and sub.trial_ends_at <= now:
        return "trial"
    if sub.status == PAST_DUE and sub.past_due_since \
            and sub.past_due_since + GRACE_PERIOD <= now:
        return "grace"
    if _period_deadline(sub) and sub.current_period_end <= now:
        return "period"
    return None


def _advance_once(sub: UserSubscription, now: datetime) -> str | None:
    """The next deadline that has passed, applied; its outcome (None: nothing is due)."""
    deadline = _passed_deadline(sub, now)
    if deadline == "trial":
        return _end_trial(sub)
    if deadline == "grace":
        return _end_grace(sub)
    if deadline == "period":
        return _end_period(sub, now)
    return None


def tier_after_trial(sub: UserSubscription) -> str:
    """THE trial's end: starter when canceled or without a card, else the paid tier (the
    scheduled one, if a change was asked for)."""
    if sub.cancel_at_period_end or sub.pending_tier == STARTER \
            or not sub.payment_method_on_file:
        return STARTER
    return sub.pending_tier or sub.tier


def _tier_after_period(sub) -> str | None:
    """THE period's end, when a change was asked for: starter after a cancel, the lower tier
    after a downgrade; None when none was (a renewal or a lapse decides)."""
    if sub.cancel_at_period_end or sub.pending_tier == STARTER:
        return STARTER
    return sub.pending_tier if sub.pending_tier in TIERS else None


def _renews_itself(sub) -> bool:
    """The sandbox charges the card on file itself at the period's end; a provider's renewal
    arrives as a notice, and without one the period lapses after its grace."""
    return sub.provider == "sandbox" and bool(sub.payment_method_on_file)


def scheduled_change(sub) -> tuple[datetime, str] | None:
    """The next change of tier this job writes that is known ahead, as (when, tier): the end of
    a trial, of a failed renewal's grace, or of a paid period with a change asked for. A
    renewal or a lapse is known only when it happens (``due_change``). ``sub`` is the row, or
    a result row with its columns."""
    if sub.status == TRIALING:
        return (sub.trial_ends_at, tier_after_trial(sub)) if sub.trial_ends_at else None
    changes = []
    if sub.status == PAST_DUE and sub.past_due_since is not None:
        changes.append((sub.past_due_since + GRACE_PERIOD, STARTER))
    after = _tier_after_period(sub) if _period_deadline(sub) else None
    if after is not None:
        changes.append((sub.current_period_end, after))
    return min(changes, key=lambda change: change[0]) if changes else None


def due_change(sub, now: datetime) -> tuple[datetime, str] | None:
    """The change of tier of the deadline that has passed at ``now`` (``_passed_deadline``)
    and that this job (every minute) may not have written yet, as (when, tier); None when
    the tier stays."""
    deadline = _passed_deadline(sub, now)
    if deadline == "trial":
        return sub.trial_ends_at, tier_after_trial(sub)
    if deadline == "grace":
        return sub.past_due_since + GRACE_PERIOD, STARTER
    if deadline == "period":
        after = _tier_after_period(sub)
        if after is not None:
            return sub.current_period_end, after
        lapses_at = sub.current_period_end + GRACE_PERIOD
        if sub.status == ACTIVE and not _renews_itself(sub) and lapses_at <= now:
            return lapses_at, STARTER
    return None


def in_force_columns(now: datetime):
    """``tier_in_force`` and the status shown with it (``admin_users.in_force``) as SQL over
    ``UserSubscription``'s columns, as (tier, status): what a filter of the admin list
    matches, so that it agrees with what its rows show. Kept beside ``due_change``, clause
    for clause; NULL where the row is missing (an outer join)."""
    sub = UserSubscription
    card = sub.payment_method_on_file.is_(True)
    cancel = sub.cancel_at_period_end.is_(True)
    to_starter = or_(cancel, func.coalesce(sub.pending_tier, "") == STARTER)
    trial_due = and_(sub.status == TRIALING, sub.trial_ends_at <= now)
    after_trial = case((or_(to_starter, not_(card)), STARTER),
                       else_=func.coalesce(sub.pending_tier, sub.tier))
    grace_due = and_(sub.status == PAST_DUE, sub.past_due_since <= now - GRACE_PERIOD)
    paid_period = and_(sub.tier != STARTER, sub.complimentary.is_not(True),
                       sub.current_period_end.is_not(None), sub.status.in_((ACTIVE, PAST_DUE)))
    grant_ends = and_(sub.complimentary.is_(True), sub.status == ACTIVE,
                      sub.current_period_end.is_not(None), cancel)
    period_due = and_(or_(paid_period, grant_ends), sub.current_period_end <= now)
    after_period = case((to_starter, STARTER),
                        (sub.pending_tier.in_(tuple(TIERS)), sub.pending_tier), else_=None)
    renews_itself = and_(func.coalesce(sub.provider, "") == "sandbox", card)
    lapse_due = and_(sub.status == ACTIVE, not_(renews_itself),
                     sub.current_period_end <= now - GRACE_PERIOD)
    changes = [(trial_due, after_trial), (grace_due, STARTER),
               (and_(period_due, after_period.is_not(None)), after_period),
               (and_(period_due, lapse_due), STARTER)]
    tier = case(*changes, else_=sub.tier)
    due = or_(*(when for when, _ in changes))
    status = case((and_(due, or_(tier == STARTER, sub.status == TRIALING)), ACTIVE),
                  else_=sub.status)
    return tier, status


def deadline_passed(now: datetime):
    """A deadline of the row may have passed (whether or not it changes anything): the only
    rows whose tier or status in force may differ from the stored ones. Each term has an
    index (a failed renewal by its status: its grace's end is read by ``in_force_columns``)."""
    sub = UserSubscription
    return or_(sub.trial_ends_at <= now, sub.current_period_end <= now, sub.status == PAST_DUE)


def next_change_at(sub) -> datetime | None:
    """The instant from which ``due_change`` may give a change of tier (None: no deadline is
    ahead): a change known ahead (``scheduled_change``), or the lapse of a provider's period
    that no renewal has extended yet. What is shown of a subscription is read again then."""
    if sub is None:
        return None
    change = scheduled_change(sub)
    times = [change[0]] if change is not None else []
    if sub.status == ACTIVE and _has_paid_period(sub) and _tier_after_period(sub) is None \
            and not _renews_itself(sub):
        times.append(sub.current_period_end + GRACE_PERIOD)
    return min(times, default=None)


def tier_in_force(sub, now: datetime) -> str:
    """THE subscription's tier at ``now``: where a deadline has passed (``due_change``), the
    tier it falls to, before this job has written it; else the row's."""
    change = due_change(sub, now)
    return sub.tier if change is None else change[1]


def settle_due_change(sub: UserSubscription | None,
                      now: datetime | None = None) -> UserSubscription | None:
    """The subscription as it is in force, for showing it: where a deadline has passed that
    changes its tier (``due_change``) and this job has not written it yet, it is applied now,
    as the job would, under the row lock, and the row returned fresh; else ``sub`` as it is.
    Sign-in runs it, so that what a user is shown (profile, subscription, dashboard, catalog)
    never lags behind what is enforced."""
    now = now or clock.now()
    if sub is None or sub.user_id is None or due_change(sub, now) is None:
        return sub
    with unit_of_work() as work:
        locked = lock_or_create_subscription(sub.user_id)
        if apply_due_deadlines(locked, now):
            work.changed_user(locked.user_id)
    return locked


def _end_trial(sub: UserSubscription) -> str:
    """The trial is over: starter when canceled or without a card, else the paid tier."""
    if tier_after_trial(sub) == STARTER:
        return _trial_to_starter(sub)
    return _convert_trial(sub)


def _trial_to_starter(sub: UserSubscription) -> str:
    ends, from_tier = sub.trial_ends_at, sub.tier
    _to_starter(sub)
    _clear_checkout(sub)
    _record(sub, "trial_ended", from_tier, STARTER, amount_cents=0, at=ends,
            reason="canceled" if sub.payment_method_on_file else "no_payment_method")
    return "trial_ended"


def _convert_trial(sub: UserSubscription) -> str:
    """The trial is over with a card on file: the paid tier. The sandbox charges the card
    itself, so the first month is paid; a provider charges it at the trial's end, and its
    invoice arrives as the renewal of a period that ended with the trial (a failed charge
    makes it ``past_due``; no notice at all lapses it after the grace)."""
    ends, from_tier = sub.trial_ends_at, sub.tier
    tier = tier_after_trial(sub)
    charged = _renews_itself(sub)
    sub.tier, sub.status = tier, ACTIVE
    sub.current_period_start = ends
    sub.current_period_end = add_month(ends) if charged else ends
    _clear_scheduled_change(sub)
    _record(sub, "trial_converted", from_tier, tier,
            amount_cents=get_tier(tier).price_cents if charged else 0,
            at=ends, period_end=sub.current_period_end.isoformat(),
            provider_created=ends.isoformat())
    return "trial_converted"


def _end_grace(sub: UserSubscription) -> str:
    """The grace period of a failed renewal is over: starter. The provider's own retries may
    still succeed later: that payment re-activates."""
    from_tier, at = sub.tier, sub.past_due_since + GRACE_PERIOD
    _to_starter(sub, provider_may_charge=True)
    _record(sub, "grace_ended", from_tier, STARTER, amount_cents=0, at=at,
            reason="payment_failed")
    return "grace_ended"


def _end_period(sub: UserSubscription, now: datetime) -> str | None:
    """The paid period is over: the scheduled cancel or downgrade, else a renewal or a lapse."""
    after = _tier_after_period(sub)
    if after == STARTER:
        return _cancel_at_period_end(sub)
    if after is not None:
        return _downgrade_at_period_end(sub)
    if sub.status != ACTIVE:
        return None  # past_due: the grace deadline decides
    if _renews_itself(sub):
        return _sandbox_renewal(sub, now)
    if sub.current_period_end + GRACE_PERIOD <= now:
        return _lapse(sub)
    return None


def _cancel_at_period_end(sub: UserSubscription) -> str:
    ends, from_tier = sub.current_period_end, sub.tier
    _to_starter(sub)
    _record(sub, "canceled", from_tier, STARTER, amount_cents=0, at=ends, via="period_end")
    return "canceled"


def _downgrade_at_period_end(sub: UserSubscription) -> str:
    ends = sub.current_period_end
    from_tier, sub.tier, sub.pending_tier = sub.tier, sub.pending_tier, None
    _record(sub, "downgraded", from_tier, sub.tier, amount_cents=0, at=ends)
    return "downgraded"  # the next step renews (or lapses) the lower tier


def _sandbox_renewal(sub: UserSubscription, now: datetime) -> str | None:
    """The sandbox charges the card on file itself, like a provider's renewal would."""
    ends = sub.current_period_end
    outcome = apply_payment_succeeded(sub, Payment(
        provider="sandbox", created=ends, tier=sub.tier,
        amount_cents=get_tier(sub.tier).price_cents,
        reference=f"sandbox_renewal_{sub.user_id}_{int(ends.timestamp())}",
        period_start=ends, period_end=following_period_end(sub.current_period_start, ends)),
        now)
    return outcome if outcome == "renewed" else None


def _lapse(sub: UserSubscription) -> str:
    """No renewal arrived from the provider in the whole grace period: starter."""
    ends, from_tier = sub.current_period_end, sub.tier
    _to_starter(sub, provider_may_charge=True)
    _record(sub, "lapsed", from_tier, STARTER, amount_cents=0, at=ends + GRACE_PERIOD,
            reason="no_renewal")
    return "lapsed"


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
        with unit_of_work() as work:
            batch = _lock_due_batch(now, last_id, batch_size)
            for sub in batch:
                outcomes = apply_due_deadlines(sub, now)
                if outcomes:
                    work.changed_user(sub.user_id)
                processed += bool(outcomes)
                for outcome in outcomes:
                    counts[outcome] = counts.get(outcome, 0) + 1
        if not batch:
            break
        last_id = batch[-1].id
    return {"processed": processed, "outcomes": counts, "ran_at": now}


def _lock_due_batch(now: datetime, after_id: int, size: int) -> list[UserSubscription]:
    return db.session.execute(
        select(UserSubscription)
        .where(_due_condition(now), UserSubscription.id > after_id)
        .order_by(UserSubscription.id).limit(size)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)).scalars().all()
