"""Offline licences: a user may keep a package's audio on a device for a while."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow


class OfflineLicence(Base):
    """One row per user and package: granted (or renewed) at ``granted_at`` until
    ``expires_at``; ``ended_at`` when the user gave it back (``DELETE``).

    A licence is live at an instant while its own window holds AND the package is open to the
    user then (by the tier or a live assignment): a downgrade's period end or an assignment's
    end ends it without a write (``services.downloads``)."""

    __tablename__ = "offline_licences"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    package_id: Mapped[int] = mapped_column(ForeignKey("sound_packages.id", ondelete="CASCADE"))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    package = relationship("SoundPackage")

    def window_holds(self, moment: datetime) -> bool:
        return (self.granted_at <= moment < self.expires_at
                and (self.ended_at is None or moment < self.ended_at))

    __table_args__ = (UniqueConstraint("user_id", "package_id"),)
