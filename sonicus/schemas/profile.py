from __future__ import annotations

import marshmallow as ma

from .common import (
    StrictSchema,
    TierField,
    UserBaseSchema,
    no_bidi_controls,
    no_control_characters,
    validate_timezone,
)

GOALS = ("sleep", "focus", "relaxation", "stress", "anxiety", "meditation", "energy", "mood")


class PreferencesSchema(ma.Schema):
    goals = ma.fields.List(ma.fields.String(validate=ma.validate.Length(min=1, max=40)),
                           validate=ma.validate.Length(max=20))
    favorite_categories = ma.fields.List(
        ma.fields.String(validate=ma.validate.Length(min=1, max=40)),
        validate=ma.validate.Length(max=20))
    daily_goal_minutes = ma.fields.Integer(allow_none=True,
                                           validate=ma.validate.Range(min=1, max=1440))
    show_streaks = ma.fields.Boolean()


class PreferencesInputSchema(PreferencesSchema, StrictSchema):
    pass


class OnboardingSchema(ma.Schema):
    email_verified = ma.fields.Boolean(required=True)
    tier_chosen = ma.fields.Boolean(required=True)
    payment_pending = ma.fields.Boolean(required=True)
    completed = ma.fields.Boolean(required=True)


class ProfileSchema(UserBaseSchema):
    tier = TierField(required=True)
    preferences = ma.fields.Nested(PreferencesSchema, required=True)
    onboarding = ma.fields.Nested(OnboardingSchema, required=True)


class ProfileUpdateSchema(StrictSchema):
    display_name = ma.fields.String(validate=[ma.validate.Length(min=1, max=120),
                                              no_control_characters, no_bidi_controls])
    timezone = ma.fields.String(validate=validate_timezone)
    day_start_hour = ma.fields.Integer(validate=ma.validate.Range(min=0, max=6))
    preferences = ma.fields.Nested(PreferencesInputSchema)

    @ma.validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            raise ma.ValidationError("Give at least one field to change.")
