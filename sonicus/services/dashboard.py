"""The SPA's home in one call: a fixed, small number of queries whatever the data size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from .. import clock
from ..extensions import db
from ..models import ListeningSession, SoundPackage, Track
from ..models.listening import ENDED, OPEN
from . import subscriptions
from .analytics import get_user_analytics
from .catalog import playable_now
from .listened import finished_since
from .recommendations import Recommendation, recommendations_for

RECOMMENDED_COUNT = 6


@dataclass(frozen=True)
class ContinueListening:
    """The latest unfinished session with its package, track and resume position
    (``ContinueListeningSchema``)."""

    session: ListeningSession
    package: SoundPackage
    track: Track | None = None

    @property
    def session_id(self) -> int:
        return self.session.id

    def __getattr__(self, name):
        return getattr(self.session, name)


@dataclass(frozen=True)
class Dashboard:
    profile: object
    subscription: object
    analytics: dict
    continue_listening: ContinueListening | None
    recommended: list[Recommendation]

    @property
    def onboarding(self):
        return self.profile.onboarding


def continue_listening(user_id: int, tier_name: str,
                       now: datetime | None = None) -> ContinueListening | None:
    """The caller's latest unfinished session, with its package, track and resume position
    (one query): an open one, or one that ended short of completion with a position to
    resume from. Only a package the caller can play now is offered: still in the catalog
    (an archived or unpublished one no longer plays) and opened by the tier in force
    (``tier_name``) or a live assignment (after a downgrade, a premium package would only
    answer 403 ``package_locked``). Nor one heard to completion since (``finished_since``)."""
    s = ListeningSession
    unfinished = or_(s.status == OPEN,
                     and_(s.status == ENDED, s.completed.is_(False),
                          s.position_seconds.is_not(None)))
    row = db.session.execute(
        select(s, SoundPackage, Track).select_from(s)
        .join(SoundPackage, and_(SoundPackage.id == s.package_id,
                                 playable_now(user_id, tier_name, now or clock.now())))
        .outerjoin(Track, Track.id == s.track_id)
        .where(s.user_id == user_id, unfinished, ~finished_since(s))
        .order_by(func.coalesce(s.position_updated_at, s.started_at).desc(), s.id.desc())
        .limit(1)).first()
    return None if row is None else ContinueListening(*row)


def get_dashboard(caller) -> Dashboard:
    return Dashboard(
        profile=caller,
        subscription=subscriptions.overview(caller),
        analytics=get_user_analytics(caller),
        continue_listening=continue_listening(caller.id, caller.tier),
        recommended=recommendations_for(caller.id, caller.tier, caller.preferences,
                                        RECOMMENDED_COUNT))
