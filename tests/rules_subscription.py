"""The subscription part of the pure model of Sonicus's rules (rules_model.py has the rest),
written from the contract (API.md) and not from the code: the tier in force as the history
tells it, and what money may change hands.

Nothing here imports the app. Times are aware UTC datetimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# ---- the subscription, as its history tells it --------------------------------------------

ACTIVE, TRIALING, INCOMPLETE, PAST_DUE = "active", "trialing", "incomplete", "past_due"
# Events after which the tier in force is the event's to_tier.
TIER_SETTING = {"signed_up", "tier_chosen", "trial_started", "trial_changed", "trial_converted",
                "trial_ended", "activated", "renewed", "upgraded", "downgraded", "canceled",
                "grace_ended", "lapsed", "complimentary_grant", "plan_changed", "refunded",
                "disputed"}
# A refund or dispute that ended the paid access its charge bought (``ended_access``).
ACCESS_ENDING = {"refunded", "disputed"}
STATUS_AFTER = {"trial_started": TRIALING, "trial_changed": TRIALING,
                "trial_converted": ACTIVE, "trial_ended": ACTIVE, "activated": ACTIVE,
                "renewed": ACTIVE, "upgraded": ACTIVE, "downgraded": ACTIVE, "canceled": ACTIVE,
                "grace_ended": ACTIVE, "lapsed": ACTIVE, "complimentary_grant": ACTIVE,
                "checkout_abandoned": None}
PENDING_CLEARED = {"resumed", "trial_started", "trial_converted", "trial_ended", "activated",
                   "upgraded", "downgraded", "canceled", "grace_ended", "lapsed",
                   "complimentary_grant"}
# A plan switched in the billing portal replaces a downgrade scheduled; a cancel scheduled
# stays (the provider still ends the subscription at the period's end).
DOWNGRADE_CLEARED = {"plan_changed"}


@dataclass
class Derived:
    tier: str = "starter"
    status: str = ACTIVE
    pending_tier: str | None = None


def derive_from_events(events: list[dict]) -> Derived:
    """Fold the subscription's history (oldest first) into the tier in force, its status and
    the change pending at the end of the period."""
    state = Derived()
    for event in events:
        kind, to_tier = event["type"], event["to_tier"]
        if kind in TIER_SETTING and to_tier is not None:
            state.tier = to_tier
        if kind in STATUS_AFTER and STATUS_AFTER[kind] is not None:
            state.status = STATUS_AFTER[kind]
        elif kind == "checkout_started" and state.tier == "starter" and state.status == ACTIVE:
            state.status = INCOMPLETE
        elif kind == "checkout_abandoned" and state.status == INCOMPLETE:
            state.status = ACTIVE
        elif kind == "payment_failed" and (event.get("details") or {}).get("grace_ends_at"):
            state.status = PAST_DUE
        ended = kind in ACCESS_ENDING and (event.get("details") or {}).get("ended_access")
        # a dispute won gave back the period it ended: to its end, renewing nothing
        given_back = kind == "disputed" and (event.get("details") or {}).get("restored_access")
        if ended or given_back:
            state.status = ACTIVE
        if given_back:
            state.pending_tier = "starter"
        elif kind == "disputed" and (event.get("details") or {}).get("restored_upgrade"):
            # an upgrade's dispute won: the upgrade to the period's end, then the tier the
            # provider renews (unless another change is due then)
            state.pending_tier = state.pending_tier or event["details"].get("renews_tier")
        elif kind in PENDING_CLEARED or ended:
            state.pending_tier = None
        elif kind in ACCESS_ENDING and (event.get("details") or {}).get("ended_upgrade") \
                and state.pending_tier == to_tier:
            state.pending_tier = None  # the upgrade taken back: the downgrade to it is done
        elif kind in DOWNGRADE_CLEARED and state.pending_tier != "starter":
            state.pending_tier = None
        elif kind == "cancel_scheduled":
            state.pending_tier = "starter"
        elif kind == "downgrade_scheduled":
            state.pending_tier = to_tier
    return state


GRACE = timedelta(days=3)


def tier_at(sub, now: datetime) -> str:
    """The tier a start at ``now`` is judged by: the row's, unless a deadline has passed that
    the expiry job has not written yet. A trial's end gives Starter without a card or when
    canceled, else the tier it converts to; a failed renewal's grace gives Starter; a paid
    period's end gives Starter after a cancel and the lower tier after a downgrade, and its
    grace gives Starter when no renewal came (a card on file renews in the sandbox); a grant
    over a period paid for that the user canceled gives Starter at that period's end."""
    due = []
    if sub.status == TRIALING and sub.trial_ends_at is not None:
        paid = sub.payment_method_on_file and not sub.cancel_at_period_end \
            and sub.pending_tier != "starter"
        due.append((sub.trial_ends_at, (sub.pending_tier or sub.tier) if paid else "starter"))
    if sub.status == PAST_DUE and sub.past_due_since is not None:
        due.append((sub.past_due_since + GRACE, "starter"))
    if sub.status in (ACTIVE, PAST_DUE) and sub.tier != "starter" and not sub.complimentary \
            and sub.current_period_end is not None:
        if sub.cancel_at_period_end or sub.pending_tier == "starter":
            due.append((sub.current_period_end, "starter"))
        elif sub.pending_tier is not None:
            due.append((sub.current_period_end, sub.pending_tier))
        elif sub.status == ACTIVE and not (sub.provider == "sandbox"
                                           and sub.payment_method_on_file):
            due.append((sub.current_period_end + GRACE, "starter"))  # no renewal came
    if sub.status == ACTIVE and sub.complimentary and sub.cancel_at_period_end \
            and sub.current_period_end is not None:
        # the user canceled a grant over a period paid for: it ends with that period
        due.append((sub.current_period_end, "starter"))
    passed = sorted(change for change in due if change[0] <= now)
    return passed[0][1] if passed else sub.tier


