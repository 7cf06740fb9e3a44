"""Reminder preferences and push subscriptions (API.md, Reminders)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import marshmallow as ma

from ..models.reminders import WEEKDAYS
from ..services import webpush
from ..validation import WideInteger
from .common import StrictSchema

_CLOCK_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")  # fullmatch: no "\n" after it
CLOCK_TIME_MESSAGE = "Must be a time HH:MM (00:00 to 23:59)."
# The latest expirationTime a date can hold: 9999-12-31T23:59:59.999Z in milliseconds.
LATEST_EXPIRATION_MILLIS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, UTC).timestamp()
                               * 1000)


def validate_clock_time(value: str) -> None:
    if not _CLOCK_TIME.fullmatch(value):
        raise ma.ValidationError(CLOCK_TIME_MESSAGE)


def validate_reminder_time(value: str) -> None:
    if value != "smart" and not _CLOCK_TIME.fullmatch(value):
        raise ma.ValidationError('Must be "smart" or a time HH:MM (00:00 to 23:59).')


def validate_days(value: list[str]) -> None:
    if len(set(value)) != len(value):
        raise ma.ValidationError("Each day at most once.")


class ReminderPreferencesSchema(ma.Schema):
    enabled = ma.fields.Boolean(required=True)
    time = ma.fields.String(required=True, metadata={
        "description": '"HH:MM" (the user\'s local time) or "smart": the local hour at which '
                       "the user most often starts sessions they complete (21:00 without "
                       "data)."})
    days = ma.fields.List(ma.fields.String(), required=True,
                          metadata={"description": "Days to remind on: mon, tue, ... sun."})
    quiet_start = ma.fields.String(allow_none=True, required=True)
    quiet_end = ma.fields.String(allow_none=True, required=True)
    weekly_recap = ma.fields.Boolean(required=True, metadata={
        "description": "Monday's reminder carries last week's recap."})
    smart_time = ma.fields.String(required=True, metadata={
        "description": 'What "smart" means for this user now (HH:MM).'})


class ReminderPreferencesUpdateSchema(StrictSchema):
    """Fields not given keep their value. Quiet hours come as a pair (both null: none)."""

    enabled = ma.fields.Boolean()
    time = ma.fields.String(validate=validate_reminder_time)
    days = ma.fields.List(ma.fields.String(validate=ma.validate.OneOf(WEEKDAYS)),
                          validate=validate_days)
    quiet_start = ma.fields.String(allow_none=True, validate=validate_clock_time)
    quiet_end = ma.fields.String(allow_none=True, validate=validate_clock_time)
    weekly_recap = ma.fields.Boolean()

    @ma.validates_schema
    def quiet_hours_pair(self, data, **kwargs):
        if not data:
            raise ma.ValidationError("Give at least one field to change.")
        given = [name for name in ("quiet_start", "quiet_end") if name in data]
        if len(given) == 1:
            missing = "quiet_end" if given == ["quiet_start"] else "quiet_start"
            raise ma.ValidationError("Quiet hours need both quiet_start and quiet_end.",
                                     missing)
        if given and (data["quiet_start"] is None) != (data["quiet_end"] is None):
            raise ma.ValidationError("Both null (no quiet hours) or both a time.", "quiet_end")
        if given and data["quiet_start"] is not None and data["quiet_start"] == data["quiet_end"]:
            raise ma.ValidationError("Must differ from quiet_start.", "quiet_end")


class PushKeysSchema(StrictSchema):
    p256dh = ma.fields.String(required=True, metadata={
        "description": "The browser's P-256 public key, base64url (65 bytes uncompressed)."})
    auth = ma.fields.String(required=True, metadata={
        "description": "The 16-byte authentication secret, base64url."})

    @ma.validates("p256dh")
    def valid_p256dh(self, value, **kwargs):
        problem = webpush.p256dh_problem(value)
        if problem:
            raise ma.ValidationError(problem)

    @ma.validates("auth")
    def valid_auth(self, value, **kwargs):
        problem = webpush.auth_problem(value)
        if problem:
            raise ma.ValidationError(problem)


class PushSubscriptionInputSchema(StrictSchema):
    """A W3C ``PushSubscription.toJSON()``: ``{endpoint, expirationTime, keys}``."""

    endpoint = ma.fields.String(required=True, metadata={
        "description": "The push service's address; must start with one of "
                       "WEBPUSH_ALLOWED_ENDPOINTS."})
    expirationTime = WideInteger(  # noqa: N815  (the W3C name; milliseconds pass 2**31)
        allow_none=True, strict=True,
        validate=ma.validate.Range(min=0, max=LATEST_EXPIRATION_MILLIS),
        metadata={"description": "Milliseconds since the epoch, as the browser gives it."})
    keys = ma.fields.Nested(PushKeysSchema, required=True)

    @ma.validates("endpoint")
    def allowed_endpoint(self, value, **kwargs):
        problem = webpush.endpoint_problem(value, webpush.allowed_endpoints())
        if problem:
            raise ma.ValidationError(problem)

    @ma.post_load
    def expiry(self, data, **kwargs):
        millis = data.pop("expirationTime", None)
        data["expires_at"] = (None if millis is None
                              else datetime.fromtimestamp(millis / 1000, UTC))
        return data


class PushSubscriptionCreatedSchema(ma.Schema):
    id = ma.fields.Integer(required=True)


class VapidPublicKeySchema(ma.Schema):
    public_key = ma.fields.String(required=True, metadata={
        "description": "The application server key: base64url of the uncompressed P-256 "
                       "point, for pushManager.subscribe({applicationServerKey})."})
