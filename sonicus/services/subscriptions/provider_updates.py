"""Changes made at the provider (its billing portal), arriving as
``customer.subscription.updated``, applied to a LOCKED subscription.

- The plan: the subscription item's price (``STRIPE_PRICE_IDS``) is the tier in force now. A
  price equal to the tier in force, or to a downgrade scheduled here (the provider switches the
  price at once, without charge, and the tier changes at the period's end), is our own change
  as the provider records it: nothing to do. Back to the tier in force while a downgrade is
  scheduled: the downgrade was undone there (``resumed``). Anything else: ``plan_changed``.
- ``cancel_at_period_end`` set or cleared there: ``cancel_scheduled`` / ``resumed``, as the API
  records them. Cleared while the price is a lower tier's (a downgrade asked here, then a
  cancel made there): that downgrade is due again at the period's end, as the provider bills.
- Under a grant over a period paid before it, the provider renews nothing: a cancel undone
  there is asked for again (``kept_canceled``), and the user's cancel of the grant is undone
  here (``resumed``): the granted tier goes on.
- Only what the event changed (its ``previous_attributes``) is looked at. An event the
  provider created before the state kept here (``provider_state_at``: the newest event applied
  or our own last change sent to the provider) or before the newest payment applied is stale
  and changes nothing; a replayed event id never reaches here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ...billing import get_provider
from ...models import UserSubscription
from ...models.subscription import ACTIVE, PAST_DUE, TRIALING
from ...tiers import STARTER, is_upgrade
from .common import (
    _clear_scheduled_change,
    _latest_payment_created,
    _note_provider_state,
    _of_another_subscription,
    _older_than_provider_state,
    _provider_told,
    _record,
)

PLAN_FIELDS = ("items", "plan")
CANCEL_FIELDS = ("cancel_at_period_end",)


def _stale(sub: UserSubscription, created: datetime) -> bool:
    latest_payment = _latest_payment_created(sub.user_id)
    return _older_than_provider_state(sub, created) or bool(
        latest_payment and created < latest_payment)


def _not_applicable(sub: UserSubscription, notice) -> str | None:
    """Why the notice cannot change this subscription; None when it can."""
    if not sub.provider_subscription_id or sub.complimentary or sub.tier == STARTER \
            or sub.status not in (ACTIVE, TRIALING, PAST_DUE):
        return "nothing_to_update"  # no running provider subscription of this account
    if _of_another_subscription(sub, notice):
        return "stale"  # an older subscription of this user
    if _stale(sub, notice.created):
        return "stale"
    return None


def _renewal_asked_under_a_grant(sub: UserSubscription, notice) -> bool:
    """The provider subscription a grant stopped renewing (kept while its paid period runs)
    says it renews again."""
    return bool(sub.complimentary and sub.provider_subscription_id
                and notice.subscription_id == sub.provider_subscription_id
                and notice.cancel_at_period_end is False and _changed(notice, CANCEL_FIELDS))


def _changed(notice, fields) -> bool:
    return notice.changed is None or any(field in notice.changed for field in fields)


def _stamp(notice) -> dict:
    return {"via": "provider", "provider_created": notice.created.isoformat(),
            "provider_event_id": notice.event_id}


def apply_subscription_updated(sub: UserSubscription, notice, now: datetime) -> str:
    """The provider's subscription changed; the outcome (``plan_changed``,
    ``cancel_scheduled``, ``resumed``, several joined by commas, or why nothing changed)."""
    if _renewal_asked_under_a_grant(sub, notice):
        return _renewal_under_a_grant(sub, notice, now)
    refused = _not_applicable(sub, notice)
    if refused:
        return refused
    notice = _flag_as_it_is_now(sub, notice)
    _note_provider_state(sub, notice.created)
    outcomes = []
    if notice.tier and _changed(notice, PLAN_FIELDS):
        outcomes.append(_plan(sub, notice, now))
    if notice.cancel_at_period_end is not None and _changed(notice, CANCEL_FIELDS):
        outcomes.append(_cancel_flag(sub, notice, now))
    return ",".join(o for o in outcomes if o) or "unchanged"


def _flag_as_it_is_now(sub: UserSubscription, notice):
    """A cancel set or cleared in the same second as the state kept here (our own last
    change sent to the provider, or the last notice applied): whole-second stamps cannot
    tell which came first, and the provider delivers notices in any order. The flag is then
    read from the provider as it is now, after both (the provider unreachable: 502, nothing
    kept, the notice comes again); a provider that cannot say keeps the notice's."""
    if notice.cancel_at_period_end is None or not _changed(notice, CANCEL_FIELDS) \
            or sub.provider_state_at is None \
            or notice.created.replace(microsecond=0) != sub.provider_state_at:
        return notice
    now_flag = get_provider(sub.provider).cancel_at_period_end_now(sub.provider_subscription_id)
    return notice if now_flag is None else replace(notice, cancel_at_period_end=now_flag)


