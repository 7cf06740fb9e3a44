"""Schemas of the subscription and billing areas: one set serves validation and OpenAPI."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..envelope import PageArgsSchema
from ..models.subscription import CANCEL_REASONS, EVENT_TYPES, STATUSES
from ..tiers import TIER_NAMES
from .common import LimitsSchema, Money, OneOf, StrictSchema, TierField, UsageSchema
from .profile import OnboardingSchema


class CheckoutSchema(ma.Schema):
    provider = ma.fields.String(required=True, metadata={"example": "sandbox"})
    reference = ma.fields.String(required=True)
    url = ma.fields.String(allow_none=True, required=True)
    tier = TierField(required=True)
    amount = Money(allow_none=True)


class SubscriptionSchema(ma.Schema):
    tier = TierField(required=True, metadata={"description": "The tier in force now."})
    status = OneOf(STATUSES, required=True)
    price = Money(allow_none=True)
    trial_ends_at = ma.fields.DateTime(allow_none=True, required=True)
    trial_used = ma.fields.Boolean(required=True)
    current_period_start = ma.fields.DateTime(allow_none=True)
    current_period_end = ma.fields.DateTime(allow_none=True, required=True)
    cancel_at_period_end = ma.fields.Boolean(required=True)
    pending_tier = TierField(allow_none=True, metadata={
        "description": "The tier that takes over at the end of the period, if any."})
    past_due_since = ma.fields.DateTime(allow_none=True)
    grace_ends_at = ma.fields.DateTime(allow_none=True, metadata={
        "description": "When a past-due subscription falls back to starter."})
    payment_method_on_file = ma.fields.Boolean()
    complimentary = ma.fields.Boolean()
    checkout = ma.fields.Nested(CheckoutSchema, allow_none=True, metadata={
        "description": "A checkout waiting for payment."})
    limits = ma.fields.Nested(LimitsSchema, required=True)
    usage = ma.fields.Nested(UsageSchema, required=True)
    onboarding = ma.fields.Nested(OnboardingSchema)


class SubscriptionChangeSchema(StrictSchema):
    tier = ma.fields.String(required=True, validate=ma.validate.OneOf(TIER_NAMES))
    start_trial = ma.fields.Boolean(load_default=False)


class CancelSchema(StrictSchema):
    reason = ma.fields.String(validate=ma.validate.OneOf(CANCEL_REASONS), allow_none=True)
    comment = ma.fields.String(validate=ma.validate.Length(max=2000), allow_none=True)


class SubscriptionEventSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    type = OneOf(EVENT_TYPES, required=True, metadata={"example": "activated"})
    from_tier = TierField(allow_none=True, required=True)
    to_tier = TierField(allow_none=True, required=True)
    at = ma.fields.DateTime(required=True)
    amount = Money(allow_none=True)
    currency = ma.fields.String()
    reference = ma.fields.String(allow_none=True, required=True)
    details = ma.fields.Dict()


class HistoryArgsSchema(PageArgsSchema):
    class Meta:
        unknown = ma.RAISE


class WebhookResultSchema(ma.Schema):
    event_id = ma.fields.String(required=True)
    type = ma.fields.String(required=True)
    duplicate = ma.fields.Boolean(required=True, metadata={
        "description": "true: this event was received before; nothing changed."})
    outcome = ma.fields.String(required=True)


class SandboxConfirmResultSchema(ma.Schema):
    reference = ma.fields.String(required=True)
    duplicate = ma.fields.Boolean(required=True)
    outcome = ma.fields.String(required=True)


def _starts_with_base(url: str, base: str) -> bool:
    base = base.rstrip("/")
    return bool(base) and (url == base or url.startswith((base + "/", base + "?", base + "#")))


def validate_return_url(value: str) -> None:
    """A URL the browser is sent back to: under ``PUBLIC_BASE_URL`` or a ``CORS_ORIGINS``
    origin (never somewhere else: an open redirect through the provider's page)."""
    cfg = current_app.config
    bases = [cfg.get("PUBLIC_BASE_URL") or "", *(cfg.get("CORS_ORIGINS") or [])]
    if any(ch.isspace() or ord(ch) < 32 for ch in value) \
            or not any(_starts_with_base(value, base) for base in bases):
        raise ma.ValidationError("Must start with PUBLIC_BASE_URL or one of CORS_ORIGINS.")


class PortalRequestSchema(StrictSchema):
    return_url = ma.fields.String(
        validate=[ma.validate.Length(min=1, max=2048), validate_return_url],
        metadata={"description": "Where the portal sends the browser back to; default "
                                 "`PUBLIC_BASE_URL`. Must start with `PUBLIC_BASE_URL` or a "
                                 "`CORS_ORIGINS` origin."})


class PortalSchema(ma.Schema):
    url = ma.fields.String(required=True, metadata={
        "description": "The provider's billing portal; send the browser there (a GET)."})
