"""Schemas of the admin area: platform stats, user management, jobs and the audit log."""

from __future__ import annotations

import marshmallow as ma

from ..models.subscription import STATUSES
from ..pagination import PageArgsSchema
from ..tiers import TIER_NAMES
from .common import (
    OneOf,
    QueryArgsSchema,
    StrictSchema,
    TierField,
    TierName,
    UsageSchema,
    UserBaseSchema,
    no_control_characters,
)
from .subscription import SubscriptionSchema

SUSPENDED = "suspended"
USER_STATUS_FILTERS = (*STATUSES, SUSPENDED)


# ---- platform stats ----------------------------------------------------------------------

class PlatformStatsQuerySchema(QueryArgsSchema):
    refresh = ma.fields.Boolean(load_default=False, metadata={
        "description": "Compute now instead of serving the cached figures."})


class PlatformStatsSchema(ma.Schema):
    users_total = ma.fields.Integer(required=True)
    users_suspended = ma.fields.Integer(required=True)
    users_by_tier = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Integer(),
                                   required=True, metadata={
                                       "example": {"starter": 120, "premium": 30, "pro": 7}})
    active_subscriptions = ma.fields.Integer(required=True, metadata={
        "description": "Paid tiers in force (active or past_due), complimentary included."})
    paying_subscriptions = ma.fields.Integer(required=True, metadata={
        "description": "Paid tiers in force that are paid for (not complimentary)."})
    complimentary_subscriptions = ma.fields.Integer(required=True)
    trialing = ma.fields.Integer(required=True)
    mrr = ma.fields.String(required=True, metadata={
        "example": "123.45", "description": "Monthly recurring revenue, exact, in currency."})
    currency = ma.fields.String(required=True, metadata={"example": "USD"})
    sessions_today = ma.fields.Integer(required=True, metadata={
        "description": "Sessions started since 00:00 UTC today."})
    sessions_30d = ma.fields.Integer(required=True)
    active_users_7d = ma.fields.Integer(required=True)
    active_users_30d = ma.fields.Integer(required=True)
    trials_ended = ma.fields.Integer(required=True)
    trials_converted = ma.fields.Integer(required=True)
    trial_conversion_rate = ma.fields.Float(allow_none=True, required=True, metadata={
        "description": "trials_converted / trials_ended (0..1); null before any trial ended."})
    avg_session_minutes = ma.fields.Float(required=True, metadata={
        "description": "Average listened minutes of sessions ended in the last 30 days."})
    computed_at = ma.fields.DateTime(required=True)


# ---- users -------------------------------------------------------------------------------

class AdminUserQuerySchema(PageArgsSchema):
    q = ma.fields.String(validate=[ma.validate.Length(min=1, max=100), no_control_characters],
                         metadata={
        "description": "Part of the email or display name (case-insensitive)."})
    tier = ma.fields.String(validate=ma.validate.OneOf(TIER_NAMES))
    status = ma.fields.String(validate=ma.validate.OneOf(USER_STATUS_FILTERS), metadata={
        "description": "A subscription status, or `suspended` for suspended accounts."})


class AdminUserSummarySchema(UserBaseSchema):
    is_active = ma.fields.Boolean(required=True)
    tier = TierField(required=True)
    subscription_status = OneOf(STATUSES, required=True)


class AdminUserDetailSchema(AdminUserSummarySchema):
    updated_at = ma.fields.DateTime(required=True)
    subscription = ma.fields.Nested(SubscriptionSchema, required=True)
    usage = ma.fields.Nested(UsageSchema, required=True)
    sessions_total = ma.fields.Integer(required=True)
    last_activity_at = ma.fields.DateTime(allow_none=True, required=True, metadata={
        "description": "When the user's latest listening session started."})


class AdminUserUpdateSchema(StrictSchema):
    tier = TierName
    is_active = ma.fields.Boolean(metadata={"description": "false suspends, true reactivates."})
    reason = ma.fields.String(validate=ma.validate.Length(min=1, max=500), metadata={
        "description": "Why: kept on the subscription event and in the audit log."})

    @ma.validates_schema
    def not_empty(self, data, **kwargs):
        if "tier" not in data and "is_active" not in data:
            raise ma.ValidationError("Give tier or is_active.")


# ---- jobs --------------------------------------------------------------------------------

class JobsQuerySchema(QueryArgsSchema):
    failed_limit = ma.fields.Integer(load_default=50, validate=ma.validate.Range(min=1, max=500),
                                     metadata={"description": "Newest failed jobs per queue."})


class QueueDepthSchema(ma.Schema):
    name = ma.fields.String(required=True)
    queued = ma.fields.Integer(required=True)
    started = ma.fields.Integer(required=True)
    scheduled = ma.fields.Integer(required=True)
    deferred = ma.fields.Integer(required=True)
    failed = ma.fields.Integer(required=True)


class FailedJobSchema(ma.Schema):
    id = ma.fields.String(required=True)
    queue = ma.fields.String(required=True)
    func_name = ma.fields.String(allow_none=True, required=True)
    args = ma.fields.List(ma.fields.Raw(), required=True)
    enqueued_at = ma.fields.DateTime(allow_none=True)
    ended_at = ma.fields.DateTime(allow_none=True)
    error = ma.fields.String(allow_none=True, required=True, metadata={
        "description": "The exception, one line."})
    traceback = ma.fields.String(allow_none=True)


class WorkerSchema(ma.Schema):
    name = ma.fields.String(required=True)
    state = ma.fields.String(allow_none=True)
    queues = ma.fields.List(ma.fields.String(), required=True)
    current_job_id = ma.fields.String(allow_none=True)
    birth_date = ma.fields.DateTime(allow_none=True)
    last_heartbeat = ma.fields.DateTime(allow_none=True)
    successful_job_count = ma.fields.Integer()
    failed_job_count = ma.fields.Integer()


class JobsOverviewSchema(ma.Schema):
    backend = ma.fields.String(required=True, metadata={
        "description": "`redis` (RQ workers) or `inline` (no REDIS_URL: jobs run in-process)."})
    queues = ma.fields.List(ma.fields.Nested(QueueDepthSchema), required=True)
    failed_jobs = ma.fields.List(ma.fields.Nested(FailedJobSchema), required=True)
    workers = ma.fields.List(ma.fields.Nested(WorkerSchema), required=True)


# ---- audit -------------------------------------------------------------------------------

class AuditQuerySchema(PageArgsSchema):
    action = ma.fields.String(validate=ma.validate.Length(min=1, max=64))
    target_type = ma.fields.String(validate=ma.validate.Length(min=1, max=32))
    target_id = ma.fields.String(validate=ma.validate.Length(min=1, max=64))
    actor_id = ma.fields.Integer()


class AuditEntrySchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    actor_id = ma.fields.Integer(allow_none=True, required=True)
    actor_label = ma.fields.String(required=True)
    action = ma.fields.String(required=True)
    target_type = ma.fields.String(required=True)
    target_id = ma.fields.String(allow_none=True, required=True)
    before = ma.fields.Dict(allow_none=True, required=True)
    after = ma.fields.Dict(allow_none=True, required=True)
    at = ma.fields.DateTime(required=True)
