"""Changes a user asks for: choose, buy, trial, upgrade or downgrade a tier; cancel; resume.

- ``tier`` is ALWAYS the tier in force right now: access checks read nothing else.
- ``status``: ``active``, ``trialing``, ``incomplete`` (starter, waiting for a first payment),
  ``past_due`` (a renewal failed; the tier is kept for ``GRACE_PERIOD``), ``canceled``.
- ``checkout_reference`` / ``checkout_tier`` / ``checkout_url``: a checkout waiting for payment.
- ``pending_tier`` (with ``cancel_at_period_end`` when it is starter): the change due at
  ``current_period_end`` (or at ``trial_ends_at`` during a trial).
- A ``past_due`` user never buys a second subscription: 409 ``use_billing_portal`` with the
  provider's billing portal, where the card is fixed.
- One trial per person: an erased account's tombstone of the same subject or email counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app

from ... import clock
from ...api_errors import fail
from ...billing import get_provider
from ...billing.base import new_reference
from ...extensions import db
from ...models import User, UserSubscription
from ...models.subscription import ACTIVE, INCOMPLETE, PAST_DUE, TRIALING
from ...tiers import STARTER, get_tier, is_upgrade, prorated_upgrade_cents
from ..person_emails import lock_trials_of_account, trial_used_by_the_person
from ..transaction import unit_of_work
from .common import (
    _clear_scheduled_change,
    _drop_checkout,
    _has_paid_period,
    _provider_renews_below,
    _provider_told,
    _record,
    _to_starter,
    cents_to_decimal,
)
from .disputes import refuse_while_restored, restored_by_a_win
from .expiry import apply_due_deadlines
from .grants import _paid_period_running
from .portal import portal_for
from .row import (
    SubscriptionOverview,
    lock_or_create_subscription,
    overview,
)


@dataclass(frozen=True)
class ReturnTo:
    """Where a checkout sends the browser back to (None: the provider's default page)."""

    success_url: str | None = None
    cancel_url: str | None = None


def _require_verified(user: User) -> None:
    if not user.email_verified:
        fail(403, "email_not_verified",
             "Verify your email address before starting a trial or paying for a tier.")


def _start_checkout(user: User, sub: UserSubscription, tier: str, now: datetime,
                    return_to: ReturnTo) -> str:
    _drop_checkout(sub, now, via="replaced")  # its page can no longer be paid
    provider = get_provider()
    reference = new_reference()
    trial_end = sub.trial_ends_at if sub.status == TRIALING else None
    checkout = provider.create_checkout(user=user, sub=sub, tier=tier, reference=reference,
                                        trial_end=trial_end, success_url=return_to.success_url,
                                        cancel_url=return_to.cancel_url)
    sub.checkout_reference, sub.checkout_tier, sub.checkout_url = (
        checkout.reference, tier, checkout.url)
    sub.checkout_session_id = checkout.session_id
    sub.checkout_success_url, sub.checkout_cancel_url = (return_to.success_url,
                                                         return_to.cancel_url)
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


def change_tier(user_id: int, tier: str, start_trial: bool = False,
                now: datetime | None = None, *, success_url: str | None = None,
                cancel_url: str | None = None) -> tuple[SubscriptionOverview, str]:
    """``POST /api/user/subscription``: choose, buy, trial, upgrade or downgrade a tier.

    A checkout sends the browser to ``success_url`` after paying and to ``cancel_url`` when
    it is abandoned (checked by the caller: addresses of the app). Returns the answer (built
    inside the transaction: nothing is read after the commit) and the message."""
    now = now or clock.now()
    target = get_tier(tier)
    if start_trial and not target.is_paid:
        fail(422, "validation_error", "Only a paid tier has a trial.",
             errors=["start_trial: Only a paid tier has a trial."])
    with unit_of_work() as work:
        sub = lock_or_create_subscription(user_id)
        apply_due_deadlines(sub, now)
        user = db.session.get(User, user_id)
        if target.is_paid:
            _require_verified(user)
        work.changed_user(sub.user_id)
        first_choice = sub.tier_chosen_at is None
        sub.tier_chosen_at = sub.tier_chosen_at or now
        if start_trial:
            message = _start_trial(user, sub, tier, now)
        elif not target.is_paid:
            message = _choose_starter(sub, now, first_choice)
        else:
            message = _choose_paid(user, sub, tier, now, ReturnTo(success_url, cancel_url))
        view = overview(user, sub, now)
    return view, message


def _start_trial(user: User, sub: UserSubscription, tier: str, now: datetime) -> str:
    if sub.trial_used:
        fail(409, "trial_already_used", "The free trial has already been used on this account.")
    # Trials of the person's addresses are serialised; the live accounts and the erased
    # ones' tombstones are asked in one statement: an erasure (its account gone, its
    # tombstones written, at once) is seen on one side or the other.
    lock_trials_of_account(user)
    if trial_used_by_the_person(user.id, user.email, user.oidc_sub):
        fail(409, "trial_already_used", "The free trial has already been used by you.")
    if sub.tier != STARTER:
        fail(409, "conflict", "A trial starts from the starter tier.")
    days = current_app.config["TRIAL_DAYS"]
    if days <= 0:
        fail(409, "conflict", "Free trials are not offered.")
    from_tier = sub.tier
    _drop_checkout(sub, now, via="trial_started")
    _clear_scheduled_change(sub)
    sub.tier, sub.status, sub.trial_used = tier, TRIALING, True
    sub.trial_ends_at = now + timedelta(days=days)
    sub.provider = sub.provider or current_app.config["BILLING_PROVIDER"]
    _record(sub, "trial_started", from_tier, tier, amount_cents=0, at=now,
            trial_ends_at=sub.trial_ends_at.isoformat())
    return f"Your {days}-day {get_tier(tier).title} trial has started."


def _choose_starter(sub: UserSubscription, now: datetime, first_choice: bool) -> str:
    _drop_checkout(sub, now)
    if sub.tier == STARTER:
        if first_choice:
            _record(sub, "tier_chosen", None, STARTER, amount_cents=0, at=now)
        return "You are on the starter tier."
    return _schedule_cancel(sub, now, reason=None, comment=None, via="tier_change")


def _choose_paid(user: User, sub: UserSubscription, tier: str, now: datetime,
                 return_to: ReturnTo) -> str:
    if sub.status == PAST_DUE:
        _send_to_billing_portal(sub)
    if sub.status == TRIALING:
        return _change_trial(user, sub, tier, now, return_to)
    refuse_while_restored(sub, tier)  # a period a won dispute gave back renews nothing
    if restored_by_a_win(sub):
        return _start_checkout(user, sub, tier, now, return_to)  # a higher tier: bought anew
    if sub.complimentary and sub.status == ACTIVE and is_upgrade(tier, sub.tier):
        _refuse_below_the_grant(sub, tier, now)
    if sub.tier == tier and sub.status == ACTIVE:
        if sub.complimentary:  # given free: nothing to pay for
            if sub.cancel_at_period_end:
                return _resume(sub, now)
            return f"You already have {get_tier(tier).title}, free of charge."
        if sub.cancel_at_period_end or sub.pending_tier:
            return _resume(sub, now, keep_tier=True)
        return f"You are already on {get_tier(tier).title}."
    return (_change_paid_period(sub, tier, now)
            or _start_checkout(user, sub, tier, now, return_to))


def _refuse_below_the_grant(sub: UserSubscription, tier: str, now: datetime) -> None:
    """A paid tier below the one granted is part of what the user has free (the tier of a
    period they paid for before the grant included: a grant never goes below it). Nothing is
    sold for it, a second full-price subscription over days already paid for least of all:
    409 ``conflict``, nothing changed."""
    granted, chosen = get_tier(sub.tier).title, get_tier(tier).title
    paid = (f", over the period paid for until {sub.current_period_end:%Y-%m-%d %H:%M} UTC"
            if _paid_period_running(sub, now) else "")
    fail(409, "conflict", f"You have {granted} free of charge{paid}; it includes {chosen}, "
                          "so there is nothing to pay for.")


def _send_to_billing_portal(sub: UserSubscription) -> None:
    """A past-due subscription is still the provider's: buying again would start a second
    one. 409 ``use_billing_portal``, with the portal (``portal_url``) to fix the card in."""
    url = portal_for(sub) if sub.provider_customer_id else None
    fail(409, "use_billing_portal",
         "Your last payment failed: update your payment method in the billing portal "
         "instead of buying again.", data={"portal_url": url})


def _change_paid_period(sub: UserSubscription, tier: str, now: datetime) -> str | None:
    """A change the provider makes to the running paid period: an upgrade now or a downgrade
    at its end. None: the tier needs a new checkout.

    A period paid for before a grant, still running under it, is such a period too: a tier
    above the one granted is an upgrade of it, prorated like any other (the unused paid days
    credited), never a second, full-price subscription over days already paid for."""
    if sub.complimentary and _paid_period_running(sub, now) and sub.payment_method_on_file \
            and is_upgrade(sub.tier, tier):
        return _upgrade_now(sub, tier, now)
    if not _has_paid_period(sub):
        return None
    if sub.status == ACTIVE and sub.payment_method_on_file:
        if sub.current_period_end <= now:
            _refuse_until_renewed(sub)
        if is_upgrade(sub.tier, tier):
            return _upgrade_now(sub, tier, now)
        return _schedule_downgrade(sub, tier, now)
    return None


def _refuse_until_renewed(sub: UserSubscription) -> None:
    """The paid period is over and the provider's renewal has not arrived yet (a provider
    charges about an hour after the period's end; a trial's first charge likewise): the
    provider is already in the next period, billing the tier in force for it. A change now
    has no period here to act on: a downgrade "at the period's end" would take effect at
    once, the user losing the tier the provider charges for; an upgrade would be shown as
    costing nothing while the provider charges the difference for the whole new period; a
    cancel would end the tier here at once while the provider charges (and runs) the new
    period, which its renewal then brought back shown as renewing. 409 ``conflict``,
    nothing changed; the same request once the renewal is known acts on the new period."""
    fail(409, "conflict", f"Your {get_tier(sub.tier).title} period ended at "
                          f"{sub.current_period_end:%Y-%m-%d %H:%M} UTC and its renewal is "
                          "being processed; try again in a few minutes.")


def _change_trial(user: User, sub: UserSubscription, tier: str, now: datetime,
                  return_to: ReturnTo) -> str:
    """A paid tier chosen during the trial: it continues (undoing a scheduled cancel) and
    converts to that tier, once a payment method is on file."""
    if sub.cancel_at_period_end or sub.pending_tier:
        _resume(sub, now)
    if tier != sub.tier:
        # with a card on file the provider's subscription charges this tier at the trial's end
        get_provider(sub.provider).change_tier(sub, tier, prorate=False)
        _provider_told(sub, now)
        _record(sub, "trial_changed", sub.tier, tier, amount_cents=0, at=now)
        sub.tier = tier
    if sub.payment_method_on_file:
        _drop_checkout(sub, now, via="tier_change")
        return f"Your trial continues and converts to {get_tier(tier).title} when it ends."
    return _start_checkout(user, sub, tier, now, return_to)


def _upgrade_now(sub: UserSubscription, tier: str, now: datetime) -> str:
    """The running paid period switched to ``tier`` now, the rest of it charged at the
    difference (the provider prorates: the unused days of the tier paid for are credited).
    Over a period paid before a grant the tier paid for is the one granted (a grant never
    goes below it, and no tier lies above a grant higher than it): the upgrade ends the
    grant, the user paying for the higher tier from now on, as a checkout would have."""
    start = sub.current_period_start or now
    seconds_left = (sub.current_period_end - now).total_seconds()
    period_seconds = (sub.current_period_end - start).total_seconds()
    amount = prorated_upgrade_cents(sub.tier, tier, seconds_left, period_seconds)
    get_provider(sub.provider).change_tier(sub, tier, prorate=True)
    if sub.cancel_at_period_end or sub.complimentary:
        # the upgraded tier goes on: the provider renews it too (a grant had stopped that)
        get_provider(sub.provider).set_cancel_at_period_end(sub, False)
    _provider_told(sub, now)
    _record(sub, "upgraded", sub.tier, tier, amount_cents=amount, at=now, proration=True,
            period_end=sub.current_period_end.isoformat(),
            over_grant=True if sub.complimentary else None,
            # the grant as it was, for a refund of the upgrade to return to (``refunds``)
            grant_canceled=sub.cancel_at_period_end if sub.complimentary else None,
            grant_pending_tier=sub.pending_tier if sub.complimentary else None)
    sub.tier, sub.complimentary = tier, False
    _drop_checkout(sub, now, via="tier_change")
    _clear_scheduled_change(sub)
    return (f"Upgraded to {get_tier(tier).title} now; "
            f"{cents_to_decimal(amount)} is charged for the rest of this period.")


def _schedule_downgrade(sub: UserSubscription, tier: str, now: datetime) -> str:
    get_provider(sub.provider).change_tier(sub, tier, prorate=False)
    if sub.cancel_at_period_end:
        get_provider(sub.provider).set_cancel_at_period_end(sub, False)
    _provider_told(sub, now)
    sub.pending_tier, sub.cancel_at_period_end = tier, False
    _drop_checkout(sub, now, via="tier_change")
    _record(sub, "downgrade_scheduled", sub.tier, tier, at=now,
            effective_at=sub.current_period_end.isoformat())
    return f"You keep {get_tier(sub.tier).title} until the end of the period, then {tier}."


def _schedule_cancel(sub: UserSubscription, now: datetime, *, reason, comment, via) -> str:
    if sub.status == ACTIVE and sub.payment_method_on_file and not sub.complimentary \
            and _has_paid_period(sub) and sub.current_period_end <= now:
        _refuse_until_renewed(sub)  # the provider bills the next period already
    # a failed renewal's grace: the paid period is over and its renewal was never paid
    unpaid_renewal = sub.status == PAST_DUE and sub.current_period_end is not None \
        and sub.current_period_end <= now
    # a grant over a period paid for: the granted tier is kept until that period's end, as
    # any cancel keeps the tier in force until the end of the period (so no paid day is lost)
    granted_free = sub.complimentary and not _paid_period_running(sub, now)
    if sub.status != TRIALING and (granted_free or sub.current_period_end is None
                                   or unpaid_renewal):
        # nothing paid for: a complimentary, unbilled or unpaid paid tier ends at once (and
        # the provider stops retrying the charge that failed)
        if unpaid_renewal:
            get_provider(sub.provider).cancel_now(sub.provider_customer_id,
                                                  sub.provider_subscription_id)
        from_tier = sub.tier
        _to_starter(sub)
        _record(sub, "canceled", from_tier, STARTER, amount_cents=0, at=now, reason=reason,
                comment=comment, via=via)
        return "Your subscription is canceled; you are on the starter tier."
    if not sub.cancel_at_period_end:
        if sub.pending_tier and sub.pending_tier != STARTER:
            # the cancel replaces a downgrade that switched the provider's price: back to the
            # tier in force, which a resume renews
            get_provider(sub.provider).change_tier(sub, sub.tier, prorate=False)
        if not sub.complimentary:  # under a grant the provider renews nothing already
            get_provider(sub.provider).set_cancel_at_period_end(sub, True)
        # either way a provider event made before this cancel is older than it
        _provider_told(sub, now)
        sub.cancel_at_period_end, sub.pending_tier = True, STARTER
        ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
        _record(sub, "cancel_scheduled", sub.tier, STARTER, at=now, reason=reason,
                comment=comment, via=via, effective_at=ends.isoformat())
    ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
    return f"Canceled: you keep {get_tier(sub.tier).title} until {ends:%Y-%m-%d %H:%M} UTC."


def cancel(user_id: int, reason: str | None = None, comment: str | None = None,
           now: datetime | None = None) -> tuple[SubscriptionOverview, str]:
    """``DELETE /api/user/subscription``: cancel at the end of the period (or trial)."""
    now = now or clock.now()
    with unit_of_work() as work:
        sub = lock_or_create_subscription(user_id)
        apply_due_deadlines(sub, now)
        work.changed_user(sub.user_id)
        if sub.checkout_reference and sub.status == INCOMPLETE:
            _drop_checkout(sub, now, reason=reason, comment=comment)
            message = "The pending checkout is canceled."
        elif sub.tier == STARTER:
            fail(409, "conflict", "There is no paid subscription to cancel.")
        else:
            _drop_checkout(sub, now, reason=reason, comment=comment)
            message = _schedule_cancel(sub, now, reason=reason, comment=comment, via="cancel")
        view = overview(db.session.get(User, user_id), sub, now)
    return view, message


def _resume(sub: UserSubscription, now: datetime, *, keep_tier: bool = False) -> str:
    """Undo the scheduled cancel or downgrade. A cancel made in the billing portal after a
    downgrade asked here left the provider on the lower tier's price: undoing the cancel
    brings that downgrade back, due at the period's end, as the provider renews it; unless
    the user chose the tier in force again (``keep_tier``): then the provider is put back on
    its price. Either way what is shown is what the provider bills."""
    below = _provider_renews_below(sub)
    # under a grant the provider renews nothing (the grant is free): it is not told to
    if sub.cancel_at_period_end and not sub.complimentary:
        get_provider(sub.provider).set_cancel_at_period_end(sub, False)
    if (sub.pending_tier and sub.pending_tier != STARTER) or (below and keep_tier):
        get_provider(sub.provider).change_tier(sub, sub.tier, prorate=False)
    _provider_told(sub, now)
    _record(sub, "resumed", sub.pending_tier, sub.tier, at=now)
    _clear_scheduled_change(sub)
    if below and not keep_tier:
        sub.pending_tier = below
        _record(sub, "downgrade_scheduled", sub.tier, below, at=now, via="resume",
                effective_at=sub.current_period_end.isoformat())
        return (f"Resumed: you keep {get_tier(sub.tier).title} until "
                f"{sub.current_period_end:%Y-%m-%d %H:%M} UTC, then "
                f"{get_tier(below).title}, the tier your subscription renews at.")
    return f"Resumed: {get_tier(sub.tier).title} continues."


def resume(user_id: int, now: datetime | None = None) -> tuple[SubscriptionOverview, str]:
    """``POST /api/user/subscription/resume``: undo a scheduled cancel or downgrade."""
    now = now or clock.now()
    with unit_of_work() as work:
        sub = lock_or_create_subscription(user_id)
        apply_due_deadlines(sub, now)
        work.changed_user(sub.user_id)
        if not (sub.cancel_at_period_end or sub.pending_tier):
            fail(409, "conflict", "There is no scheduled cancellation or downgrade to undo.")
        refuse_while_restored(sub)
        message = _resume(sub, now)
        view = overview(db.session.get(User, user_id), sub, now)
    return view, message