# ---- what money may change hands -----------------------------------------------------------

RANK = {"starter": 0, "premium": 1, "pro": 2}
# Outcomes of a provider notice that changed nothing here.
UNAPPLIED = ("stale", "nothing_to_update", "unknown_customer", "erased_customer")


def purchase_violations(tier: str, status: str, complimentary: bool, chosen: str,
                        answer: int, checkout_tier: str | None,
                        paid_period: bool = False) -> list[str]:
    """What choosing a tier may buy, from the subscription in force before (``tier`` as
    ``tier_at`` gives it). A checkout that charges (not a trial's card) is opened only for a
    tier above the one in force: never for one the user has, pays for or is given, which
    would charge again for days paid or given. Under a grant, a paid tier below the one
    granted (the tier of a period paid for before it included) is 409 ``conflict``. A tier
    above the one in force while a period the user paid for runs with a card on file
    (``paid_period``: their own, or one paid before a grant over it) is an upgrade of that
    period, prorated (its unused days credited), never a second, full-price checkout."""
    problems = []
    if checkout_tier is not None and status != TRIALING and RANK[checkout_tier] <= RANK[tier]:
        problems.append(f"a checkout for {checkout_tier} opened on {tier} ({status})")
    if complimentary and status == ACTIVE and 0 < RANK[chosen] < RANK[tier] and answer != 409:
        problems.append(f"{chosen} chosen under a grant of {tier} answered {answer}")
    if paid_period and status == ACTIVE and RANK[chosen] > RANK[tier] \
            and checkout_tier is not None:
        problems.append(f"a full-price checkout for {chosen} over a period paid for on {tier}")
    return problems


def grant_renewal_violations(granted: str | None, tier: str,
                             complimentary: bool) -> list[str]:
    """A grant in force (``granted``: its tier, nothing passed that ends it) is not ended
    by a notice of the provider's subscription it stopped renewing: not by a renewal (a
    cancel undone in the billing portal whose notice was lost), nor a failed charge. The
    tier stays the one granted, free."""
    if granted is None or (tier, complimentary) == (granted, True):
        return []
    return [f"a renewal notice ended a grant of {granted}: now {tier}"
            f"{' (free)' if complimentary else ' (paid)'}"]


