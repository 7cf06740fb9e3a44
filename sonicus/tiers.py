"""THE tier table, and every access and limit rule that reads it.

Prices are integer cents; ``None`` means unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .api_errors import ApiError

STARTER, PREMIUM, PRO = "starter", "premium", "pro"
PUBLIC, PREMIUM_LEVEL, PRO_EXCLUSIVE = "public", "premium", "pro_exclusive"


@dataclass(frozen=True)
class Tier:
    name: str
    rank: int
    price_cents: int
    daily_sessions: int | None
    max_session_minutes: int | None
    package_levels: tuple[str, ...]
    title: str
    offline_downloads: bool = False

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_cents) / 100

    @property
    def is_paid(self) -> bool:
        return self.price_cents > 0

    @property
    def max_session_seconds(self) -> int | None:
        return None if self.max_session_minutes is None else self.max_session_minutes * 60

    @property
    def limits(self) -> dict:
        return {
            "daily_sessions": self.daily_sessions,
            "max_session_minutes": self.max_session_minutes,
            "package_levels": list(self.package_levels),
            "offline_downloads": self.offline_downloads,
        }


TIERS: dict[str, Tier] = {
    STARTER: Tier(STARTER, 0, 0, 3, 15, (PUBLIC,), "Starter", offline_downloads=False),
    PREMIUM: Tier(PREMIUM, 1, 999, 10, 60, (PUBLIC, PREMIUM_LEVEL), "Premium",
                  offline_downloads=True),
    PRO: Tier(PRO, 2, 1999, None, None, (PUBLIC, PREMIUM_LEVEL, PRO_EXCLUSIVE), "Pro",
              offline_downloads=True),
}
TIER_NAMES = tuple(TIERS)
PAID_TIERS = tuple(name for name, tier in TIERS.items() if tier.is_paid)
PACKAGE_LEVELS = (PUBLIC, PREMIUM_LEVEL, PRO_EXCLUSIVE)
# How a user reaches a package (``package_access``).
ACCESS_TIER, ACCESS_ASSIGNED, ACCESS_LOCKED = "tier", "assigned", "locked"
ACCESS_KINDS = (ACCESS_TIER, ACCESS_ASSIGNED, ACCESS_LOCKED)
# The lowest tier that opens each package level.
LEVEL_MIN_TIER = {level: min((t for t in TIERS.values() if level in t.package_levels),
                             key=lambda t: t.rank).name
                  for level in PACKAGE_LEVELS}
# Open sessions of an unlimited tier are closed after this long.
UNLIMITED_SESSION_CLOSE_SECONDS = 3 * 3600
# An offline licence lasts this long from its grant (or renewal).
OFFLINE_LICENCE_DAYS = 30
# Subscription events after which the tier in force is the event's ``to_tier`` (the others
# schedule, start a checkout or note a payment without changing the tier): the fold of these,
# oldest first, is the tier at any instant (``tier_in_force_at``).
TIER_SETTING_EVENTS = frozenset({
    "signed_up", "tier_chosen", "trial_started", "trial_changed", "trial_converted",
    "trial_ended", "activated", "renewed", "upgraded", "downgraded", "canceled", "grace_ended",
    "lapsed", "complimentary_grant", "plan_changed", "refunded", "disputed"})


def get_tier(name: str) -> Tier:
    return TIERS[name]


def can_access_level(tier_name: str, package_level: str) -> bool:
    return package_level in TIERS[tier_name].package_levels


def package_access(tier_name: str, package_level: str, assigned: bool = False) -> str:
    """How a user reaches a package: ``assigned`` (a live assignment by an administrator opens
    it whatever the tier), ``tier`` (the tier opens its level) or ``locked``."""
    if assigned:
        return ACCESS_ASSIGNED
    if can_access_level(tier_name, package_level):
        return ACCESS_TIER
    return ACCESS_LOCKED


def check_package_access(tier_name: str, package_level: str, assigned: bool = False, *,
                         awaiting: str | None = None) -> str:
    """THE access check: 403 ``package_locked`` when neither the tier opens the level nor a
    live assignment (``assigned``) opens the package; else how it is open. When the tier
    ``awaiting`` its payment would open the level: 402 instead (``check_awaited_payment``)."""
    access = package_access(tier_name, package_level, assigned)
    if access == ACCESS_LOCKED:
        check_awaited_payment(awaiting, package_level)
        needed = LEVEL_MIN_TIER[package_level]
        raise ApiError(403, "package_locked",
                       f"This package needs the {TIERS[needed].title} tier or higher.",
                       data={"required_tier": needed})
    return access


def tier_in_force_at(changes, moment: datetime, current: str) -> str:
    """The tier in force at ``moment`` from the subscription's history: ``changes`` are the
    tier-setting events as ``(at, to_tier)``, oldest first. Before the first one (before the
    account existed) it is Starter; after the last one it is ``current`` (the row's tier)."""
    tier = STARTER
    for index, (at, to_tier) in enumerate(changes):
        if at > moment:
            return tier
        if index == len(changes) - 1:
            return current
        tier = to_tier or tier
    return current  # no history at all: the row is all there is


def check_offline_downloads(tier_name: str, assigned: bool = False, *,
                            awaiting: str | None = None, package_level: str = PUBLIC) -> None:
    """THE download rule: a tier with ``offline_downloads``, or a package assigned to the
    user, may be kept offline; else 403 ``feature_not_in_tier``, or 402 when the tier
    ``awaiting`` its payment would keep the package (``package_level``) offline."""
    if assigned or TIERS[tier_name].offline_downloads:
        return
    check_awaited_payment(awaiting, package_level, offline=True)
    needed = min((t for t in TIERS.values() if t.offline_downloads), key=lambda t: t.rank)
    raise ApiError(403, "feature_not_in_tier",
                   f"Offline downloads need the {needed.title} tier or higher.",
                   data={"required_tier": needed.name})


def check_awaited_payment(awaiting: str | None, package_level: str,
                          offline: bool = False) -> None:
    """THE rule of a tier chosen whose payment has not arrived (``awaiting``: the tier of the
    checkout an ``incomplete`` subscription waits on, else None). Asked only once the tier in
    force refused the package (``offline``: to keep it offline): when the awaited tier would
    open it (and keep it offline), 402 ``payment_required`` rather than the tier's 403."""
    if awaiting is None:
        return
    if keeps_offline(awaiting, package_level) if offline \
            else can_access_level(awaiting, package_level):
        raise ApiError(402, "payment_required",
                       f"The payment for the {TIERS[awaiting].title} tier has not arrived "
                       "yet; this opens once it does.")


def keeps_offline(tier_name: str, package_level: str) -> bool:
    """THE tier's part of a licence: the tier allows ``offline_downloads`` and opens the
    package's level (a live assignment keeps a package offline whatever the tier)."""
    return TIERS[tier_name].offline_downloads and can_access_level(tier_name, package_level)


def check_daily_quota(tier_name: str, used: int, resets_at: datetime, now: datetime) -> None:
    """THE quota rule: 429 ``daily_session_limit_reached`` once the day's starts reach the
    tier's limit, with ``resets_at`` (the start of the user's next day) and ``Retry-After``."""
    tier = TIERS[tier_name]
    if tier.daily_sessions is None or used < tier.daily_sessions:
        return
    retry_after = max(1, int((resets_at - now).total_seconds()))
    raise ApiError(429, "daily_session_limit_reached",
                   f"You have used today's {tier.daily_sessions} sessions of the "
                   f"{tier.title} tier.",
                   data={"resets_at": resets_at.isoformat()},
                   headers={"Retry-After": str(retry_after)})


def is_upgrade(from_tier: str, to_tier: str) -> bool:
    return TIERS[to_tier].rank > TIERS[from_tier].rank


def prorated_upgrade_cents(from_tier: str, to_tier: str, seconds_left: float,
                           period_seconds: float) -> int:
    """What an immediate upgrade costs for the rest of the current period, in cents."""
    if period_seconds <= 0:
        return 0
    difference = TIERS[to_tier].price_cents - TIERS[from_tier].price_cents
    share = max(0.0, min(1.0, seconds_left / period_seconds))
    return max(0, int((Decimal(difference) * Decimal(str(share))).to_integral_value()))
