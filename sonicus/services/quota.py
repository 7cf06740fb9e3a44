"""Today's usage against the tier's daily sessions, in the user's own day."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select

from .. import clock
from ..extensions import db
from ..models import ListeningSession, User
from ..tiers import TIERS


def sessions_on_day(user_id: int, day) -> int:
    return db.session.execute(
        select(func.count(ListeningSession.id)).where(
            ListeningSession.user_id == user_id,
            ListeningSession.local_day == day,
            ListeningSession.counts_toward_quota.is_(True),
        )).scalar_one()


def usage_today(user: User, tier_name: str, now: datetime | None = None) -> dict:
    """``{sessions_today, sessions_remaining, resets_at}``; remaining is None when unlimited."""
    now = now or clock.now()
    today = clock.local_day(now, user.timezone, user.day_start_hour)
    used = sessions_on_day(user.id, today)
    limit = TIERS[tier_name].daily_sessions
    return {
        "sessions_today": used,
        "sessions_remaining": None if limit is None else max(0, limit - used),
        "resets_at": clock.next_day_start(now, user.timezone, user.day_start_hour),
    }