def renewal_price_violations(tier: str, status: str, complimentary: bool,
                             cancel_at_period_end: bool, pending_tier: str | None,
                             price: str | None) -> list[str]:
    """What a paid subscription is shown to renew at (the tier after a downgrade scheduled,
    else the tier in force) is the price the provider renews at (``price``: the last plan
    change sent to it, else the tier paid for; None: not known). A cancel scheduled, a
    trial or a grant renews nothing here."""
    if price is None or status != ACTIVE or complimentary or tier == "starter" \
            or cancel_at_period_end or pending_tier == "starter":
        return []
    renews = pending_tier or tier
    return [] if renews == price else [f"shown renewing {renews}; the provider bills {price}"]


def renewal_violations(outcome: str, cancel_at_period_end: bool,
                       pending_tier: str | None) -> list[str]:
    """The provider says the subscription renews (``cancel_at_period_end`` cleared in its
    billing portal): unless the notice changed nothing here, the subscription shown has no
    end scheduled (under a grant the granted tier goes on, the provider asked again to renew
    nothing)."""
    if outcome in UNAPPLIED or not (cancel_at_period_end or pending_tier == "starter"):
        return []
    return [f"the provider renews ({outcome}) but the end is still scheduled"]


def repeated_cancellations(asked: list[str]) -> list[str]:
    """A provider subscription whose cancellation the provider confirmed is never asked to
    cancel again (by a later grant, a revoke or an erasure). ``asked``: every provider
    subscription id asked to cancel, in order (each confirmed)."""
    return sorted({sid for sid in asked if asked.count(sid) > 1})


def replaced_subscriptions_charging(replaced: list[tuple[str, str]],
                                    asked: list[str]) -> list[str]:
    """A provider subscription that another one took the place of (a checkout paid after a
    failed renewal's grace or a lapse, a trial's card) is asked to cancel then: the user
    never has two provider subscriptions charging, one of them unknown here. ``replaced``:
    (older, newer) provider subscription ids as the row went from one to the other;
    ``asked``: every provider subscription id asked to cancel (each confirmed)."""
    return [f"{old} left charging beside {new}" for old, new in replaced if old not in asked]


def trials_per_person(trials_by_email: dict[str, int]) -> list[str]:
    """One trial per person: the accounts verified with one email, at any time (several
    identities of one person at the provider, an account the provider moved to another
    address), and every account linked to them through shared addresses however far, start
    one trial between them, ever. ``trials_by_email``: each trial counted for every address
    of its person (its account's and those of every account linked to it) when it
    started: two trials of one person at the later one's start share an address."""
    return [f"{email}: {count} trials" for email, count in trials_by_email.items() if count > 1]


def trial_shown_violations(shown: dict[str, bool], used: dict[str, bool]) -> list[str]:
    """``trial_used`` as shown to each account is the truth: whether the person (any account
    sharing an email either has been verified with, live or erased) used the trial, so a
    trial asked would be 409 ``trial_already_used``. ``shown``/``used``: by identity name."""
    return [f"{name}: shown trial_used {shown[name]}, used {used[name]}"
            for name in shown if shown[name] != used[name]]


def cancel_flag_violations(outcomes: list[str], shown: bool, provider: bool) -> list[str]:
    """After the provider's notices of a subscription's cancel flag (any order, whatever
    their stamps), the flag shown is the provider's own, unless the notices changed nothing
    here (``UNAPPLIED``: not this account's running subscription)."""
    if all(o in UNAPPLIED for o in outcomes) or shown == provider:
        return []
    return [f"shown cancel_at_period_end {shown}; the provider's is {provider} ({outcomes})"]


def free_month_violations(events: list[dict]) -> list[str]:
    """A paid tier is activated by a payment of it: never by a notice that paid nothing (a
    trial's card notified after the trial ended), which would grant a month recorded at
    0.00."""
    return [f"{e['to_tier']} activated for {e['amount_cents']}" for e in events
            if e["type"] == "activated" and e["to_tier"] != "starter"
            and not e.get("amount_cents")]


def renewal_period_violations(outcome: str, paid_until: datetime,
                              period_end: datetime | None) -> list[str]:
    """A payment of the next period of the tier in force, the subscription running and not
    given free, renews it: the period runs until the one paid for ends (``paid_until``),
    whatever proration of a plan change the invoice carries besides."""
    if outcome == "renewed" and period_end is not None \
            and abs(period_end - paid_until) < timedelta(seconds=1):
        return []
    return [f"a renewal paid until {paid_until:%Y-%m-%d %H:%M} was {outcome}; "
            f"the period ends {period_end}"]


