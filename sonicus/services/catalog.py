"""The sound catalog: listing, detail, the one access check, admin edits and the seed loader."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import yaml
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from .. import clock, media
from ..envelope import ApiError, fail, not_found, paginate
from ..extensions import db
from ..models import SoundPackage, Track, User
from ..tiers import LEVEL_MIN_TIER, TIERS, can_access_level
from . import audit
from .subscriptions import get_subscription

PACKAGE_FIELDS = ("slug", "title", "description", "category", "minimum_tier", "published")


# ---- access ----------------------------------------------------------------------------------

def is_locked(tier_name: str, package: SoundPackage) -> bool:
    return not can_access_level(tier_name, package.minimum_tier)


def validate_package_access(user: User, package: SoundPackage, tier: str | None = None) -> None:
    """THE access check: 403 ``package_locked`` when the user's tier does not open the package.

    ``tier`` may be passed by callers that already hold the (locked) subscription row.
    """
    tier = tier or get_subscription(user).tier
    if is_locked(tier, package):
        needed = LEVEL_MIN_TIER[package.minimum_tier]
        fail(403, "package_locked",
             f"This package needs the {TIERS[needed].title} tier or higher.",
             data={"required_tier": needed})


# ---- reading ---------------------------------------------------------------------------------

def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` literally anywhere (backslash escapes)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _catalog_filter(stmt):
    return stmt.where(SoundPackage.published.is_(True), SoundPackage.archived_at.is_(None))


def package_view(package: SoundPackage, tier: str) -> dict:
    """The catalog's picture of a package for a caller of ``tier`` (fed to the schema)."""
    return {
        "id": package.id, "slug": package.slug, "title": package.title,
        "description": package.description, "category": package.category,
        "minimum_tier": package.minimum_tier,
        "required_tier": LEVEL_MIN_TIER[package.minimum_tier],
        "duration_seconds": package.duration_seconds, "track_count": package.track_count,
        "popularity": package.popularity, "locked": is_locked(tier, package),
    }


def list_packages(user: User, args: dict) -> list[dict]:
    """Published, non-archived packages, most popular first, with ``locked`` for the caller."""
    tier = get_subscription(user).tier
    stmt = _catalog_filter(select(SoundPackage))
    if args.get("category"):
        stmt = stmt.where(SoundPackage.category == args["category"].lower())
    if args.get("q"):
        pattern = _like(args["q"])
        stmt = stmt.where(or_(SoundPackage.title.ilike(pattern, escape="\\"),
                              SoundPackage.description.ilike(pattern, escape="\\")))
    if args.get("accessible"):
        stmt = stmt.where(SoundPackage.minimum_tier.in_(TIERS[tier].package_levels))
    stmt = stmt.order_by(SoundPackage.popularity.desc(), SoundPackage.id)
    return [package_view(p, tier) for p in paginate(db, stmt, args)]


def get_catalog_package(package_id: int, *, lock: bool = False) -> SoundPackage:
    """A package visible in the catalog (published, not archived), else 404."""
    stmt = _catalog_filter(select(SoundPackage).where(SoundPackage.id == package_id))
    package = db.session.execute(stmt).scalar_one_or_none()
    if package is None:
        not_found("Package")
    return package


def package_detail(user: User, package_id: int, now: datetime | None = None) -> dict:
    """Detail with tracks; signed stream URLs only when the caller's tier opens it."""
    tier = get_subscription(user).tier
    package = get_catalog_package(package_id)
    view = package_view(package, tier)
    now = now or clock.now()
    tracks, expires = [], None
    for track in package.tracks:
        url = None
        if not view["locked"]:
            url, expires = media.stream_url(track.media_path, now)
        tracks.append({"id": track.id, "position": track.position, "title": track.title,
                       "duration_seconds": track.duration_seconds, "stream_url": url})
    view["tracks"] = tracks
    view["stream_urls_expire_at"] = expires
    return view


# ---- writing (admin, seed) -------------------------------------------------------------------

def snapshot(package: SoundPackage) -> dict:
    """A JSON-ready record of a package for the audit log."""
    return {
        **{f: getattr(package, f) for f in PACKAGE_FIELDS},
        "archived_at": package.archived_at.isoformat() if package.archived_at else None,
        "tracks": [{"title": t.title, "duration_seconds": t.duration_seconds,
                    "media_path": t.media_path} for t in package.tracks],
    }


def _apply(package: SoundPackage, data: dict) -> None:
    for field in PACKAGE_FIELDS:
        if field in data:
            setattr(package, field, data[field])
    if "tracks" in data:
        _replace_tracks(package, data["tracks"])


def _replace_tracks(package: SoundPackage, tracks: list[dict]) -> None:
    """Update tracks in place by position (keeps ids that sessions point at), add, remove."""
    existing = list(package.tracks)
    for position, item in enumerate(tracks):
        if position < len(existing):
            track = existing[position]
        else:
            track = Track(position=position)
            package.tracks.append(track)
        track.position = position
        track.title = item["title"]
        track.duration_seconds = int(item["duration_seconds"])
        track.media_path = item["media_path"]
    for track in existing[len(tracks):]:
        package.tracks.remove(track)
    package.track_count = len(tracks)
    package.duration_seconds = sum(int(t["duration_seconds"]) for t in tracks)


