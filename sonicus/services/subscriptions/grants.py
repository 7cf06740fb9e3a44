"""An administrator's grant (``complimentary_grant``) over the user's own billing, on a LOCKED
row: the tier given free now, nothing charged again for it and nothing paid for taken away.
What the user may ask for under a grant is in ``changes``."""

from __future__ import annotations

from datetime import datetime

from ...api_errors import fail
from ...billing import get_provider
from ...models import UserSubscription
from ...models.subscription import ACTIVE, TRIALING
from ...tiers import get_tier, is_upgrade
from .common import (
    _clear_scheduled_change,
    _drop_checkout,
    _has_paid_period,
    _paid_period_under_grant,
    _provider_told,
    _record,
    ended_by_a_grant,
)
from .expiry import apply_due_deadlines


def grant_tier(sub: UserSubscription, tier: str, now: datetime, **details) -> bool:
    """An administrator's grant on a LOCKED row: ``tier`` now, free of charge (a
    ``complimentary_grant``); False when the user is already there (nothing changes).

    THE rule of a grant over the user's own billing: nothing is charged again for what is
    given free, and nothing paid for is taken away. The tier the user pays for is granted
    too (free from now on), not left as it is.
    - A paid period running, of a tier the grant does not go below: the period runs out as
      paid (the grant covers it) and the provider renews nothing (cancel at period end).
    - Any other provider subscription (a trial with a card, a failed renewal being retried,
      a period over and waiting for its renewal): canceled at the provider at once.
    - A grant below the tier of a paid period running: 409 ``conflict``, nothing changed
      (the user's own cancel or downgrade takes effect at the period's end). A period paid
      before an earlier grant still runs under it: a grant below the tier granted (which is
      not below the one paid for), a revoke to starter included, is 409 until it is over.
      A grant that cancels the provider's subscription at once ends the period it billed
      then: nothing paid runs under it, so a revoke is not held back.
    - A grant again of the tier granted undoes the user's cancel of it (which would end it
      with the paid period under it).
    - An open checkout is dropped (it can no longer be paid)."""
    apply_due_deadlines(sub, now)
    if sub.tier == tier and sub.status == ACTIVE and not sub.cancel_at_period_end \
            and (sub.complimentary or not get_tier(tier).is_paid):
        return False  # given already (the tier the user pays for is given free from now)
    paid_period = _paid_period_running(sub, now)
    if paid_period and is_upgrade(tier, sub.tier):
        fail(409, "conflict",
             f"The user has paid for {get_tier(sub.tier).title} until "
             f"{sub.current_period_end:%Y-%m-%d %H:%M} UTC; a lower tier cannot be granted "
             "over a paid period.")
    _drop_checkout(sub, now, via="complimentary_grant")
    canceled = _end_own_billing(sub, now, keep_paid_period=paid_period)
    if not paid_period and sub.current_period_end is not None and sub.current_period_end > now:
        # the provider's subscription ended here (a failed renewal): so did what it billed
        sub.current_period_end = now
    from_tier = sub.tier
    if sub.status == TRIALING:
        sub.trial_ends_at = None
    sub.tier, sub.status = tier, ACTIVE
    sub.complimentary = get_tier(tier).is_paid
    sub.tier_chosen_at = sub.tier_chosen_at or now
    sub.past_due_since = None
    _clear_scheduled_change(sub)
    # the provider subscription it canceled references the grant: never asked again
    _record(sub, "complimentary_grant", from_tier, tier, amount_cents=0, reference=canceled,
            at=now, **details)
    return True


def _paid_period_running(sub: UserSubscription, now: datetime) -> bool:
    """A period the user paid for runs now: their own, or one paid before a grant (kept
    when the grant was made: it runs out under the grant, without renewal)."""
    if sub.status != ACTIVE or sub.current_period_end is None \
            or sub.current_period_end <= now:
        return False
    return _has_paid_period(sub) or _paid_period_under_grant(sub)


def _end_own_billing(sub: UserSubscription, now: datetime, *,
                     keep_paid_period: bool) -> str | None:
    """The provider charges nothing more: a paid period running ends without renewal, any
    other provider subscription ends at once (its id returned once the provider confirmed).

    What the provider confirmed to an earlier grant is not asked for again, so a grant never
    waits on the provider when nothing needs asking: a subscription it canceled at once
    (``ended_by_a_grant``), or the renewal it stopped of the period paid for before it
    (``_paid_period_under_grant``: that period runs out, or ran out, unrenewed; a cancel
    undone in the billing portal since was asked for again, ``provider_updates``)."""
    if not sub.provider_subscription_id or ended_by_a_grant(sub) \
            or _paid_period_under_grant(sub):
        return None
    provider = get_provider(sub.provider)
    if keep_paid_period:
        if not sub.cancel_at_period_end:
            provider.set_cancel_at_period_end(sub, True)
        _provider_told(sub, now)
        return None
    provider.cancel_now(sub.provider_customer_id, sub.provider_subscription_id)
    _provider_told(sub, now)
    return sub.provider_subscription_id
