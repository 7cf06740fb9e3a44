"""Listening session shapes."""

from __future__ import annotations

import marshmallow as ma

from ..models.listening import END_REASONS, SESSION_STATUSES
from ..pagination import PageArgsSchema
from .catalog import ImageUrlField, RequiredTierField
from .common import OneOf, StrictSchema, TierField, no_bidi_controls

MAX_SECONDS = 7 * 24 * 3600


class SentClientId(str):
    """A client's session id: its canonical uuid text (what is stored and compared, so a retry
    in another spelling finds the same session), remembering how the client spelled it
    (``sent``) for the answers that name it back."""

    sent: str

    def __new__(cls, canonical: str, sent: str) -> SentClientId:
        value = super().__new__(cls, canonical)
        value.sent = sent
        return value


class _ClientIdField(ma.fields.UUID):
    def _deserialize(self, value, attr, data, **kwargs) -> SentClientId:
        canonical = str(self._validated(value))
        return SentClientId(canonical, value if isinstance(value, str) else canonical)


def ClientId(**kwargs) -> ma.fields.UUID:  # noqa: N802  (a field factory)
    """The client's own id of a session: a uuid, stored in its canonical text form and named
    back in an answer as the client sent it."""
    return _ClientIdField(metadata={"description": "The client's id of the session (a uuid): "
                                    "sent again, in any spelling, it finds the same session; "
                                    "an answer to the request names it as sent."}, **kwargs)


def Position(**kwargs) -> ma.fields.Integer:  # noqa: N802
    return ma.fields.Integer(validate=ma.validate.Range(min=0, max=MAX_SECONDS), metadata={
        "description": "Where the listener is in the track, in seconds (to resume)."},
        **kwargs)


class SessionStartSchema(StrictSchema):
    package_id = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1))
    track_id = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1))
    mood_before = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=10))
    client_id = ClientId(allow_none=True)


class SessionHeartbeatSchema(StrictSchema):
    listened_seconds = ma.fields.Integer(required=True,
                                         validate=ma.validate.Range(min=0, max=MAX_SECONDS))
    track_id = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1), metadata={
        "description": "The track now playing (one of the session's package)."})
    position_seconds = Position(allow_none=True)


class SessionCompleteSchema(StrictSchema):
    listened_seconds = ma.fields.Integer(required=True,
                                         validate=ma.validate.Range(min=0, max=7 * 24 * 3600))
    completed = ma.fields.Boolean(required=True, metadata={
        "description": "Whether the listener finished it; kept as `client_completed`. The "
                       "session's `completed` is the server's word (80% of it listened)."})
    mood_after = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=10))
    note = ma.fields.String(allow_none=True,
                            validate=[ma.validate.Length(max=2000), no_bidi_controls])
    track_id = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1))
    position_seconds = Position(allow_none=True)


class SessionHistoryArgsSchema(PageArgsSchema):
    from_ = ma.fields.Date(data_key="from", metadata={"description": "First day (inclusive)."})
    to = ma.fields.Date(metadata={"description": "Last day (inclusive)."})

    @ma.validates_schema
    def ordered(self, data, **kwargs):
        if data.get("from_") and data.get("to") and data["from_"] > data["to"]:
            raise ma.ValidationError("Must not be before 'from'.", "to")

    @ma.post_load
    def rename(self, data, **kwargs):
        if "from_" in data:
            data["from"] = data.pop("from_")
        return data


class SessionPackageSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    category = ma.fields.String(required=True)
    required_tier = RequiredTierField()
    image_url = ImageUrlField()
    archived = ma.fields.Method("get_archived", required=True, metadata={"type": "boolean"})

    def get_archived(self, package) -> bool:
        return package.archived_at is not None


class SessionTrackSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    duration_seconds = ma.fields.Integer(required=True)


class SessionSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    package_id = ma.fields.Integer(required=True)
    track_id = ma.fields.Integer(allow_none=True, required=True)
    tier = TierField(required=True)
    status = OneOf(SESSION_STATUSES, required=True)
    started_at = ma.fields.DateTime(required=True)
    ends_at = ma.fields.DateTime(allow_none=True, required=True, metadata={
        "description": "When the tier's maximum length is reached; null when unlimited."})
    ended_at = ma.fields.DateTime(allow_none=True, required=True)
    local_day = ma.fields.Date(required=True)
    max_duration_seconds = ma.fields.Integer(allow_none=True, required=True)
    listened_seconds = ma.fields.Integer(required=True)
    completed = ma.fields.Boolean(required=True, metadata={
        "description": "The server's word: the listened time reached 80% of the playable "
                       "length (content length capped by the tier's maximum)."})
    client_completed = ma.fields.Boolean(allow_none=True, required=True, metadata={
        "description": "What the client said when it ended the session; null when it did "
                       "not say (open, or closed by the server)."})
    counts_toward_quota = ma.fields.Boolean(required=True)
    mood_before = ma.fields.Integer(allow_none=True, required=True)
    mood_after = ma.fields.Integer(allow_none=True, required=True)
    note = ma.fields.String(allow_none=True, required=True)
    end_reason = OneOf(END_REASONS, allow_none=True, required=True, metadata={
        "description": "`abandoned`: closed by the server without a single heartbeat (it "
                       "counts against the day's quota and nowhere else)."})
    client_id = ma.fields.String(allow_none=True, required=True)
    position_seconds = ma.fields.Integer(allow_none=True, required=True, metadata={
        "description": "The last position reported in the track (to resume)."})
    position_updated_at = ma.fields.DateTime(allow_none=True, required=True)
    package = ma.fields.Nested(SessionPackageSchema, required=True)
    track = ma.fields.Nested(SessionTrackSchema, allow_none=True, required=True)


class SessionProgressSchema(SessionSchema):
    """A heartbeat's answer: the stored session, and whether the claim was cut."""

    clamped = ma.fields.Boolean(required=True, metadata={
        "description": "True when the claimed listened time was more than the server stores "
                       "(`listened_seconds` is the stored figure)."})


class PlaybackSchema(ma.Schema):
    """Where to resume one package."""

    package_id = ma.fields.Integer(required=True)
    track_id = ma.fields.Integer(allow_none=True, required=True)
    position_seconds = ma.fields.Integer(required=True)
    updated_at = ma.fields.DateTime(required=True, attribute="position_updated_at")
    session_id = ma.fields.Integer(required=True, attribute="id")
