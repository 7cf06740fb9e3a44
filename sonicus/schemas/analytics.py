"""Shapes of the analytics area: personal analytics, the dashboard, the refresh request."""

from __future__ import annotations

import marshmallow as ma

from ..services.recaps import FIRST_RECAP_DATE, LAST_RECAP_DATE, PERIODS
from .catalog import PackageBaseSchema
from .common import QueryArgsSchema
from .profile import OnboardingSchema, ProfileSchema
from .recommendations import RecommendationSchema
from .sessions import SessionTrackSchema
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


_STREAK_NOTE = "Null when `preferences.show_streaks` is false. "


class GoalSchema(ma.Schema):
    minutes_today = ma.fields.Float(required=True)
    goal_minutes = ma.fields.Integer(required=True)
    met_today = ma.fields.Boolean(required=True)
    days_met_last_7 = ma.fields.Integer(required=True, metadata={
        "description": "Of the last 7 user days (today included), those on which the goal "
                       "was met."})


class AnalyticsSummarySchema(ma.Schema):
    total_sessions = ma.fields.Integer(required=True)
    completed_sessions = ma.fields.Integer(required=True)
    completion_rate = ma.fields.Float(required=True, metadata={
        "description": "Completed sessions / ended sessions, 0..1."})
    total_minutes = ma.fields.Float(required=True)
    minutes_this_week = ma.fields.Float(required=True, metadata={
        "description": "Listened minutes since Monday of the user's current week."})
    sessions_today = ma.fields.Integer(required=True, metadata={
        "description": "The subscription's `usage.sessions_today`: sessions started in the "
                       "user's day that count toward the quota (a tap given back does not)."})
    current_streak_days = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": _STREAK_NOTE + "Consecutive user days with a completed session, up to "
                       "today or yesterday; a day covered by a freeze keeps it alive without "
                       "adding to it."})
    longest_streak_days = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": _STREAK_NOTE})
    freezes_available = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": _STREAK_NOTE + "Banked streak freezes, 0..2: one per 7 streak days; "
                       "a single missed day spends one automatically."})
    freeze_days = ma.fields.List(_date_string(), required=True, allow_none=True, metadata={
        "description": _STREAK_NOTE + "The days a freeze covered in the last 90 days."})
    avg_mood_change = ma.fields.Float(required=True, allow_none=True)
    goal = ma.fields.Nested(GoalSchema, required=True, allow_none=True, metadata={
        "description": "Progress toward `preferences.daily_goal_minutes`; null without a goal."})
    active_days_last_7 = ma.fields.Integer(required=True, metadata={
        "description": "User days with a session that counts, of the last 7 (today included)."})
    active_days_last_30 = ma.fields.Integer(required=True, metadata={
        "description": "User days with a session that counts, of the last 30 (today "
                       "included)."})
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
    track = ma.fields.Nested(SessionTrackSchema, required=True, allow_none=True)
    position_seconds = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "Where to resume in the track (seconds); null when none was reported."})


class DashboardSchema(ma.Schema):
    profile = ma.fields.Nested(ProfileSchema, required=True)
    subscription = ma.fields.Nested(SubscriptionSchema, required=True)
    analytics = ma.fields.Nested(AnalyticsSummarySchema, required=True)
    continue_listening = ma.fields.Nested(ContinueListeningSchema, required=True,
                                          allow_none=True)
    recommended = ma.fields.List(ma.fields.Nested(RecommendationSchema), required=True, metadata={
        "description": "The first items of GET /api/user/recommendations."})
    onboarding = ma.fields.Nested(OnboardingSchema, required=True)


# ---- recaps ----------------------------------------------------------------------------------

class RecapArgsSchema(QueryArgsSchema):
    period = ma.fields.String(required=True, validate=ma.validate.OneOf(PERIODS), metadata={
        "description": "`week` (Monday to Sunday), `month` or `year`, of the user's days."})
    date = ma.fields.Date(validate=ma.validate.Range(min=FIRST_RECAP_DATE, max=LAST_RECAP_DATE),
                          metadata={"description": "A day in the period (default: the "
                                                   "user's today)."})


class RecapPackageSchema(ma.Schema):
    package_id = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    minutes = ma.fields.Float(required=True)


class RecapMoodSchema(ma.Schema):
    avg_before = ma.fields.Float(required=True, allow_none=True)
    avg_after = ma.fields.Float(required=True, allow_none=True)
    avg_change = ma.fields.Float(required=True, allow_none=True)
    best_package_id = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "The package with the best average mood change in the period."})


class RecapPreviousSchema(ma.Schema):
    minutes = ma.fields.Float(required=True)
    sessions = ma.fields.Integer(required=True)
    active_days = ma.fields.Integer(required=True)


class RecapSchema(ma.Schema):
    period = ma.fields.String(required=True)
    from_ = _date_string(required=True, data_key="from", attribute="from")
    to = _date_string(required=True)
    minutes = ma.fields.Float(required=True)
    sessions = ma.fields.Integer(required=True)
    completed_sessions = ma.fields.Integer(required=True)
    active_days = ma.fields.Integer(required=True, metadata={
        "description": "Days with a session that counts."})
    longest_streak = ma.fields.Integer(required=True, allow_none=True, metadata={
        "description": "The most streak days of one streak within the period; null when "
                       "`preferences.show_streaks` is false."})
    top_packages = ma.fields.List(ma.fields.Nested(RecapPackageSchema), required=True)
    top_categories = ma.fields.List(ma.fields.Nested(CategoryUsageSchema), required=True)
    mood = ma.fields.Nested(RecapMoodSchema, required=True)
    listening_hours = ma.fields.List(ma.fields.Float(), required=True, metadata={
        "description": "24 numbers: minutes listened by the local hour the sessions started."})
    previous = ma.fields.Nested(RecapPreviousSchema, required=True)
