"""Arranging rows for the admin tests: users with a subscription state, a package, sessions."""

from __future__ import annotations

from datetime import UTC, datetime

from sonicus.extensions import db
from sonicus.models import ListeningSession, SoundPackage, User, UserSubscription


def add_user(email: str, *, name: str | None = None, tier: str = "starter",
             status: str = "active", is_active: bool = True, role: str = "user",
             created_at: datetime | None = None, **subscription) -> User:
    """A user whose ``oidc_sub`` matches the test provider's tokens for ``email``."""
    user = User(oidc_sub=f"sub-{email}", email=email, email_verified=True,
                display_name=name, oidc_name=name, role=role, is_active=is_active,
                timezone="UTC", day_start_hour=0, preferences={},
                **({"created_at": created_at} if created_at else {}))
    db.session.add(user)
    db.session.flush()
    db.session.add(UserSubscription(user_id=user.id, tier=tier, status=status, **subscription))
    db.session.commit()
    return user


def add_package(slug: str = "rain") -> SoundPackage:
    package = SoundPackage(slug=slug, title=slug.title(), description="", category="sleep",
                           minimum_tier="public", published=True, duration_seconds=1800,
                           track_count=0)
    db.session.add(package)
    db.session.commit()
    return package


def add_session(user: User | None, package: SoundPackage, started_at: datetime, *,
                status: str = "ended", listened_seconds: int = 600,
                counts_toward_quota: bool = True) -> ListeningSession:
    session = ListeningSession(
        user_id=user.id if user is not None else None, package_id=package.id, tier="starter",
        status=status, started_at=started_at, local_day=started_at.astimezone(UTC).date(),
        ended_at=started_at if status == "ended" else None, listened_seconds=listened_seconds,
        completed=status == "ended", counts_toward_quota=counts_toward_quota)
    db.session.add(session)
    db.session.commit()
    return session
