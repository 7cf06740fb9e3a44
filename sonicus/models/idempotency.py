"""Retry-safe writes: one row per ``Idempotency-Key`` a caller sent with a write."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime

RUNNING, DONE = "running", "done"


class IdempotencyKey(Base):
    """A caller's key and what it decided: ``running`` while the first request with it runs
    (the unique (user, key) pair decides which request that is), then ``done`` with the
    answer kept for replays until ``expires_at``. ``fingerprint`` is the SHA-256 of the
    method, path with query and body of that first request.

    The key of an account's erasure outlives the account (``user_id`` NULL), kept under
    ``subject_hash`` (the tombstone's salted hash of the OIDC subject) so that a retry of the
    erasure is its replay, not a new account (``users.erase_user``); a new account of that
    subject takes it over (``user_id`` set again) until it expires."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(8), default=RUNNING)
    response_status: Mapped[int | None] = mapped_column(SmallInteger)
    response_body: Mapped[str | None] = mapped_column(Text)
    # The answer's headers a replay repeats (Content-Type, Location, Retry-After).
    response_headers: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    subject_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("user_id", "key"),
        UniqueConstraint("subject_hash", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )
