"""THE tier table, and every access and limit rule that reads it.

Prices are integer cents; ``None`` means unlimited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from .envelope import ApiError

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
        }


TIERS: dict[str, Tier] = {
    STARTER: Tier(STARTER, 0, 0, 3, 15, (PUBLIC,), "Starter"),
    PREMIUM: Tier(PREMIUM, 1, 999, 10, 60, (PUBLIC, PREMIUM_LEVEL), "Premium"),
    PRO: Tier(PRO, 2, 1999, None, None, (PUBLIC, PREMIUM_LEVEL, PRO_EXCLUSIVE), "Pro"),
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


def check_package_access(tier_name: str, package_level: str, assigned: bool = False) -> str:
    """THE access check: 403 ``package_locked`` when neither the tier opens the level nor a
    live assignment (``assigned``) opens the package; else how it is open."""
    access = package_access(tier_name, package_level, assigned)
    if access == ACCESS_LOCKED:
        needed = LEVEL_MIN_TIER[package_level]
        raise ApiError(403, "package_locked",
                       f"This package needs the {TIERS[needed].title} tier or higher.",
                       data={"required_tier": needed})
    return access


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
