"""Disputes of a payment and their end, applied to a LOCKED subscription (``webhooks``).

A dispute (``charge.dispute.created`` not an inquiry, ``.funds_withdrawn``) is a reversal
(``refunds.apply_charge_reversed``): of the charge that paid the period in force it ends the
paid access it bought, the provider's subscription canceled. What it ended is noted on its
``disputed`` event (the period's dates, the tier, the provider subscription canceled).

A dispute won (``charge.dispute.closed`` won, ``.funds_reinstated``: ``DISPUTE_WON``) gives
back what the dispute took: the money stayed ours, so the user paid for that period. Its
tier comes back until the period's end, renewing nothing (the provider's subscription was
canceled: nobody is charged again): shown ending at the period's end (``cancel_at_period_end``,
then starter). A resume, or a change to the same or a lower paid tier, is 409 ``conflict``
while it runs (``refuse_while_restored``); a higher tier is a new checkout. The win is a
``disputed`` event (``outcome: "won"``, from the tier before to the tier after). Nothing is
given back when the dispute ended nothing, when the period is over (recorded only), or when
the user has a paid tier, a trial or a grant since (never shortened or replaced). A full
refund of the charge afterwards ends the period given back, as a refund ends any
(``apply_refund_notice``). A win of an upgrade's charge, whose dispute took back the upgrade
(the tier it came from for the rest of the period, the provider renewing that one), gives the
upgraded tier back for the rest of that period, the lower tier due after it as the provider
renews it (``_give_back_upgrade``); the provider is asked nothing.

Once per dispute: a second notice of the win (the other of the two, or one sent again)
finds the win recorded. A win notified before the dispute's own notices is recorded first;
those then take nothing (the month runs on as if never disputed). Before the payment's own
notice (no account yet) a win is held like a reversal (``held_reversals``, type
``dispute_won``): disputes held with it take nothing, and the payment, when it comes, records
the win first (``take_held_wins``) and grants its period. Locks: the payment ids, then the
subscription (``webhooks``'s order)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import select

from ...api_errors import fail
from ...billing.dispute_events import DISPUTE_WON
from ...extensions import db
from ...models import HeldReversal, SubscriptionEvent, UserSubscription
from ...models.subscription import ACTIVE, INCOMPLETE
from ...tiers import STARTER, TIER_SETTING_EVENTS, get_tier, is_upgrade
from .common import _drop_checkout, _has_paid_period, _record, _to_starter
from .refunds import (
    _held,
    _paid_event,
    _reversals,
    _same_moment,
    apply_charge_reversed,
    hold_reversal,
    ids_of,
    lock_payment_ids,
)

WON = "won"
HELD_WIN = "dispute_won"  # a ``HeldReversal.type``: a win held for its payment's notice
_ID_KEYS = ("charge_id", "payment_intent_id", "invoice_id")


def _won(event: SubscriptionEvent) -> bool:
    return event.type == "disputed" and (event.details or {}).get("outcome") == WON


def _merged_ids(notice, *events) -> dict:
    """The notice's payment ids, completed by those the payment's events carry."""
    ids = dict(ids_of(notice))
    for event in events:
        for key in _ID_KEYS:
            if event is not None and not ids.get(key) and (event.details or {}).get(key):
                ids[key] = event.details[key]
    return ids


def apply_dispute_notice(sub: UserSubscription, notice, now: datetime) -> str:
    """A dispute, or its win, of a charge of this user (see the module docstring)."""
    if notice.kind == DISPUTE_WON:
        return _apply_win(sub, notice, now)
    earlier = _reversals(sub.user_id, ids_of(notice))
    if any(_won(e) for e in earlier):
        return _after_its_win(sub, notice, earlier, now)
    period = (sub.tier, sub.current_period_start, sub.current_period_end,
              sub.provider_subscription_id)
    outcome = apply_charge_reversed(sub, notice, now)
    if outcome == "access_ended":
        _note_what_it_ended(sub, *period)
    return outcome


def apply_refund_notice(sub: UserSubscription, notice, now: datetime) -> str:
    """A refund (``refunds.apply_charge_reversed``). Of the charge whose period a won
    dispute gave back, in full, it ends that period: the dispute's end of it, which the win
    undid, no longer counts as the access already ended."""
    given_back = restored_by_a_win(sub)
    outcome = apply_charge_reversed(sub, notice, now)
    if not given_back or outcome != "recorded_current_period":
        return outcome
    refund = db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == sub.user_id,
                                        SubscriptionEvent.type == "refunded")
        .order_by(SubscriptionEvent.id.desc()).limit(1)).scalar_one()
    _to_starter(sub)  # no provider subscription renews it: nothing to cancel
    refund.to_tier = sub.tier
    refund.details = {**(refund.details or {}), "ended_access": True}
    return "access_ended"


def _after_its_win(sub: UserSubscription, notice, earlier, now: datetime) -> str:
    """A dispute notified after its win: it took nothing, so it ends nothing; recorded once."""
    if any(e.type == "disputed" and not _won(e) for e in earlier):
        return "already_recorded"
    _record(sub, "disputed", sub.tier, sub.tier, amount_cents=notice.amount_cents,
            reference=notice.charge_id or notice.event_id, at=now, full=False,
            after_its_win=True, provider_created=notice.created.isoformat(),
            provider_event_id=notice.event_id, **_merged_ids(notice, *earlier))
    return "recorded_dispute_won"


def _note_what_it_ended(sub: UserSubscription, tier: str, start, end, canceled) -> None:
    """The period the dispute ended, kept on its event for a win to give back."""
    event = db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == sub.user_id,
                                        SubscriptionEvent.type == "disputed")
        .order_by(SubscriptionEvent.id.desc()).limit(1)).scalar_one()
    event.details = {**(event.details or {}), "ended_tier": tier,
                     "period_start": start.isoformat() if start else None,
                     "period_end": end.isoformat() if end else None,
                     "canceled_subscription": canceled}


def _apply_win(sub: UserSubscription, notice, now: datetime) -> str:
    earlier = _reversals(sub.user_id, ids_of(notice))
    if any(_won(e) for e in earlier):
        return "already_recorded"  # the other notice of the win, or this one again
    ended = next((e for e in earlier if e.type == "disputed"
                  and (e.details or {}).get("ended_access")), None)
    took_upgrade = next((e for e in earlier if e.type == "disputed"
                         and (e.details or {}).get("ended_upgrade")), None)
    from_tier, outcome = sub.tier, "recorded"
    if ended is not None:
        outcome = _give_back(sub, ended, now)
    elif took_upgrade is not None:
        outcome = _give_back_upgrade(sub, took_upgrade, now)
    restored = outcome == "access_restored"
    upgrade = outcome == "upgrade_restored"
    _record(sub, "disputed", from_tier, sub.tier, amount_cents=notice.amount_cents,
            reference=notice.charge_id or notice.event_id, at=now, outcome=WON,
            restored_access=restored or None, restored_upgrade=upgrade or None,
            renews_tier=took_upgrade.to_tier if upgrade else None,
            period_end=sub.current_period_end.isoformat() if restored or upgrade else None,
            provider_created=notice.created.isoformat(), provider_event_id=notice.event_id,
            **_merged_ids(notice, *earlier))
    return outcome


def _period_ended(sub: UserSubscription, ended: SubscriptionEvent):
    """(tier, start, end) of the period the dispute ended: as noted on its event, else (a
    dispute recorded before that was noted) the period its payment's event paid."""
    details = ended.details or {}
    end, start = details.get("period_end"), details.get("period_start")
    if end is None:
        paid = _paid_event(sub.user_id, [(k, details[k]) for k in _ID_KEYS if details.get(k)])
        end = (paid.details or {}).get("period_end") if paid is not None else None
        start = paid.at.isoformat() if paid is not None else None
    parse = datetime.fromisoformat
    return (details.get("ended_tier") or ended.from_tier, parse(start) if start else None,
            parse(end) if end else None)


