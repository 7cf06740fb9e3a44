"""Shapes of the analytics area: personal analytics, the dashboard, the refresh request."""

from __future__ import annotations

import marshmallow as ma

from .catalog import PackageBaseSchema
from .profile import OnboardingSchema, ProfileSchema
from .recommendations import RecommendationSchema
from .subscription import SubscriptionSchema


def _date_string(**kwargs):
    return ma.fields.String(metadata={"format": "date", **kwargs.pop("metadata", {})}, **kwargs)


def _datetime_string(**kwargs):
    return ma.fields.String(metadata={"format": "date-time"}, **kwargs)


class CategoryUsageSchema(ma.Schema):
    category = ma.fields.String(required=True)
    sessions = ma.fields.Integer(required=True)
    minutes = ma.fields.Float(required=True)


class DailyMinutesSchema(ma.Schema):
    date = _date_string(required=True)
    minutes = ma.fields.Float(required=True)


class PackageMoodSchema(ma.Schema):
    package_id = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    sessions = ma.fields.Integer(required=True, metadata={
        "description": "Sessions of this package with a mood before and after."})
    avg_mood_change = ma.fields.Float(required=True)


class AnalyticsSummarySchema(ma.Schema):
    total_sessions = ma.fields.Integer(required=True)
    completed_sessions = ma.fields.Integer(required=True)
    completion_rate = ma.fields.Float(required=True, metadata={
        "description": "Completed sessions / ended sessions, 0..1."})
    total_minutes = ma.fields.Float(required=True)
    minutes_this_week = ma.fields.Float(required=True, metadata={
        "description": "Listened minutes since Monday of the user's current week."})
    sessions_today = ma.fields.Integer(required=True)
    current_streak_days = ma.fields.Integer(required=True)
    longest_streak_days = ma.fields.Integer(required=True)
    avg_mood_change = ma.fields.Float(required=True, allow_none=True)
    computed_at = _datetime_string(required=True)


class AnalyticsSchema(AnalyticsSummarySchema):
    top_categories = ma.fields.List(ma.fields.Nested(CategoryUsageSchema), required=True)
    daily_minutes = ma.fields.List(ma.fields.Nested(DailyMinutesSchema), required=True,
                                   metadata={"description": "The last 30 user-days, oldest first."})
    mood_by_package = ma.fields.List(ma.fields.Nested(PackageMoodSchema), required=True,
                                     metadata={"description": "Best mood change first."})
    day = _date_string(metadata={"description": "The user's day the figures refer to."})


class RefreshQueuedSchema(ma.Schema):
    status = ma.fields.String(required=True, metadata={"example": "queued"})


class ContinueListeningSchema(ma.Schema):
    session_id = ma.fields.Integer(required=True)
    started_at = ma.fields.DateTime(required=True)
    listened_seconds = ma.fields.Integer(required=True)
    max_duration_seconds = ma.fields.Integer(required=True, allow_none=True)
    track_id = ma.fields.Integer(required=True, allow_none=True)
    package = ma.fields.Nested(PackageBaseSchema, required=True)


class DashboardSchema(ma.Schema):
    profile = ma.fields.Nested(ProfileSchema, required=True)
    subscription = ma.fields.Nested(SubscriptionSchema, required=True)
    analytics = ma.fields.Nested(AnalyticsSummarySchema, required=True)
    continue_listening = ma.fields.Nested(ContinueListeningSchema, required=True,
                                          allow_none=True)
    recommended = ma.fields.List(ma.fields.Nested(RecommendationSchema), required=True, metadata={
        "description": "The first items of GET /api/user/recommendations."})
    onboarding = ma.fields.Nested(OnboardingSchema, required=True)
