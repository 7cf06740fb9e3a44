"""Local users: sync from token claims, profile changes, export and erasure."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload

from ..envelope import ApiError
from ..extensions import db
from ..models import (
    AuditLog,
    ListeningSession,
    SubscriptionEvent,
    User,
    UserAnalytics,
    UserSoundPackage,
    UserSubscription,
)
from ..models.user import ROLE_ADMIN, ROLE_USER

DEFAULT_PREFERENCES = {"goals": [], "favorite_categories": [], "daily_goal_minutes": None,
                       "show_streaks": True}


def _claims_view(claims: dict) -> dict:
    groups = claims.get("groups") or []
    if not isinstance(groups, list):
        groups = []
    groups = [g for g in groups if isinstance(g, str)]
    name = claims.get("name") or claims.get("preferred_username")
    email = claims.get("email") or ""
    return {
        "email": email.strip()[:320] if isinstance(email, str) else "",
        "email_verified": claims.get("email_verified") is True,
        "name": name.strip()[:120] if isinstance(name, str) and name.strip() else None,
        "groups": groups,
    }


def sync_user_from_claims(claims: dict) -> User:
    """Find or create the user for these claims; write only when something changed."""
    cfg = current_app.config
    view = _claims_view(claims)
    admin_group, required_group = cfg["OIDC_ADMIN_GROUP"], cfg["OIDC_REQUIRED_GROUP"]
    is_admin = admin_group in view["groups"]
    if required_group and required_group not in view["groups"] and not is_admin:
        raise ApiError(403, "forbidden", "Your account is not allowed to use Sonicus.")
    role = ROLE_ADMIN if is_admin else ROLE_USER
    sub = claims["sub"]

    user = db.session.execute(
        select(User).options(joinedload(User.subscription)).where(User.oidc_sub == sub)
    ).scalar_one_or_none()
    if user is None:
        user = User(oidc_sub=sub, email=view["email"], email_verified=view["email_verified"],
                    display_name=view["name"], oidc_name=view["name"], role=role,
                    preferences=dict(DEFAULT_PREFERENCES), timezone="UTC", day_start_hour=0,
                    is_active=True)
        try:
            db.session.add(user)
            db.session.flush()
            db.session.add(UserSubscription(user_id=user.id, tier="starter", status="active"))
            db.session.add(SubscriptionEvent(user_id=user.id, type="signed_up", from_tier=None,
                                             to_tier="starter", amount_cents=0))
            db.session.commit()
        except IntegrityError:  # a concurrent first request created it
            db.session.rollback()
            user = db.session.execute(select(User).where(User.oidc_sub == sub)).scalar_one()
    else:
        changed = False
        if user.email != view["email"]:
            user.email, changed = view["email"], True
        if user.email_verified != view["email_verified"]:
            user.email_verified, changed = view["email_verified"], True
        if view["name"] != user.oidc_name:
            user.oidc_name = view["name"]
            user.display_name = view["name"]
            changed = True
        if user.role != role:
            user.role, changed = role, True
        if changed:
            db.session.commit()
    if not user.is_active:
        raise ApiError(403, "account_suspended", "This account is suspended.")
    return user


def update_profile(user: User, changes: dict) -> User:
    for field in ("display_name", "timezone", "day_start_hour"):
        if field in changes:
            setattr(user, field, changes[field])
    if "preferences" in changes:
        merged = dict(DEFAULT_PREFERENCES)
        merged.update(user.preferences or {})
        merged.update(changes["preferences"])
        user.preferences = merged
    db.session.commit()
    _invalidate_analytics(user.id)
    return user


def _invalidate_analytics(user_id: int) -> None:
    try:
        from .analytics import invalidate_user_analytics
    except ImportError:  # pragma: no cover - analytics not installed
        return
    invalidate_user_analytics(user_id)


def profile(user: User, sub: UserSubscription | None = None) -> dict:
    """The profile as the API shows it (``ProfileSchema``)."""
    from .subscriptions import get_subscription, onboarding

    sub = sub or get_subscription(user)
    return {
        "id": user.id, "email": user.email, "display_name": user.display_name,
        "timezone": user.timezone, "day_start_hour": user.day_start_hour,
        "email_verified": user.email_verified, "role": user.role, "tier": sub.tier,
        "created_at": user.created_at, "preferences": profile_preferences(user),
        "onboarding": onboarding(user, sub),
    }


def profile_preferences(user: User) -> dict:
    merged = dict(DEFAULT_PREFERENCES)
    merged.update(user.preferences or {})
    return merged


def export_user_data(user: User) -> dict:
    """Everything stored about the user, as one JSON-ready document."""
    subscription = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == user.id)).scalar_one_or_none()
    events = db.session.execute(
        select(SubscriptionEvent).where(SubscriptionEvent.user_id == user.id)
        .order_by(SubscriptionEvent.at)).scalars().all()
    library = db.session.execute(
        select(UserSoundPackage).where(UserSoundPackage.user_id == user.id)
        .order_by(UserSoundPackage.assigned_at)).scalars().all()
    sessions = db.session.execute(
        select(ListeningSession).where(ListeningSession.user_id == user.id)
        .order_by(ListeningSession.started_at)).scalars().all()
    analytics = db.session.get(UserAnalytics, user.id)
    return {
        "user": user, "preferences": profile_preferences(user), "subscription": subscription,
        "subscription_events": events, "library": library, "sessions": sessions,
        "analytics": analytics.data if analytics else None,
    }


def erase_user(user: User) -> None:
    """Erase the account and personal data; listening sessions are kept anonymised."""
    user_id = user.id
    db.session.execute(
        update(ListeningSession).where(ListeningSession.user_id == user_id)
        .values(user_id=None, note=None, mood_before=None, mood_after=None))
    db.session.execute(update(AuditLog).where(AuditLog.actor_id == user_id)
                       .values(actor_id=None, actor_label="erased user"))
    for model in (UserSoundPackage, SubscriptionEvent, UserSubscription, UserAnalytics):
        db.session.execute(delete(model).where(model.user_id == user_id))
    db.session.execute(delete(User).where(User.id == user_id))
    db.session.commit()
    _invalidate_analytics(user_id)
