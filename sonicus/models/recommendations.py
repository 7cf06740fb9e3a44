"""The mood-outcome model behind recommendations (built by services.recommendation_model,
read by services.recommendations).

Built in SQL by a periodic platform job from the sessions that count
(``ListeningSession.counts_in_outcomes``) with a mood before and after; a user's own rows are
rebuilt again with their analytics refresh. Lifts are ``mood_after - mood_before``; "adjusted"
sums have the user's rating bias taken out. The rows hold sums, not means, so a reader can
take a user's own sessions out of a group's figures before using them as that user's prior.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow
from .user import GOAL_KEY_MAX_LENGTH

# Starting-mood bands of "people like you": the mean mood_before of a user's counting sessions.
BAND_LOW, BAND_MID, BAND_HIGH, BAND_ANY = "low", "mid", "high", "any"


class RecommendationParams(Base):
    """The model's platform-wide figures (one row, id 1): the variance components and the
    shrinkage strengths estimated from them."""

    __tablename__ = "recommendation_params"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer, default=0)
    mean_lift: Mapped[float] = mapped_column(Float, default=0.0)
    # Within a (user, package): the session-to-session noise; between users: how much a
    # user's true lift for a package varies around the package's.
    noise_variance: Mapped[float] = mapped_column(Float, default=0.0)
    user_variance: Mapped[float] = mapped_column(Float, default=0.0)
    # Pseudo-sessions of prior weight: a user's own mean toward the group's (k_user), a
    # cohort's toward the package's (k_cohort), a package's toward no effect (k_package).
    k_user: Mapped[float] = mapped_column(Float)
    k_cohort: Mapped[float] = mapped_column(Float)
    k_package: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PackageOutcome(Base):
    """Every user's counting sessions of one package."""

    __tablename__ = "package_outcomes"

    package_id: Mapped[int] = mapped_column(
        ForeignKey("sound_packages.id", ondelete="CASCADE"), primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer)
    users: Mapped[int] = mapped_column(Integer)
    lift_sum: Mapped[float] = mapped_column(Float)
    adjusted_sum: Mapped[float] = mapped_column(Float, default=0.0)


class CohortOutcome(Base):
    """The counting sessions of one package by the users with one goal (by its key,
    ``models.user.goal_key``) and one starting-mood band (``any``: every band)."""

    __tablename__ = "cohort_outcomes"

    goal: Mapped[str] = mapped_column(String(GOAL_KEY_MAX_LENGTH), primary_key=True)
    band: Mapped[str] = mapped_column(String(8), primary_key=True)
    package_id: Mapped[int] = mapped_column(
        ForeignKey("sound_packages.id", ondelete="CASCADE"), primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer)
    users: Mapped[int] = mapped_column(Integer)
    lift_sum: Mapped[float] = mapped_column(Float)
    adjusted_sum: Mapped[float] = mapped_column(Float)


class UserOutcomeProfile(Base):
    """One user's rating bias (their lifts beyond each package's mean, shrunk) and starting-mood
    band.

    The per-user tables carry no foreign keys: they are derived rows the job rewrites in bulk
    (a foreign-key check per inserted row made the rebuild ten times slower). Erasing a user
    deletes their rows (``services.users.erase_user``); each rebuild drops any other orphan."""

    __tablename__ = "user_outcome_profiles"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer)
    bias: Mapped[float] = mapped_column(Float)
    band: Mapped[str] = mapped_column(String(8))
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UserPackageOutcome(Base):
    """One user's counting sessions of one package (sums of lifts, squared lifts and moods
    before); ``recent_negative``: the two latest of them both lowered the mood."""

    __tablename__ = "user_package_outcomes"

    user_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sessions: Mapped[int] = mapped_column(Integer)
    lift_sum: Mapped[float] = mapped_column(Float)
    lift_squares: Mapped[float] = mapped_column(Float)
    mood_before_sum: Mapped[float] = mapped_column(Float)
    recent_negative: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_user_package_outcomes_package_id", "package_id"),)
