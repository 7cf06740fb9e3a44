from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, literal_column
from sqlalchemy.orm import Mapped, mapped_column, validates

from .base import Base, UTCDateTime, utcnow

ACTIVE, TRIALING, INCOMPLETE, PAST_DUE, CANCELED = (
    "active", "trialing", "incomplete", "past_due", "canceled")
STATUSES = (ACTIVE, TRIALING, INCOMPLETE, PAST_DUE, CANCELED)
CANCEL_REASONS = ("too_expensive", "not_using", "missing_features", "other")
# Every kind of subscription event (``SubscriptionEvent.type``): THE list; a row of another
# type is refused before it is written.
EVENT_TYPES = (
    "signed_up", "tier_chosen", "checkout_started", "checkout_abandoned", "activated",
    "renewed", "upgraded", "downgrade_scheduled", "downgraded", "cancel_scheduled", "canceled",
    "resumed", "trial_started", "trial_changed", "trial_ended", "trial_converted",
    "payment_method_added", "payment_failed", "grace_ended", "lapsed", "plan_changed",
    "complimentary_grant", "checkout_refunded", "refunded", "disputed",
)


@dataclass(frozen=True)
class Onboarding:
    """Where a new user stands: email verified, a tier chosen, no payment pending."""

    email_verified: bool
    tier_chosen: bool
    payment_pending: bool

    @property
    def completed(self) -> bool:
        return self.tier_chosen and self.email_verified and not self.payment_pending

    @classmethod
    def of(cls, email_verified: bool, sub: UserSubscription | None) -> Onboarding:
        if sub is None:
            return cls(bool(email_verified), False, False)
        return cls(bool(email_verified), sub.tier_chosen_at is not None, sub.status == INCOMPLETE)


def tier_awaiting_payment(sub) -> str | None:
    """The paid tier the user chose and whose payment has not arrived: the tier of the
    checkout an ``incomplete`` subscription waits on (None when none is pending: never
    started, paid, or abandoned, replaced or expired, which clears it). ``sub`` is the row,
    or any row of its ``status`` and ``checkout_tier``."""
    return sub.checkout_tier if sub.status == INCOMPLETE and sub.checkout_tier else None


class UserSubscription(Base):
    """One row per user: the tier in force and where its lifecycle stands."""

    __tablename__ = "user_subscriptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    tier: Mapped[str] = mapped_column(String(16), default="starter")
    status: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    trial_used: Mapped[bool] = mapped_column(Boolean, default=False)
    trial_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    current_period_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False)
    pending_tier: Mapped[str | None] = mapped_column(String(16))
    past_due_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    payment_method_on_file: Mapped[bool] = mapped_column(Boolean, default=False)
    complimentary: Mapped[bool] = mapped_column(Boolean, default=False)
    tier_chosen_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    provider: Mapped[str | None] = mapped_column(String(16))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    provider_subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    checkout_reference: Mapped[str | None] = mapped_column(String(255), unique=True)
    checkout_tier: Mapped[str | None] = mapped_column(String(16))
    checkout_url: Mapped[str | None] = mapped_column(String(1024))
    # The provider's own id of the pending checkout (a Stripe Checkout Session), to expire it
    # when the checkout is replaced or given up: it can then no longer be paid.
    checkout_session_id: Mapped[str | None] = mapped_column(String(255))
    # Where the browser goes after paying or abandoning the pending checkout (None: a page
    # of the provider's, or the sandbox's own).
    checkout_success_url: Mapped[str | None] = mapped_column(String(2048))
    checkout_cancel_url: Mapped[str | None] = mapped_column(String(2048))
    # How recent the provider's subscription state mirrored here is: the creation time of the
    # newest provider subscription event applied, or of our own last change sent to the
    # provider (whole seconds, as the provider stamps events). Older events are stale.
    provider_state_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_user_subscriptions_status_tier", "status", "tier"),
        Index("ix_user_subscriptions_current_period_end", "current_period_end"),
        Index("ix_user_subscriptions_trial_ends_at", "trial_ends_at"),
    )


class SubscriptionEvent(Base):
    """The subscription's history: every change, with money in integer cents."""

    __tablename__ = "subscription_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(48))
    from_tier: Mapped[str | None] = mapped_column(String(16))
    to_tier: Mapped[str | None] = mapped_column(String(16))
    amount_cents: Mapped[int | None] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    reference: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def amount(self) -> Decimal | None:
        """The amount in currency units (``amount_cents`` / 100)."""
        return None if self.amount_cents is None else Decimal(self.amount_cents) / 100

    @validates("type")
    def _known_type(self, _key, value: str) -> str:
        if value not in EVENT_TYPES:
            raise ValueError(f"unknown subscription event type {value!r} (see EVENT_TYPES)")
        return value

    __table_args__ = (
        Index("ix_subscription_events_user_id_at", "user_id", "at"),
        Index("ix_subscription_events_type_at", "type", "at"),
    )


# The payment ids a refund or a dispute is matched by (``details`` keys), each with an
# expression index on ``details ->> key`` (migration 0022, PostgreSQL).
PAYMENT_ID_INDEXES = {"charge_id": "ix_subscription_events_payment_charge",
                      "payment_intent_id": "ix_subscription_events_payment_intent",
                      "invoice_id": "ix_subscription_events_payment_invoice"}


def payment_id(key: str):
    """``details ->> key``, spelled as its index is (the key a literal in the statement)."""
    if key not in PAYMENT_ID_INDEXES:
        raise ValueError(f"not a payment id key: {key!r}")
    return SubscriptionEvent.details.op("->>", return_type=String)(literal_column(f"'{key}'"))


class BillingEvent(Base):
    """A webhook event received from the billing provider, kept for idempotency."""

    __tablename__ = "billing_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(96))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("uq_billing_events_provider_event_id", "provider", "event_id", unique=True),
    )


class HeldReversal(Base):
    """A refund or a dispute of a charge no account here can be tied to yet (its payment's
    notice has not arrived): the payment, when its notice comes, takes it into the user's
    history and grants nothing if it was given back in full (``refunds``). Only the
    provider's ids of the payment are kept, nothing about the person."""

    __tablename__ = "held_reversals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(16))  # refunded | disputed
    full: Mapped[bool] = mapped_column(Boolean)
    amount_cents: Mapped[int | None] = mapped_column(Integer)
    refunded_cents: Mapped[int | None] = mapped_column(Integer)
    # the refund's own amount and id, where its notice says (``billing.refund_amounts``)
    refund_cents: Mapped[int | None] = mapped_column(Integer)
    refund_id: Mapped[str | None] = mapped_column(String(255))
    charge_id: Mapped[str | None] = mapped_column(String(255), index=True)
    payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    invoice_id: Mapped[str | None] = mapped_column(String(255), index=True)
    provider_created: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
