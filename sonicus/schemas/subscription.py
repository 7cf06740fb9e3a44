"""Schemas of the subscription and billing areas: one set serves validation and OpenAPI."""

from __future__ import annotations

import marshmallow as ma
from flask import current_app

from ..models.subscription import CANCEL_REASONS, EVENT_TYPES, STATUSES
from ..origins import is_app_url
from ..pagination import PageArgsSchema
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


def validate_return_url(value: str) -> None:
    """A URL the browser is sent back to: under ``PUBLIC_BASE_URL`` or a ``CORS_ORIGINS``
    origin, in development also a local dev server (never somewhere else: an open redirect
    through the provider's page)."""
    if not is_app_url(current_app.config, value):
        raise ma.ValidationError("Must start with PUBLIC_BASE_URL or one of CORS_ORIGINS.")


def ReturnUrl(description: str):  # noqa: N802  (a field factory)
    return ma.fields.String(validate=[ma.validate.Length(min=1, max=2048), validate_return_url],
                            metadata={"description": description})


class SubscriptionChangeSchema(StrictSchema):
    tier = ma.fields.String(required=True, validate=ma.validate.OneOf(TIER_NAMES))
    start_trial = ma.fields.Boolean(load_default=False)
    success_url = ReturnUrl(
        "Where the browser goes after paying at `checkout.url` (as Stripe Checkout's "
        "`success_url`; `{CHECKOUT_SESSION_ID}` is kept for the provider to fill in). Must "
        "start with `PUBLIC_BASE_URL` or a `CORS_ORIGINS` origin (in development also "
        "`http://localhost:<port>` or `http://127.0.0.1:<port>`).")
    cancel_url = ReturnUrl(
        "Where the browser goes when the payment is abandoned at `checkout.url`; same rule "
        "as `success_url`.")


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
    """Only the page."""


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


class PortalRequestSchema(StrictSchema):
    return_url = ReturnUrl("Where the portal sends the browser back to; default "
                           "`PUBLIC_BASE_URL`. Must start with `PUBLIC_BASE_URL` or a "
                           "`CORS_ORIGINS` origin (in development also a local dev server).")


class PortalSchema(ma.Schema):
    url = ma.fields.String(required=True, metadata={
        "description": "The provider's billing portal; send the browser there (a GET)."})
