"""The SPA's home in one call: a fixed, small number of queries whatever the data size."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, literal, or_, select

from .. import clock
from ..extensions import db
from ..models import ListeningSession, SoundPackage, Track
from ..models.listening import ENDED, OPEN
from ..tiers import ACCESS_TIER, PACKAGE_LEVELS, can_access_level, package_access
from . import subscriptions
from .analytics import get_user_analytics
from .assignments import live_package_ids

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
class Recommendation:
    """A package worth playing next, and why (``RecommendedPackageSchema``)."""

    package: SoundPackage
    reason: str
    avg_mood_change: float | None
    access: str = ACCESS_TIER

    def __getattr__(self, name):
        return getattr(self.package, name)

    @property
    def locked(self) -> bool:
        return False  # only packages the caller can play are recommended


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


def continue_listening(user_id: int) -> ContinueListening | None:
    """The caller's latest unfinished session, with its package, track and resume position
    (one query): an open one, or one that ended short of completion with a position to
    resume from."""
    s = ListeningSession
    unfinished = or_(s.status == OPEN,
                     and_(s.status == ENDED, s.completed.is_(False),
                          s.position_seconds.is_not(None)))
    row = db.session.execute(
        select(s, SoundPackage, Track)
        .join(SoundPackage, SoundPackage.id == s.package_id)
        .outerjoin(Track, Track.id == s.track_id)
        .where(s.user_id == user_id, unfinished)
        .order_by(func.coalesce(s.position_updated_at, s.started_at).desc(), s.id.desc())
        .limit(1)).first()
    return None if row is None else ContinueListening(*row)


def recommended_packages(user_id: int, tier_name: str, favorite_categories,
                         limit: int = RECOMMENDED_COUNT,
                         now: datetime | None = None) -> list[Recommendation]:
    """Published packages the caller can play (tier or live assignment), best first (one
    query).

    Order: packages that lifted the caller's mood (biggest lift first), then packages without
    mood data from the caller's favourite categories, then the rest by popularity; packages
    whose sessions left the caller's mood unchanged or lower come last. Only sessions that
    count (``ListeningSession.counts_in_outcomes``) say anything about mood.
    """
    now = now or clock.now()
    s, p = ListeningSession, SoundPackage
    mood = (select(s.package_id.label("package_id"),
                   func.avg(s.mood_after - s.mood_before).label("avg_change"))
            .where(s.user_id == user_id, s.mood_before.is_not(None), s.mood_after.is_not(None),
                   s.counts_in_outcomes)
            .group_by(s.package_id).subquery())
    levels = [level for level in PACKAGE_LEVELS if can_access_level(tier_name, level)]
    assigned = p.id.in_(live_package_ids(user_id, now))
    favorites = [c for c in (favorite_categories or []) if isinstance(c, str)]
    outcome = case((mood.c.avg_change > 0, 0), (mood.c.avg_change.is_(None), 1), else_=2)
    favorite = case((p.category.in_(favorites), 0), else_=1) if favorites else literal(1)
    # A constant in ORDER BY would be read as a column position: order by favourites only
    # when there are some.
    order = [outcome, mood.c.avg_change.desc(), *([favorite] if favorites else []),
             p.popularity.desc(), p.id]
    rows = db.session.execute(
        select(p, mood.c.avg_change, favorite.label("favorite"), assigned.label("assigned"))
        .outerjoin(mood, mood.c.package_id == p.id)
        .where(p.published.is_(True), p.archived_at.is_(None),
               or_(p.minimum_tier.in_(levels), assigned))
        .order_by(*order).limit(limit)).all()
    out = []
    for package, avg_change, is_favorite, is_assigned in rows:
        if avg_change is not None and avg_change > 0:
            reason = "mood"
        elif is_favorite == 0:
            reason = "favorite_category"
        else:
            reason = "popular"
        out.append(Recommendation(
            package, reason, None if avg_change is None else round(float(avg_change), 2),
            package_access(tier_name, package.minimum_tier, bool(is_assigned))))
    return out


def get_dashboard(caller) -> Dashboard:
    return Dashboard(
        profile=caller,
        subscription=subscriptions.overview(caller),
        analytics=get_user_analytics(caller),
        continue_listening=continue_listening(caller.id),
        recommended=recommended_packages(caller.id, caller.tier,
                                         caller.preferences.get("favorite_categories")))