def _commit_or_conflict(slug: str) -> None:
    try:
        db.session.commit()
    except IntegrityError as exc:
        db.session.rollback()
        raise ApiError(409, "conflict", f"A package with slug {slug!r} already exists.",
                       errors=[f"slug: {slug!r} is already taken."]) from exc


def create_package(actor: User, data: dict) -> SoundPackage:
    package = SoundPackage(slug=data["slug"], title=data["title"],
                           description=data.get("description", ""), category=data["category"],
                           minimum_tier=data.get("minimum_tier", "public"),
                           published=data.get("published", False))
    _apply(package, {"tracks": data.get("tracks", [])})
    db.session.add(package)
    try:
        db.session.flush()
    except IntegrityError as exc:
        db.session.rollback()
        raise ApiError(409, "conflict", f"A package with slug {data['slug']!r} already exists.",
                       errors=[f"slug: {data['slug']!r} is already taken."]) from exc
    audit.record(actor, "package.create", "package", package.id, None, snapshot(package))
    _commit_or_conflict(data["slug"])
    return package


def admin_list_packages(args: dict) -> list[SoundPackage]:
    """Every package for administrators, including drafts (and archived ones on request)."""
    stmt = select(SoundPackage).options(selectinload(SoundPackage.tracks))
    if not args.get("include_archived"):
        stmt = stmt.where(SoundPackage.archived_at.is_(None))
    if args.get("published") is not None:
        stmt = stmt.where(SoundPackage.published.is_(args["published"]))
    if args.get("q"):
        stmt = stmt.where(or_(SoundPackage.title.ilike(_like(args["q"]), escape="\\"),
                              SoundPackage.slug.ilike(_like(args["q"]), escape="\\")))
    return paginate(db, stmt.order_by(SoundPackage.id.desc()), args)


def admin_get_package(package_id: int) -> SoundPackage:
    package = db.session.get(SoundPackage, package_id)
    if package is None:
        not_found("Package")
    return package


def update_package(actor: User, package_id: int, data: dict) -> SoundPackage:
    package = admin_get_package(package_id)
    before = snapshot(package)
    _apply(package, data)
    if package.published and not package.tracks:
        db.session.rollback()
        fail(422, "validation_error", "The request is not valid.",
             errors=["tracks: A published package needs at least one track."])
    try:
        db.session.flush()
    except IntegrityError as exc:
        db.session.rollback()
        raise ApiError(409, "conflict", "A package with this slug already exists.",
                       errors=[f"slug: {data.get('slug')!r} is already taken."]) from exc
    audit.record(actor, "package.update", "package", package.id, before, snapshot(package))
    _commit_or_conflict(package.slug)
    return package


def archive_package(actor: User, package_id: int, now: datetime | None = None) -> SoundPackage:
    """Archive (the catalog's delete): hidden from the catalog; sessions and history keep it."""
    package = admin_get_package(package_id)
    if package.archived_at is None:
        before = snapshot(package)
        package.archived_at = now or clock.now()
        audit.record(actor, "package.archive", "package", package.id, before, snapshot(package))
        db.session.commit()
    return package


def load_catalog_file(path: str | Path) -> list[dict]:
    """Read a catalog file (YAML or JSON): a list of packages or ``{packages: [...]}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    if isinstance(data, dict):
        data = data.get("packages")
    if not isinstance(data, list):
        raise ValueError("a catalog file holds a list of packages (or {packages: [...]})")
    return data


def seed_catalog(entries: list[dict]) -> dict:
    """Create or update packages by slug; running it twice changes nothing the second time.

    Entries are validated with the admin input schema first; one bad entry loads nothing.
    """
    from marshmallow import ValidationError

    from ..schemas.catalog import PackageCreateSchema

    schema = PackageCreateSchema()
    valid = []
    for index, entry in enumerate(entries):
        try:
            if not isinstance(entry, dict):
                raise ValueError(f"package #{index + 1}: not a mapping")
            # seeded packages are published unless the file says otherwise
            valid.append(schema.load({"published": True, **entry}))
        except ValidationError as exc:
            label = entry.get("slug", f"#{index + 1}") if isinstance(entry, dict) else index + 1
            raise ValueError(f"package {label}: {exc.messages}") from exc
    slugs = [e["slug"] for e in valid]
    if len(set(slugs)) != len(slugs):
        raise ValueError("the file repeats a slug")
    existing = {p.slug: p for p in db.session.execute(
        select(SoundPackage).where(SoundPackage.slug.in_(slugs))).scalars()}
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    for entry in valid:
        entry.setdefault("description", "")
        entry.setdefault("minimum_tier", "public")
        package = existing.get(entry["slug"])
        if package is None:
            package = SoundPackage(popularity=0)
            db.session.add(package)
            _apply(package, entry)
            counts["created"] += 1
            continue
        before = snapshot(package)
        _apply(package, entry)
        after = snapshot(package)
        if before == after:
            counts["unchanged"] += 1
        else:
            counts["updated"] += 1
    db.session.commit()
    return counts


def catalog_size() -> int:
    return db.session.execute(
        _catalog_filter(select(func.count(SoundPackage.id)))).scalar_one()
