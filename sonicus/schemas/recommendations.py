"""Shapes of recommendations (API.md "Recommendations"); the dashboard's ``recommended`` too."""

from __future__ import annotations

import marshmallow as ma

from ..services.recommendations import DEFAULT_LIMIT, MAX_LIMIT, REASON_KINDS
from ..validation import QueryArgsSchema
from .catalog import PackageSchema


class RecommendationArgsSchema(QueryArgsSchema):
    limit = ma.fields.Integer(load_default=DEFAULT_LIMIT,
                              validate=ma.validate.Range(min=1, max=MAX_LIMIT),
                              metadata={"description": f"1..{MAX_LIMIT}"})


class ReasonSchema(ma.Schema):
    kind = ma.fields.String(required=True, metadata={
        "enum": list(REASON_KINDS),
        "description": "`own_outcome` (it lifted your mood), `similar_users` (it lifted the "
                       "mood of people with your goal and a similar starting mood), "
                       "`favorite_category`, `popular`."})
    text = ma.fields.String(required=True, metadata={"description": "Why, with the numbers."})


class RecommendationSchema(ma.Schema):
    package = ma.fields.Nested(PackageSchema, required=True,
                               metadata={"description": "The catalog item."})
    score = ma.fields.Float(required=True, metadata={
        "description": "What ranks the list: the expected mood change plus a little "
                       "exploration and a favourite-category bonus."})
    expected_mood_change = ma.fields.Float(required=True, metadata={
        "description": "Expected mood_after - mood_before for you, shrunk toward people like "
                       "you and the population by the amount of evidence."})
    confidence = ma.fields.Float(required=True, metadata={
        "description": "0..1: how much evidence stands behind the estimate."})
    reason = ma.fields.Nested(ReasonSchema, required=True)
