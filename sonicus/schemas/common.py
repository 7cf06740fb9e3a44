from __future__ import annotations

from datetime import UTC

import marshmallow as ma

from ..clock import is_valid_timezone
from ..envelope import ResponseSchema
from ..models.user import ROLES
from ..tiers import PACKAGE_LEVELS, TIER_NAMES
from ..validation import InputSchema, QueryArgsSchema, has_bidi_controls

__all__ = ["QueryArgsSchema", "StrictSchema"]


class StrictSchema(InputSchema):
    """A request body's schema: unknown fields are errors; text and integers as
    ``validation.InputSchema`` accepts them (query arguments: ``QueryArgsSchema``)."""

    class Meta:
        unknown = ma.RAISE


def no_control_characters(value: str) -> None:
    """Refuse C0/C1 control characters (newlines, escape sequences) in a one-line text."""
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in value):
        raise ma.ValidationError("Must not contain control characters.")


def no_bidi_controls(value: str) -> None:
    """Refuse the bidirectional controls that reorder the text displayed around them."""
    if has_bidi_controls(value):
        raise ma.ValidationError("Must not contain bidirectional control characters "
                                 "(U+202A..U+202E, U+2066..U+2069).")


def validate_timezone(value: str) -> None:
    if not is_valid_timezone(value):
        raise ma.ValidationError("Not a valid IANA time zone.")


class UtcDateTime(ma.fields.AwareDateTime):
    """An instant with its UTC offset, read as UTC. One whose UTC time is outside the years 1
    to 9999 (an offset at either end of the range) is refused by the field."""

    default_error_messages = {"out_of_range": "Not a representable instant in UTC."}

    def _deserialize(self, value, attr, data, **kwargs):
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise self.make_error("out_of_range") from None


def Money(**kwargs) -> ma.fields.Decimal:  # noqa: N802  (a field factory)
    """An amount of money: integer cents in the database, a "9.99" string in the API."""
    metadata = {"type": "string", "format": "decimal", "example": "9.99",
                **kwargs.pop("metadata", {})}
    return ma.fields.Decimal(as_string=True, places=2, metadata=metadata, **kwargs)


class EmptySchema(ma.Schema):
    """An empty ``data`` object."""


class UsageSchema(ma.Schema):
    """Today's sessions against the tier's daily limit, in the user's own day."""

    sessions_today = ma.fields.Integer(required=True, metadata={
        "description": "Sessions started in the user's day that count toward the quota (a tap "
                       "given back does not)."})
    sessions_remaining = ma.fields.Integer(allow_none=True, required=True,
                                           metadata={"description": "null: unlimited"})
    resets_at = ma.fields.DateTime(required=True)


def OneOf(values, **kwargs) -> ma.fields.String:  # noqa: N802  (a field factory)
    """A string out of a fixed set, documented as an enum (the set comes from its one
    source in code: ``tiers.py``, the models)."""
    return ma.fields.String(validate=ma.validate.OneOf(tuple(values)), **kwargs)


def TierField(**kwargs) -> ma.fields.String:  # noqa: N802  (a field factory)
    return OneOf(TIER_NAMES, **kwargs)


class LimitsSchema(ma.Schema):
    daily_sessions = ma.fields.Integer(allow_none=True, required=True)
    max_session_minutes = ma.fields.Integer(allow_none=True, required=True)
    package_levels = ma.fields.List(OneOf(PACKAGE_LEVELS), required=True)
    offline_downloads = ma.fields.Boolean(required=True, metadata={
        "description": "Whether the tier may keep packages on a device (`/api/user/downloads`)."})


class TierSchema(ma.Schema):
    name = TierField(required=True)
    title = ma.fields.String(required=True)
    price = Money(required=True)
    price_cents = ma.fields.Integer(required=True)
    currency = ma.fields.Constant("USD")
    limits = ma.fields.Nested(LimitsSchema, required=True)


TierName = ma.fields.String(validate=ma.validate.OneOf(TIER_NAMES))


class UserBaseSchema(ResponseSchema):
    """The user fields every view of a user shows (profile, export, admin)."""

    id = ma.fields.Integer(required=True)
    email = ma.fields.String(required=True)
    display_name = ma.fields.String(allow_none=True, required=True)
    email_verified = ma.fields.Boolean(required=True)
    timezone = ma.fields.String(required=True)
    day_start_hour = ma.fields.Integer(required=True)
    day_settings_effective_at = ma.fields.DateTime(
        attribute="pending_day_settings_effective_at", allow_none=True, required=True,
        metadata={"description": "When the shown timezone and day_start_hour take effect for "
                                 "quotas, streaks and analytics (the next boundary of the day "
                                 "as it was before the change); null when nothing is pending."})
    role = OneOf(ROLES, required=True)
    created_at = ma.fields.DateTime(required=True)
