"""Where to resume: per package the caller can play now, the last reported track and position
(any device)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import aliased

from .. import clock
from ..extensions import db
from ..models import ListeningSession, SoundPackage
from ..pagination import Page, paginate
from .catalog import playable_now
from .listened import finished_since


def playback(user_id: int, tier_name: str, args: dict, now: datetime | None = None) -> Page:
    """Where to resume, one entry per package the caller can play now (``playable_now``):
    their session of it whose position was reported last (any device), newest first."""
    s = ListeningSession
    newest = func.row_number().over(
        partition_by=s.package_id,
        order_by=(s.position_updated_at.desc(), s.id.desc())).label("newest")
    ranked = (select(s, newest)
              .join(SoundPackage, and_(SoundPackage.id == s.package_id,
                                       playable_now(user_id, tier_name, now or clock.now())))
              .where(s.user_id == user_id, s.position_updated_at.is_not(None),
                     ~finished_since(s)).subquery())
    last = aliased(ListeningSession, ranked)
    stmt = (select(last).where(ranked.c.newest == 1)
            .order_by(last.position_updated_at.desc(), last.id.desc()))
    return paginate(db, stmt, args)