def refund_violations(full: bool, of_current_period: bool, before: str, after: str) -> list[str]:
    """Money given back ends what it paid for, and nothing else: a full refund or a dispute
    of the charge that paid the period in force (its own, not a grant's, and not over yet)
    ends the paid tier (starter); a partial refund, or one of an older period's charge (or of
    a period that is over, its renewal on its way), changes no tier."""
    if full and of_current_period:
        return [] if after == "starter" else [f"refunded in full, still {after}"]
    return [] if after == before else [f"a refund of {'part' if not full else 'an older'} "
                                       f"charge changed {before} to {after}"]


def dispute_won_violations(took: str | None, paid_until: datetime, now: datetime,
                           before: str, before_status: str, before_complimentary: bool,
                           after) -> list[str]:
    """A dispute won gives back what the dispute took, and nothing else: the tier it ended
    (``took``), to the end of the period the charge paid, shown ending then (nobody is
    charged again), when that period is not over and the user is on Starter (not a trial,
    not a grant); otherwise no tier changes (a lost one, or an inquiry closed, changes
    nothing: ignored)."""
    gives_back = took is not None and paid_until > now and before == "starter" \
        and before_status in (ACTIVE, INCOMPLETE) and not before_complimentary
    if not gives_back:
        return [] if after.tier == before else [f"a win changed {before} to {after.tier}"]
    if (after.tier, after.cancel_at_period_end) == (took, True) \
            and after.current_period_end is not None \
            and abs(after.current_period_end - paid_until) < timedelta(seconds=1):
        return []
    return [f"a win of a {took} period paid until {paid_until:%Y-%m-%d %H:%M} left "
            f"{after.tier} until {after.current_period_end}, cancel {after.cancel_at_period_end}"]


def restored_change_violations(restored: bool, answer: int, before, after) -> list[str]:
    """A period a won dispute gave back renews nothing: a resume (or the same or a lower paid
    tier) is 409 and changes nothing of it."""
    if not restored:
        return []
    if answer == 409 and (after.tier, after.cancel_at_period_end, after.current_period_end) \
            == (before.tier, before.cancel_at_period_end, before.current_period_end):
        return []
    return [f"a resume of a period given back by a won dispute answered {answer}"]


def refund_amount_violations(given_back: list[int], charged: int,
                             notified: list[int] | None = None) -> list[str]:
    """Each refund in the history shows the money it gave back: a charge's refunds add up
    to what was refunded of it, never more than it charged (the provider's running total
    shown on each refund counted the first refund again in the next). With the refunds
    whose notices arrived (``notified``, each refund's own amount as its notice says), the
    history shows exactly those, once each, whatever order the notices came in (a refund
    notified before an earlier one showed both)."""
    total = sum(given_back)
    problems = [] if total <= charged else [
        f"refunds of a charge of {charged} shown as {given_back}, {total} given back in all"]
    if notified is not None and sorted(given_back) != sorted(notified):
        problems.append(f"refunds of amounts {sorted(notified)} shown as {sorted(given_back)}")
    return problems


def unmatched_refund_violations(before: str, after: str) -> list[str]:
    """A refund of a charge no payment here matches, smaller than what paid the period, takes
    back no more than it can be tied to: never the paid tier (starter), at most an upgrade
    made in the period (a lower paid tier)."""
    if before == "starter" or after == before:
        return []
    if after != "starter" and RANK[after] < RANK[before]:
        return []
    return [f"an unmatched refund smaller than the period's payment changed {before} to {after}"]


def renewing_window_cancel_violations(in_window: bool, answer: int, tier_before: str,
                                      tier_after: str, cancel_after: bool) -> list[str]:
    """Between a paid period's end and the provider's renewal notice the provider bills the
    next period already: a cancel asked then is 409 and changes nothing (the tier stays,
    nothing is scheduled), as a change of paid tier then is; once the renewal is known it
    is a cancel at the new period's end, as the provider does it."""
    if not in_window:
        return []
    if answer == 409 and tier_after == tier_before and not cancel_after:
        return []
    return [f"a cancel while the renewal was on its way answered {answer}: "
            f"{tier_before} -> {tier_after}, cancel_at_period_end {cancel_after}"]
