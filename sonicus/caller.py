"""Who is signed in: the ``Caller``, read at sign-in from the user and their subscription,
immutable, and shared by the requests of one token for a few seconds (``caller_cache.py``). For
reading only: a service that changes the user takes ``caller.id`` and locks what it changes. The
sign-in that makes it: ``auth.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from . import clock
from .models import User, UserSubscription
from .models.subscription import ACTIVE, Onboarding
from .models.user import ROLE_ADMIN
from .tiers import STARTER


@dataclass(frozen=True, eq=False)
class Caller:
    """Who is signed in, as read at sign-in: immutable, shared by the requests of one token
    for a few seconds (``caller_cache``). For reading only: a service that changes the user
    takes ``caller.id`` and locks what it changes."""

    id: int
    email: str
    display_name: str | None
    email_verified: bool
    role: str
    timezone: str
    day_start_hour: int
    # The day settings in force before the shown ones, until this instant (clock.day_settings_at).
    prior_timezone: str | None
    prior_day_start_hour: int | None
    day_settings_effective_at: datetime | None
    earlier_day_settings: tuple  # before the prior ones (clock.day_settings_at)
    preferences: Mapping
    created_at: datetime
    tier: str
    status: str
    onboarding: Onboarding
    # When a deadline of the subscription may change the tier shown (None: none is ahead): a
    # cached caller is read again from then on.
    settles_at: datetime | None = None
    dump_memo: dict = field(default_factory=dict, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def pending_day_settings_effective_at(self) -> datetime | None:
        """When the shown day settings take effect; None when they are in force already."""
        return clock.pending_day_settings_at(self, clock.now())

    @classmethod
    def of(cls, user: User, sub: UserSubscription | None,
           settles_at: datetime | None = None) -> Caller:
        tier = sub.tier if sub is not None else STARTER
        status = sub.status if sub is not None else ACTIVE
        return cls(
            id=user.id, email=user.email, display_name=user.display_name,
            email_verified=bool(user.email_verified), role=user.role, timezone=user.timezone,
            day_start_hour=user.day_start_hour, prior_timezone=user.prior_timezone,
            prior_day_start_hour=user.prior_day_start_hour,
            day_settings_effective_at=user.day_settings_effective_at,
            earlier_day_settings=tuple(user.earlier_day_settings or ()),
            preferences=MappingProxyType(copy.deepcopy(user.merged_preferences)),
            created_at=user.created_at, tier=tier, status=status,
            onboarding=Onboarding.of(bool(user.email_verified), sub), settles_at=settles_at)
