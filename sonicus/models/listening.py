from __future__ import annotations

from datetime import date, datetime, timedelta

from sqlalchemy import (
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    and_,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

OPEN, ENDED = "open", "ended"
# end_reason of a session the stale sweep closed that never got a heartbeat: it was started and
# left, so it counts against the day's quota but nowhere else (not a 0-minute listen).
ABANDONED = "abandoned"
SESSION_STATUSES = (OPEN, ENDED)
# Why a session ended (``end_reason``): the listener completed or stopped it, or the server
# closed it after its maximum length, or closed it without a heartbeat (abandoned).
END_REASONS = ("completed", "stopped", "expired", ABANDONED)
# A session with less listened than this never counts in outcomes (see ``counts_in_outcomes``).
OUTCOME_MIN_LISTENED_SECONDS = 60


class ListeningSession(Base):
    """One listening session. ``local_day`` is the user's own day when it started."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    package_id: Mapped[int] = mapped_column(ForeignKey("sound_packages.id", ondelete="CASCADE"))
    track_id: Mapped[int | None] = mapped_column(ForeignKey("tracks.id", ondelete="SET NULL"))
    tier: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(8), default=OPEN)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    local_day: Mapped[date] = mapped_column(Date)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    max_duration_seconds: Mapped[int | None] = mapped_column(Integer)
    listened_seconds: Mapped[int] = mapped_column(Integer, default=0)
    # The server's word: the listened time reached 80% of the playable length
    # (services.listened.reaches_completion). What the client said is ``client_completed``.
    completed: Mapped[bool] = mapped_column(Boolean, default=False)
    client_completed: Mapped[bool | None] = mapped_column(Boolean)
    counts_toward_quota: Mapped[bool] = mapped_column(Boolean, default=True)
    mood_before: Mapped[int | None] = mapped_column(SmallInteger)
    mood_after: Mapped[int | None] = mapped_column(SmallInteger)
    note: Mapped[str | None] = mapped_column(Text)
    end_reason: Mapped[str | None] = mapped_column(String(16))
    # The client's own id for the session (a uuid): a start or an offline upload sent again
    # with the same id finds the same session (unique per user).
    client_id: Mapped[str | None] = mapped_column(String(36))
    # Where to resume: the last position reported in the track (or package), and when.
    position_seconds: Mapped[int | None] = mapped_column(Integer)
    position_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    package = relationship("SoundPackage")
    track = relationship("Track")

    @hybrid_property
    def counts_in_outcomes(self) -> bool:
        """THE rule of which sessions count in streaks, completion rates, mood outcomes and
        recommendations: not a refunded tap, and at least a minute listened."""
        return bool(self.counts_toward_quota
                    and self.listened_seconds >= OUTCOME_MIN_LISTENED_SECONDS)

    @counts_in_outcomes.inplace.expression
    @classmethod
    def _counts_in_outcomes_expression(cls):
        return and_(cls.counts_toward_quota.is_(True),
                    cls.listened_seconds >= OUTCOME_MIN_LISTENED_SECONDS)

    @hybrid_property
    def abandoned(self) -> bool:
        """Closed by the server without a single heartbeat: excluded from analytics."""
        return self.end_reason == ABANDONED

    @abandoned.inplace.expression
    @classmethod
    def _abandoned_expression(cls):
        return and_(cls.end_reason.is_not(None), cls.end_reason == ABANDONED)

    @property
    def ends_at(self) -> datetime | None:
        """When the tier's maximum length is reached; None when unlimited."""
        if self.max_duration_seconds is None:
            return None
        return self.started_at + timedelta(seconds=self.max_duration_seconds)

    __table_args__ = (
        Index("ix_user_sessions_user_id_started_at", "user_id", "started_at"),
        Index("ix_user_sessions_user_id_local_day", "user_id", "local_day"),
        Index("ix_user_sessions_status_started_at", "status", "started_at"),
        Index("ix_user_sessions_started_at", "started_at"),
        Index("ix_user_sessions_package_id", "package_id"),
        Index("ix_user_sessions_user_id_position_updated_at", "user_id",
              "position_updated_at"),
        UniqueConstraint("user_id", "client_id"),
    )
