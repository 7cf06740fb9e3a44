"""What stays after an account is erased: a tombstone of the identity, and the provider
cancellations the erasure owes until the provider confirms them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow


class ErasureTombstone(Base):
    """One erased identity: salted hashes (HMAC-SHA256 with the app's secret key) of the OIDC
    subject and of the normalised email, nothing readable. Keeps the trial one per person."""

    __tablename__ = "erasure_tombstones"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_hash: Mapped[str] = mapped_column(String(64), index=True)
    email_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    trial_used: Mapped[bool] = mapped_column(Boolean, default=False)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OwedCancellation(Base):
    """A provider subscription an erasure must cancel (an outbox row): inserted in the
    erasure's transaction, tried once after its commit, retried by a periodic job with backoff
    until the provider confirms (``done_at``). Kept afterwards: later provider notices about
    this customer or subscription are recognised as an erased account's and change nothing."""

    __tablename__ = "owed_cancellations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_error: Mapped[str | None] = mapped_column(String(500))
    outcome: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_owed_cancellations_due", "done_at", "next_attempt_at"),
    )
