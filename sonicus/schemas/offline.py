"""Offline listening shapes: download licences and the upload of sessions played offline."""

from __future__ import annotations

import marshmallow as ma

from .common import StrictSchema, no_bidi_controls
from .sessions import MAX_SECONDS, ClientId, Position, SessionPackageSchema

MAX_SYNC_ITEMS = 100
MAX_NOTE_LENGTH = 2000
# The largest body a valid batch needs: per item its fields (~600 bytes) and a note of
# MAX_NOTE_LENGTH characters, each up to 4 bytes in UTF-8 or 6 as a JSON escape (\u00e9, as
# json.dumps writes them by default), with room to spare.
SYNC_BODY_BYTES = MAX_SYNC_ITEMS * 16 * 1024
BATCH_SIZE = ma.validate.Length(min=1, max=MAX_SYNC_ITEMS)
SYNC_STATUSES = ("created", "unchanged", "rejected")
SYNC_CODES = ("started_at_out_of_range", "invalid_interval", "not_found", "package_locked",
              "overlap", "daily_session_limit_reached")


class DownloadRequestSchema(StrictSchema):
    package_id = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1))


class DownloadTrackSchema(ma.Schema):
    track_id = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    duration_seconds = ma.fields.Integer(required=True)
    download_url = ma.fields.String(required=True, allow_none=True, metadata={
        "description": "Signed like a stream URL (MEDIA_DOWNLOAD_URL_TTL_SECONDS, 2 hours "
                       "by default: ask GET /api/user/downloads for fresh ones while the "
                       "licence lasts); null in production without media settings."})
    expires_at = ma.fields.DateTime(required=True, metadata={
        "description": "When the download URL stops working (2 hours at most by default, "
                       "and never after the licence's end)."})


class DownloadSchema(ma.Schema):
    package_id = ma.fields.Integer(required=True)
    package = ma.fields.Nested(SessionPackageSchema, required=True)
    granted_at = ma.fields.DateTime(required=True)
    licence_expires_at = ma.fields.DateTime(required=True, metadata={
        "description": "30 days after the grant, or earlier when a scheduled downgrade or an "
                       "assignment's end would lock the package; post again to renew."})
    tracks = ma.fields.Nested(DownloadTrackSchema, many=True, required=True)


class SyncItemSchema(StrictSchema):
    client_id = ClientId(required=True)
    package_id = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1))
    track_id = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1))
    started_at = ma.fields.AwareDateTime(required=True)
    ended_at = ma.fields.AwareDateTime(required=True)
    listened_seconds = ma.fields.Integer(required=True,
                                         validate=ma.validate.Range(min=0, max=MAX_SECONDS))
    completed = ma.fields.Boolean(load_default=False, metadata={
        "description": "What the client says; kept as `client_completed`."})
    mood_before = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=10))
    mood_after = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=10))
    note = ma.fields.String(allow_none=True, validate=[ma.validate.Length(max=MAX_NOTE_LENGTH),
                                                       no_bidi_controls])
    position_seconds = Position(allow_none=True)


class SyncRequestSchema(StrictSchema):
    sessions = ma.fields.List(ma.fields.Nested(SyncItemSchema), required=True,
                              validate=BATCH_SIZE)

    @ma.pre_load
    def size_first(self, data, **kwargs):
        """A batch over the limit is refused by its size alone, before its items are read (an
        error per field of each of thousands of items says nothing of what is wrong)."""
        sessions = data.get("sessions") if isinstance(data, dict) else None
        if isinstance(sessions, list) and len(sessions) > MAX_SYNC_ITEMS:
            try:
                BATCH_SIZE(sessions)
            except ma.ValidationError as error:
                raise ma.ValidationError({"sessions": error.messages}) from None
        return data

    @ma.validates_schema
    def distinct_client_ids(self, data, **kwargs):
        seen = set()
        for index, item in enumerate(data.get("sessions") or []):
            if item["client_id"] in seen:
                raise ma.ValidationError({"sessions": {index: {"client_id": [
                    "Appears twice in this batch."]}}})
            seen.add(item["client_id"])


class SyncResultSchema(ma.Schema):
    client_id = ma.fields.String(required=True)
    status = ma.fields.String(required=True, metadata={"enum": list(SYNC_STATUSES)})
    session_id = ma.fields.Integer(allow_none=True, metadata={
        "description": "The stored session (created or unchanged)."})
    code = ma.fields.String(allow_none=True, metadata={"enum": list(SYNC_CODES),
                                                        "description": "Why it was rejected."})
    message = ma.fields.String(allow_none=True)


class SyncAnswerSchema(ma.Schema):
    results = ma.fields.Nested(SyncResultSchema, many=True, required=True)
