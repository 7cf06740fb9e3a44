"""Reminders: a user's reminder preferences, their push subscriptions (one per device), and
the one reminder per user day (``ReminderDelivery``: its unique key decides who sends)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # bit i: ISO weekday i + 1
ALL_DAYS_MASK = (1 << len(WEEKDAYS)) - 1
SMART = None  # ``remind_minute`` of a "smart" time


def days_to_mask(days) -> int:
    return sum(1 << WEEKDAYS.index(day) for day in set(days))


def mask_to_days(mask: int) -> list[str]:
    return [day for i, day in enumerate(WEEKDAYS) if mask & (1 << i)]


class ReminderPreferences(Base):
    """When a user wants a reminder. Times are minutes after local midnight (wall clock of
    the user's time zone). No row: the defaults (disabled)."""

    __tablename__ = "reminder_preferences"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # None: "smart", the local hour at which the user most often starts sessions they
    # complete (``smart_minute``, computed in SQL by the reminder job), 21:00 without data.
    remind_minute: Mapped[int | None] = mapped_column(SmallInteger)
    days_mask: Mapped[int] = mapped_column(SmallInteger, default=ALL_DAYS_MASK)
    quiet_start_minute: Mapped[int | None] = mapped_column(SmallInteger)
    quiet_end_minute: Mapped[int | None] = mapped_column(SmallInteger)
    weekly_recap: Mapped[bool] = mapped_column(Boolean, default=True)
    smart_minute: Mapped[int | None] = mapped_column(SmallInteger)
    smart_computed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        # the reminder scan reads enabled rows only
        Index("ix_reminder_preferences_enabled", "user_id",
              postgresql_where=enabled.is_(True), sqlite_where=enabled.is_(True)),
    )


class PushSubscription(Base):
    """A browser's W3C PushSubscription: where to post (``endpoint``, a push service's
    address) and the keys to encrypt for (RFC 8291). An endpoint belongs to one user: the
    last one to subscribe on that browser."""

    __tablename__ = "push_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    endpoint: Mapped[str] = mapped_column(String(2048), unique=True)
    p256dh: Mapped[str] = mapped_column(String(100))
    auth: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (Index("ix_push_subscriptions_user_id", "user_id"),)


class ReminderDelivery(Base):
    """The reminder of one user day: inserted before anything is sent; the unique key
    (user, user day) lets exactly one worker send it."""

    __tablename__ = "reminder_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    local_day: Mapped[date] = mapped_column(Date)
    recap: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # its sending began
    pushes_sent: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (
        UniqueConstraint("user_id", "local_day"),
        Index("ix_reminder_deliveries_local_day", "local_day"),
    )