def _give_back(sub: UserSubscription, ended: SubscriptionEvent, now: datetime) -> str:
    """The period the dispute ended, back to its end and renewing nothing; or why not."""
    tier, start, end = _period_ended(sub, ended)
    if end is None or tier in (None, STARTER):
        return "recorded"
    if end <= now:
        return "recorded_period_over"
    if sub.tier != STARTER or sub.complimentary or sub.status not in (ACTIVE, INCOMPLETE):
        return "recorded_superseded"  # a tier, trial or grant had since: never replaced
    _drop_checkout(sub, now, via="dispute_won")  # the tier is here: its payment is not owed
    sub.tier, sub.status, sub.past_due_since = tier, ACTIVE, None
    sub.current_period_start, sub.current_period_end = start or now, end
    sub.cancel_at_period_end, sub.pending_tier = True, STARTER
    return "access_restored"


def _give_back_upgrade(sub: UserSubscription, took: SubscriptionEvent, now: datetime) -> str:
    """The upgrade a dispute took back, again for the rest of its period (the one in force,
    not over, still on the tier the dispute left); the tier the provider renews after it.
    An upgrade made over a grant is recorded only."""
    details = took.details or {}
    upgrade = _paid_event(sub.user_id, [(k, details[k]) for k in _ID_KEYS if details.get(k)])
    if upgrade is None or upgrade.type != "upgraded" or (upgrade.details or {}).get("over_grant"):
        return "recorded"
    if sub.current_period_end is None or sub.current_period_end <= now \
            or not _same_moment((upgrade.details or {}).get("period_end"), sub.current_period_end):
        return "recorded_period_over"
    if sub.tier != took.to_tier or not _has_paid_period(sub) or sub.status != ACTIVE:
        return "recorded_superseded"
    sub.tier = took.from_tier
    if not sub.cancel_at_period_end and sub.pending_tier is None:
        sub.pending_tier = took.to_tier  # as the provider renews it since the dispute
    return "upgrade_restored"


