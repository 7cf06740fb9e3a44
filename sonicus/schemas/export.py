from __future__ import annotations

import marshmallow as ma

from ..models.listening import SESSION_STATUSES
from ..models.subscription import EVENT_TYPES, STATUSES
from .common import OneOf, TierField, UserBaseSchema


class _UserExport(UserBaseSchema):
    is_active = ma.fields.Boolean()
    updated_at = ma.fields.DateTime()


class _SubscriptionExport(ma.Schema):
    tier = TierField()
    status = OneOf(STATUSES)
    trial_used = ma.fields.Boolean()
    trial_ends_at = ma.fields.DateTime(allow_none=True)
    current_period_start = ma.fields.DateTime(allow_none=True)
    current_period_end = ma.fields.DateTime(allow_none=True)
    cancel_at_period_end = ma.fields.Boolean()
    pending_tier = TierField(allow_none=True)
    created_at = ma.fields.DateTime()


class _EventExport(ma.Schema):
    type = OneOf(EVENT_TYPES)
    from_tier = TierField(allow_none=True)
    to_tier = TierField(allow_none=True)
    amount_cents = ma.fields.Integer(allow_none=True)
    currency = ma.fields.String()
    reference = ma.fields.String(allow_none=True)
    details = ma.fields.Dict()
    at = ma.fields.DateTime()


class _LibraryExport(ma.Schema):
    package_id = ma.fields.Integer()
    assigned_at = ma.fields.DateTime()
    favorite = ma.fields.Boolean()


class _SessionExport(ma.Schema):
    id = ma.fields.Integer()
    package_id = ma.fields.Integer()
    track_id = ma.fields.Integer(allow_none=True)
    tier = TierField()
    status = OneOf(SESSION_STATUSES)
    started_at = ma.fields.DateTime()
    ended_at = ma.fields.DateTime(allow_none=True)
    listened_seconds = ma.fields.Integer()
    completed = ma.fields.Boolean()
    mood_before = ma.fields.Integer(allow_none=True)
    mood_after = ma.fields.Integer(allow_none=True)
    note = ma.fields.String(allow_none=True)
    client_id = ma.fields.String(allow_none=True)
    position_seconds = ma.fields.Integer(allow_none=True)
    end_reason = ma.fields.String(allow_none=True)


class _DownloadExport(ma.Schema):
    package_id = ma.fields.Integer()
    granted_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime()
    ended_at = ma.fields.DateTime(allow_none=True)


class _AssignmentExport(ma.Schema):
    package_id = ma.fields.Integer()
    assigned_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime(allow_none=True)
    revoked_at = ma.fields.DateTime(allow_none=True)


class _EarlierDaySettingsExport(ma.Schema):
    until = ma.fields.String(metadata={"description": "When these settings stopped counting."})
    timezone = ma.fields.String()
    day_start_hour = ma.fields.Integer()


class _KeptExport(ma.Schema):
    what = ma.fields.String(required=True)
    why = ma.fields.String(required=True)


class _AfterErasureExport(ma.Schema):
    statement = ma.fields.String(required=True)
    kept = ma.fields.List(ma.fields.Nested(_KeptExport), required=True)


class _EarlierErasureExport(ma.Schema):
    erased_at = ma.fields.DateTime(required=True)
    trial_used = ma.fields.Boolean(required=True)
    matched_by = ma.fields.List(ma.fields.String(), required=True, metadata={
        "description": "`subject` and/or `email`: what of yours matches the tombstone."})


class _PushSubscriptionExport(ma.Schema):
    id = ma.fields.Integer()
    endpoint = ma.fields.String()
    created_at = ma.fields.DateTime()
    updated_at = ma.fields.DateTime()
    expires_at = ma.fields.DateTime(allow_none=True)


class _ReminderExport(ma.Schema):
    local_day = ma.fields.Date()
    sent_at = ma.fields.DateTime(allow_none=True)
    pushes_sent = ma.fields.Integer()


class ExportSchema(ma.Schema):
    user = ma.fields.Nested(_UserExport, required=True)
    preferences = ma.fields.Dict(required=True)
    subscription = ma.fields.Nested(_SubscriptionExport, allow_none=True)
    subscription_events = ma.fields.List(ma.fields.Nested(_EventExport))
    library = ma.fields.List(ma.fields.Nested(_LibraryExport))
    sessions = ma.fields.List(ma.fields.Nested(_SessionExport))
    downloads = ma.fields.List(ma.fields.Nested(_DownloadExport), metadata={
        "description": "Offline licences, ended ones included."})
    assignments = ma.fields.List(ma.fields.Nested(_AssignmentExport), metadata={
        "description": "Packages an administrator gave you, ended and revoked ones included."})
    earlier_day_settings = ma.fields.List(ma.fields.Nested(_EarlierDaySettingsExport),
                                          metadata={
        "description": "Time zones and day start hours you replaced, as long as they are "
                       "remembered."})
    analytics = ma.fields.Dict(allow_none=True)
    reminder_preferences = ma.fields.Dict(metadata={
        "description": "As `GET /api/user/reminders` shows them."})
    push_subscriptions = ma.fields.List(ma.fields.Nested(_PushSubscriptionExport))
    reminders_sent = ma.fields.List(ma.fields.Nested(_ReminderExport))
    earlier_erasures = ma.fields.List(ma.fields.Nested(_EarlierErasureExport), metadata={
        "description": "Tombstones of erased accounts of your sign-in subject or email."})
    after_erasure = ma.fields.Nested(_AfterErasureExport, required=True, metadata={
        "description": "What stays after `DELETE /api/user/profile`, and why."})
