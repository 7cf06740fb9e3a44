"""The SPA's home in one call: a fixed, small number of queries whatever the data size."""

from __future__ import annotations

from sqlalchemy import case, func, literal, select

from ..extensions import db
from ..models import ListeningSession, SoundPackage, User
from ..models.listening import OPEN
from ..tiers import PACKAGE_LEVELS, can_access_level
from . import subscriptions, users
from .analytics import get_user_analytics

RECOMMENDED_COUNT = 6


def continue_listening(user: User) -> dict | None:
    """The caller's latest unfinished session, with its package (one query)."""
    row = db.session.execute(
        select(ListeningSession, SoundPackage)
        .join(SoundPackage, SoundPackage.id == ListeningSession.package_id)
        .where(ListeningSession.user_id == user.id, ListeningSession.status == OPEN)
        .order_by(ListeningSession.started_at.desc(), ListeningSession.id.desc())
        .limit(1)).first()
    if row is None:
        return None
    session, package = row
    return {"session_id": session.id, "started_at": session.started_at,
            "listened_seconds": session.listened_seconds,
            "max_duration_seconds": session.max_duration_seconds,
            "track_id": session.track_id, "package": package}


def recommended_packages(user: User, tier_name: str, favorite_categories,
                         limit: int = RECOMMENDED_COUNT) -> list[dict]:
    """Accessible published packages, best first (one query).

    Order: packages that lifted the caller's mood (biggest lift first), then packages without
    mood data from the caller's favourite categories, then the rest by popularity; packages
    whose sessions left the caller's mood unchanged or lower come last.
    """
    s, p = ListeningSession, SoundPackage
    mood = (select(s.package_id.label("package_id"),
                   func.avg(s.mood_after - s.mood_before).label("avg_change"))
            .where(s.user_id == user.id, s.mood_before.is_not(None), s.mood_after.is_not(None))
            .group_by(s.package_id).subquery())
    levels = [level for level in PACKAGE_LEVELS if can_access_level(tier_name, level)]
    favorites = [c for c in (favorite_categories or []) if isinstance(c, str)]
    outcome = case((mood.c.avg_change > 0, 0), (mood.c.avg_change.is_(None), 1), else_=2)
    favorite = case((p.category.in_(favorites), 0), else_=1) if favorites else literal(1)
    rows = db.session.execute(
        select(p, mood.c.avg_change, favorite.label("favorite"))
        .outerjoin(mood, mood.c.package_id == p.id)
        .where(p.published.is_(True), p.archived_at.is_(None), p.minimum_tier.in_(levels))
        .order_by(outcome, mood.c.avg_change.desc(), favorite, p.popularity.desc(), p.id)
        .limit(limit)).all()
    out = []
    for package, avg_change, is_favorite in rows:
        if avg_change is not None and avg_change > 0:
            reason = "mood"
        elif is_favorite == 0:
            reason = "favorite_category"
        else:
            reason = "popular"
        out.append({
            "id": package.id, "slug": package.slug, "title": package.title,
            "description": package.description, "category": package.category,
            "minimum_tier": package.minimum_tier, "duration_seconds": package.duration_seconds,
            "track_count": package.track_count, "locked": False, "reason": reason,
            "avg_mood_change": None if avg_change is None else round(float(avg_change), 2),
        })
    return out


def get_dashboard(user: User) -> dict:
    # First: on a cache miss it computes and commits, which would expire what is loaded.
    analytics = get_user_analytics(user)
    sub = subscriptions.get_subscription(user)
    profile = users.profile(user, sub)
    preferences = profile["preferences"]
    return {
        "profile": profile,
        "subscription": subscriptions.describe(user, sub),
        "analytics": analytics,
        "continue_listening": continue_listening(user),
        "recommended": recommended_packages(user, sub.tier,
                                            preferences.get("favorite_categories")),
        "onboarding": profile["onboarding"],
    }
