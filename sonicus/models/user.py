from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, Index, Integer, SmallInteger, String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

ROLE_USER, ROLE_ADMIN = "user", "admin"
DEFAULT_PREFERENCES = {"goals": [], "favorite_categories": [], "daily_goal_minutes": None,
                       "show_streaks": True}


def merge_preferences(stored: dict | None, changes: dict | None = None) -> dict:
    """The defaults, overlaid with what is stored, overlaid with ``changes``."""
    merged = dict(DEFAULT_PREFERENCES)
    merged.update(stored or {})
    merged.update(changes or {})
    return merged


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    oidc_sub: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    display_name: Mapped[str | None] = mapped_column(String(120))
    # The name last seen in the token: a change there overwrites display_name,
    # an edit by the user in the profile survives until it does.
    oidc_name: Mapped[str | None] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    day_start_hour: Mapped[int] = mapped_column(SmallInteger, default=0)
    preferences: Mapped[dict] = mapped_column(JSON, default=dict)
    role: Mapped[str] = mapped_column(String(16), default=ROLE_USER)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    # Joined into the sign-in query (every request needs the tier in force).
    subscription = relationship("UserSubscription", uselist=False, viewonly=True)

    __table_args__ = (
        Index("ix_users_email_lower", func.lower(email)),
        Index("ix_users_created_at", "created_at"),
    )

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def merged_preferences(self) -> dict:
        return merge_preferences(self.preferences)
