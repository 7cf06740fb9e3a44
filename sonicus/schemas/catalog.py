"""Catalog and library shapes: one set serves validation and the OpenAPI document."""

from __future__ import annotations

import re

import marshmallow as ma

from .. import media
from ..pagination import PageArgsSchema
from ..tiers import ACCESS_KINDS, PACKAGE_LEVELS
from .common import OneOf, StrictSchema, TierField, UtcDateTime, no_bidi_controls

SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
CATEGORY_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
# Categories of the demo catalog; the catalog may add more (lowercase words).
KNOWN_CATEGORIES = ("sleep", "focus", "relaxation", "meditation", "anxiety", "energy")


# Segments of characters that percent-encoding leaves as they are (RFC 3986 "unreserved"):
# the path a stream URL is signed over is then the very path a media server decodes and
# checks (nginx's ``$uri``), so a media path with a space or an accent cannot make every
# one of its URLs refused there.
MEDIA_PATH_RE = re.compile(r"[A-Za-z0-9._~-]+(?:/[A-Za-z0-9._~-]+)*")


def not_blank(value: str) -> None:
    """A title shows something: not only spaces (or other blanks)."""
    if not value.strip():
        raise ma.ValidationError("Must not be blank.")


TITLE_RULES = [ma.validate.Length(min=1, max=200), not_blank, no_bidi_controls]


def validate_media_path(value: str) -> None:
    """A relative path under the media root: segments of letters, digits, '-', '_', '.' and
    '~' joined by '/' (no scheme, no '..', no backslashes, nothing to percent-encode)."""
    if (not MEDIA_PATH_RE.fullmatch(value or "")
            or any(part in (".", "..") for part in value.split("/"))):
        raise ma.ValidationError("Must be a relative path like 'sleep/rain-01.mp3' (letters, "
                                 "digits, '-', '_', '.' and '~' between slashes).")


# ---- catalog output --------------------------------------------------------------------------

def AccessField():  # noqa: N802  (a field factory)
    return OneOf(ACCESS_KINDS, required=True, metadata={
        "description": "How the caller reaches it: `tier` (their tier opens it), `assigned` (an "
                       "administrator assigned it to them: open whatever the tier) or `locked`."})


def RequiredTierField():  # noqa: N802  (a field factory)
    return TierField(required=True,
                     metadata={"description": "The lowest tier that opens this package."})


def ImageUrlField():  # noqa: N802  (a field factory)
    return ma.fields.Function(
        lambda package: media.public_url(package.image_path), required=True, allow_none=True,
        metadata={"type": "string", "nullable": True,
                  "description": "The package's artwork (a lasting, public address); null "
                                 "when it has none."})


class PackageBaseSchema(ma.Schema):
    """What every view of a package shows."""

    id = ma.fields.Integer(required=True)
    slug = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    description = ma.fields.String(required=True)
    category = ma.fields.String(required=True)
    minimum_tier = OneOf(PACKAGE_LEVELS, required=True)
    duration_seconds = ma.fields.Integer(required=True)
    track_count = ma.fields.Integer(required=True)
    required_tier = RequiredTierField()
    image_url = ImageUrlField()


class PackageSchema(PackageBaseSchema):
    popularity = ma.fields.Integer(required=True)
    locked = ma.fields.Boolean(
        required=True, metadata={"description": "True when neither the caller's tier nor an "
                                                "assignment opens it."})
    access = AccessField()
    in_library = ma.fields.Boolean(
        required=True, metadata={"description": "True when it is in the caller's library."})


class CategorySchema(ma.Schema):
    slug = ma.fields.String(required=True, metadata={"example": "sleep"})
    title = ma.fields.String(required=True, metadata={"example": "Sleep"})
    package_count = ma.fields.Integer(required=True, metadata={
        "description": "Published packages in this category."})


class TrackSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    position = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    duration_seconds = ma.fields.Integer(required=True)
    stream_url = ma.fields.String(
        allow_none=True, required=True,
        metadata={"description": "Signed, expiring audio URL; null while the package is locked."})


class PackageDetailSchema(PackageSchema):
    tracks = ma.fields.List(ma.fields.Nested(TrackSchema), required=True)
    stream_urls_expire_at = ma.fields.DateTime(allow_none=True, required=True)


SORTS = ("popular", "newest", "title", "duration")


class PackageListArgsSchema(PageArgsSchema):
    category = ma.fields.String(validate=ma.validate.Length(min=1, max=40))
    q = ma.fields.String(validate=ma.validate.Length(min=1, max=100))
    accessible = ma.fields.Boolean(
        metadata={"description": "true: only packages the caller can play (tier or "
                                 "assignment)."})
    sort = ma.fields.String(
        load_default="popular", validate=ma.validate.OneOf(SORTS),
        metadata={"description": "`popular` (most played first, the default), `newest`, "
                                 "`title` (A to Z) or `duration` (shortest first)."})


# ---- library ---------------------------------------------------------------------------------

class AssignmentSchema(ma.Schema):
    """An administrator's assignment of a package to a user."""

    user_id = ma.fields.Integer(required=True)
    package_id = ma.fields.Integer(required=True)
    assigned_at = ma.fields.DateTime(required=True)
    expires_at = ma.fields.DateTime(allow_none=True, required=True, metadata={
        "description": "When it stops opening the package; null: until revoked."})
    revoked_at = ma.fields.DateTime(allow_none=True, required=True)


