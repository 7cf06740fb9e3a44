"""What the cache keeps of a user's analytics (``services.analytics`` computes, stores and
serves them): the key, the settings the figures were computed under, forgetting them, and
the check after a write that the account was not erased meanwhile (``still_there``).

An erasure forgets the cache after its commit; a refresh or a read that computed the figures
before it and writes them after that forgetting would leave the erased account's figures
cached until they expire. Each writer checks, after its write, that the account is there.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from ..cache import cache_delete
from ..extensions import db
from ..models import User
from ..models.user import merge_preferences
from .recaps import forget_user_recaps


def cache_key(user_id: int) -> str:
    return f"analytics:{user_id}"


def settings_stamp(person) -> str:
    """The user's settings that their figures depend on (the goal, ``show_streaks``, the day
    settings over time), as one string. The cache keeps it beside the figures and serves them
    only to a reader with the same settings: a refresh that read the user before a profile
    change stores its figures after that change forgot the cache, and they must not show a
    streak the user just hid, or the goal they replaced."""
    preferences = merge_preferences(dict(person.preferences or {}))
    effective_at = person.day_settings_effective_at
    return json.dumps([preferences.get("daily_goal_minutes"),
                       preferences.get("show_streaks") is not False,
                       person.timezone, person.day_start_hour, person.prior_timezone,
                       person.prior_day_start_hour,
                       None if effective_at is None else effective_at.isoformat(),
                       list(person.earlier_day_settings or ())],
                      sort_keys=True, default=str)


def settings_version(user) -> int:
    """The version of the user's settings (``updated_at`` in microseconds, moved forward by a
    settings change): processes that saw a later one drop figures computed under this."""
    return int(user.updated_at.timestamp() * 1_000_000)


def invalidate_user_analytics(user_id: int) -> None:
    """Forget the user's cached analytics and recaps (profile changed, account erased), in
    every process: while this process skips Redis the deletes are owed, not lost."""
    cache_delete(cache_key(user_id), critical=True)
    forget_user_recaps(user_id)


def still_there(user_id: int) -> bool:
    """After caching a user's figures: False (and they are forgotten) when the account was
    erased meanwhile. The erasure forgets the cache after its commit: read after the cache
    was written, either the account is gone here or that forgetting comes after the write.
    One look-up by primary key, a statement of its own (the default isolation: it sees an
    erasure committed since the transaction began)."""
    if db.session.execute(select(User.id).where(User.id == user_id)).first() is not None:
        return True
    invalidate_user_analytics(user_id)
    return False