def restored_by_a_win(sub: UserSubscription) -> bool:
    """The paid period in force is one a won dispute gave back (no provider subscription
    renews it): the newest change of tier is that win, for this period."""
    if not (_has_paid_period(sub) and sub.cancel_at_period_end):
        return False
    for event in db.session.execute(
            select(SubscriptionEvent).where(SubscriptionEvent.user_id == sub.user_id,
                                            SubscriptionEvent.type.in_(TIER_SETTING_EVENTS))
            .order_by(SubscriptionEvent.id.desc()).limit(20)).scalars():
        details = event.details or {}
        if _won(event) and details.get("restored_access"):
            return _same_moment(details.get("period_end"), sub.current_period_end)
        if event.from_tier != event.to_tier:
            return False
    return False


def refuse_while_restored(sub: UserSubscription, tier: str | None = None) -> None:
    """A resume (``tier`` None), or a paid tier not above the one given back: 409
    ``conflict``, nothing changed. No subscription renews the period a won dispute gave
    back, so there is nothing to resume, nor any to move to a lower price."""
    if not restored_by_a_win(sub) or (tier is not None and is_upgrade(sub.tier, tier)):
        return
    fail(409, "conflict", f"Your {get_tier(sub.tier).title} period, given back after a "
                          f"dispute, ends at {sub.current_period_end:%Y-%m-%d %H:%M} UTC and "
                          "does not renew: choose a tier again once it has ended.")


def not_of_the_period_given_back(sub: UserSubscription, notice) -> bool:
    """A notice of a provider subscription while the period a win gave back runs: none
    renews that period (the one the dispute canceled ended with it; a checkout's new one
    counts once its payment's notice makes it the one running), so it changes nothing of
    it: a late end of the canceled one, a failed first charge of a checkout's."""
    return bool(notice.subscription_id) \
        and notice.subscription_id != sub.provider_subscription_id and restored_by_a_win(sub)


def hold_dispute_notice(provider: str, notice) -> str:
    """A dispute or its win of a charge no account here can be tied to yet (under
    ``lock_payment_ids``): kept for the payment's notice. A win makes the disputes held with
    it take nothing; a dispute held after its win takes nothing."""
    ids = ids_of(notice)
    if not ids:
        return "unknown_customer"
    held = _held(ids)
    won = any(h.type == HELD_WIN for h in held)
    if notice.kind != DISPUTE_WON:
        return hold_reversal(provider, replace(notice, inquiry=True) if won else notice)
    if won:
        return "already_recorded"
    for reversal in held:
        if reversal.type == "disputed":
            reversal.full = False  # the money came back
    db.session.add(HeldReversal(
        provider=provider, event_id=notice.event_id, type=HELD_WIN, full=False,
        amount_cents=notice.amount_cents, provider_created=notice.created, **dict(ids)))
    return "held_for_its_payment"


def take_held_wins(sub: UserSubscription, payment) -> None:
    """The wins held for this payment, recorded in the user's history as its disputes' (before
    ``refunds.refunded_before_notice`` takes the disputes held, which took nothing)."""
    ids = ids_of(payment)
    if not ids:
        return
    lock_payment_ids(ids)
    for win in _held(ids):
        if win.type != HELD_WIN:
            continue
        _record(sub, "disputed", sub.tier, sub.tier, amount_cents=win.amount_cents,
                reference=win.charge_id or win.event_id, at=win.received_at, outcome=WON,
                held=True, provider_created=win.provider_created.isoformat(),
                provider_event_id=win.event_id,
                **{**dict(ids), **{key: getattr(win, key) for key in _ID_KEYS
                                   if getattr(win, key)}})
        db.session.delete(win)