def _renewal_under_a_grant(sub: UserSubscription, notice, now: datetime) -> str:
    """The cancel undone at the provider (its billing portal) under a grant over the period
    paid before it. The paid period renews nothing under a grant (``grants.grant_tier``: the
    tier is free), so the cancel is asked for again there (``kept_canceled``). What the user
    meant, the tier going on, holds here: the user's own cancel of the grant, which would end
    it with that period, is undone (``resumed``), as ``POST .../resume`` does; unless the
    provider made this before that cancel (stale)."""
    outcomes = []
    if sub.cancel_at_period_end and not _older_than_provider_state(sub, notice.created):
        _note_provider_state(sub, notice.created)
        _record(sub, "resumed", sub.pending_tier, sub.tier, at=now, **_stamp(notice))
        _clear_scheduled_change(sub)
        outcomes.append("resumed")
    get_provider(sub.provider).set_cancel_at_period_end(sub, True)
    _provider_told(sub, now)
    return ",".join([*outcomes, "kept_canceled"])


def _plan(sub: UserSubscription, notice, now: datetime) -> str | None:
    tier = notice.tier
    if tier == sub.tier:
        if sub.pending_tier and sub.pending_tier != STARTER:
            _record(sub, "resumed", sub.pending_tier, sub.tier, at=now, **_stamp(notice))
            sub.pending_tier = None
            return "resumed"
        return None
    if tier == sub.pending_tier:
        return None  # the downgrade scheduled here: it takes effect at the period's end
    from_tier, sub.tier = sub.tier, tier
    if sub.pending_tier != STARTER:
        sub.pending_tier = None
    _record(sub, "plan_changed", from_tier, tier, at=now, **_stamp(notice))
    return "plan_changed"


def _cancel_flag(sub: UserSubscription, notice, now: datetime) -> str | None:
    if notice.cancel_at_period_end and not sub.cancel_at_period_end:
        below = _price_below(sub, notice)
        sub.cancel_at_period_end, sub.pending_tier = True, STARTER
        ends = sub.trial_ends_at if sub.status == TRIALING else sub.current_period_end
        # the price it stays on, below the tier in force: what renews if the cancel is
        # undone (``changes._resume``; ``_downgrade_kept`` when undone in the portal)
        _record(sub, "cancel_scheduled", sub.tier, STARTER, at=now,
                effective_at=ends.isoformat() if ends else None, provider_tier=below,
                **_stamp(notice))
        return "cancel_scheduled"
    if not notice.cancel_at_period_end and sub.cancel_at_period_end:
        _record(sub, "resumed", sub.pending_tier, sub.tier, at=now, **_stamp(notice))
        _clear_scheduled_change(sub)
        _downgrade_kept(sub, notice, now)
        return "resumed"
    return None


def _price_below(sub: UserSubscription, notice) -> str | None:
    """The tier below the one in force whose price the provider's subscription is on: the
    notice's price, else a downgrade scheduled here (it switched the price; a cancel made in
    the portal leaves it). None when it is on the tier in force's price."""
    tier = notice.tier or (sub.pending_tier if sub.pending_tier != STARTER else None)
    return tier if tier and is_upgrade(tier, sub.tier) else None


def _downgrade_kept(sub: UserSubscription, notice, now: datetime) -> None:
    """The provider renews again, at the price of a tier below the one in force: a downgrade
    asked for here before the cancel (it switched the provider's price; a cancel made in the
    portal leaves it). That tier is what renews, so it is the change due at the period's end
    again, as the provider will bill it."""
    if notice.tier and is_upgrade(notice.tier, sub.tier) \
            and sub.status != TRIALING and sub.current_period_end is not None:
        sub.pending_tier = notice.tier
        _record(sub, "downgrade_scheduled", sub.tier, notice.tier, at=now,
                effective_at=sub.current_period_end.isoformat(), **_stamp(notice))