class LibraryEntrySchema(ma.Schema):
    package_id = ma.fields.Integer(required=True)
    assigned_at = ma.fields.DateTime(required=True, metadata={
        "description": "When the package was put in the library."})
    favorite = ma.fields.Boolean(required=True)
    assigned_by_admin = ma.fields.Boolean(required=True, metadata={
        "description": "An administrator put it in the library, or a live assignment opens "
                       "it (an entry the user added before shows so while the assignment "
                       "lasts)."})
    assignment = ma.fields.Nested(AssignmentSchema, allow_none=True, required=True, metadata={
        "description": "The live assignment that opens the package whatever the tier; null "
                       "when there is none."})
    package = ma.fields.Nested(PackageSchema, required=True)


class LibraryAddSchema(StrictSchema):
    favorite = ma.fields.Boolean()


class LibraryUpdateSchema(StrictSchema):
    favorite = ma.fields.Boolean(required=True)


class LibraryListArgsSchema(PageArgsSchema):
    favorite = ma.fields.Boolean(metadata={"description": "true: favourites only."})


class AdminPackageListArgsSchema(PageArgsSchema):
    q = ma.fields.String(validate=ma.validate.Length(min=1, max=100),
                         metadata={"description": "Title or slug contains."})
    published = ma.fields.Boolean()
    include_archived = ma.fields.Boolean(load_default=False)


class AdminAssignSchema(StrictSchema):
    package_id = ma.fields.Integer(required=True, validate=ma.validate.Range(min=1))
    expires_at = UtcDateTime(allow_none=True, metadata={
        "description": "When the assignment ends (in the future); absent or null: until "
                       "revoked."})
    favorite = ma.fields.Boolean(metadata={
        "description": "Marks the package a favourite when the assignment puts it in the "
                       "user's library; a package already there keeps the user's own choice."})


# ---- admin input / output --------------------------------------------------------------------

class TrackInputSchema(StrictSchema):
    title = ma.fields.String(required=True, validate=TITLE_RULES)
    duration_seconds = ma.fields.Integer(required=True,
                                         validate=ma.validate.Range(min=1, max=24 * 3600))
    media_path = ma.fields.String(required=True, validate=[ma.validate.Length(min=1, max=512),
                                                           validate_media_path])


SLUG_RULES = [ma.validate.Length(min=2, max=120),
              ma.validate.Regexp(SLUG_RE, error="Use lowercase words joined by hyphens.")]
CATEGORY_RULES = [ma.validate.Length(min=2, max=40),
                  ma.validate.Regexp(CATEGORY_RE, error="Use lowercase words joined by "
                                                        "hyphens, e.g. sleep or deep-sleep.")]


class PackageUpdateSchema(StrictSchema):
    slug = ma.fields.String(validate=SLUG_RULES)
    title = ma.fields.String(validate=TITLE_RULES)
    description = ma.fields.String(validate=[ma.validate.Length(max=5000), no_bidi_controls])
    category = ma.fields.String(validate=CATEGORY_RULES)
    minimum_tier = ma.fields.String(validate=ma.validate.OneOf(PACKAGE_LEVELS))
    published = ma.fields.Boolean()
    image_path = ma.fields.String(
        allow_none=True, validate=[ma.validate.Length(min=1, max=512), validate_media_path],
        metadata={"description": "Artwork, relative to the media root like a track's "
                                 "`media_path` (shown as `image_url`); null: none."})
    tracks = ma.fields.List(ma.fields.Nested(TrackInputSchema),
                            validate=ma.validate.Length(max=200))

    @ma.validates_schema
    def not_empty(self, data, **kwargs):
        if not data:
            raise ma.ValidationError("Give at least one field to change.")

    @ma.validates_schema
    def published_needs_tracks(self, data, **kwargs):
        if data.get("published") and "tracks" in data and not data["tracks"]:
            raise ma.ValidationError("A published package needs at least one track.", "tracks")


class PackageCreateSchema(PackageUpdateSchema):
    slug = ma.fields.String(required=True, validate=SLUG_RULES)
    title = ma.fields.String(required=True, validate=TITLE_RULES)
    category = ma.fields.String(required=True, validate=CATEGORY_RULES)

    @ma.validates_schema
    def published_needs_tracks(self, data, **kwargs):
        if data.get("published", False) and not data.get("tracks"):
            raise ma.ValidationError("A published package needs at least one track.", "tracks")


class AdminTrackSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    position = ma.fields.Integer(required=True)
    title = ma.fields.String(required=True)
    duration_seconds = ma.fields.Integer(required=True)
    media_path = ma.fields.String(required=True)


class AdminPackageSchema(PackageBaseSchema):
    published = ma.fields.Boolean(required=True)
    image_path = ma.fields.String(allow_none=True, required=True)
    archived_at = ma.fields.DateTime(allow_none=True, required=True)
    popularity = ma.fields.Integer(required=True)
    created_at = ma.fields.DateTime(required=True)
    updated_at = ma.fields.DateTime(required=True)
    tracks = ma.fields.List(ma.fields.Nested(AdminTrackSchema), required=True)



def _without_sound(entry: dict) -> dict:
    """A catalog entry without its ``sound`` recipes (development media, ``dev_media.py``)."""
    entry = {k: v for k, v in entry.items() if k != "sound"}
    if isinstance(entry.get("tracks"), list):
        entry["tracks"] = [{k: v for k, v in t.items() if k != "sound"}
                           if isinstance(t, dict) else t for t in entry["tracks"]]
    return entry


def load_catalog_entries(entries: list) -> list[dict]:
    """A catalog file's packages validated with the admin input schema (seeded packages are
    published unless the file says otherwise; ``sound`` recipes are for development media and
    are left out); ``ValueError`` names the first bad entry."""
    schema = PackageCreateSchema()
    valid = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"package #{index + 1}: not a mapping")
        entry = _without_sound(entry)
        try:
            valid.append(schema.load({"published": True, **entry}))
        except ma.ValidationError as exc:
            raise ValueError(f"package {entry.get('slug', f'#{index + 1}')}: "
                             f"{exc.messages}") from exc
    return valid
