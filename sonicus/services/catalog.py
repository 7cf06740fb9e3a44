"""The sound catalog: listing, detail, the one access check, admin edits and the seed loader
(the catalog file it reads: ``catalog_file.py``)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from .. import clock, media
from ..api_errors import ApiError, fail, not_found
from ..extensions import db
from ..models import ListeningSession, SoundPackage, Track
from ..models.base import unicode_key
from ..pagination import Page, paginate
from ..tiers import ACCESS_LOCKED, PACKAGE_LEVELS, TIERS, can_access_level, package_access
from . import audit
from .assignments import live_package_ids, personal_marks
from .transaction import unit_of_work

PACKAGE_FIELDS = ("slug", "title", "description", "category", "minimum_tier", "published",
                  "image_path")


# ---- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackView:
    """A track as a caller sees it: a signed stream URL only where the package is open."""

    track: Track
    stream_url: str | None

    def __getattr__(self, name):
        return getattr(self.track, name)


@dataclass(frozen=True)
class PackageView:
    """A package as one user sees it (``PackageSchema``, ``PackageDetailSchema``): ``access``
    says how it is open to them (``tier``, ``assigned``) or that it is ``locked``."""

    package: SoundPackage
    access: str
    tracks: tuple[TrackView, ...] = ()
    stream_urls_expire_at: datetime | None = None
    in_library: bool = False

    def __getattr__(self, name):
        return getattr(self.package, name)

    @property
    def locked(self) -> bool:
        return self.access == ACCESS_LOCKED

    @classmethod
    def of(cls, package: SoundPackage, tier_name: str, assigned: bool = False,
           in_library: bool = False) -> PackageView:
        return cls(package, package_access(tier_name, package.minimum_tier, assigned),
                   in_library=in_library)


# ``?sort=``: the catalog's orders (ties broken by id, so pages never overlap).
SORTS = {
    "popular": (SoundPackage.popularity.desc(),),
    "newest": (SoundPackage.created_at.desc(),),
    "title": (func.lower(SoundPackage.title), SoundPackage.title),
    "duration": (SoundPackage.duration_seconds,),
}


def _like(text: str) -> str:
    """A LIKE pattern matching ``text`` literally anywhere (backslash escapes)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def in_catalog():
    """SQL: the package is visible in the catalog (published, not archived)."""
    return and_(SoundPackage.published.is_(True), SoundPackage.archived_at.is_(None))


def playable_now(user_id: int, tier_name: str, now: datetime):
    """SQL: the package plays for this user now: in the catalog, and opened by the tier in
    force (``tier_name``) or a live assignment. Where to resume (``GET /api/user/playback``,
    the dashboard's ``continue_listening``) offers only these: after a downgrade or an
    assignment's end a premium package would only answer 403 ``package_locked``."""
    levels = [level for level in PACKAGE_LEVELS if can_access_level(tier_name, level)]
    return and_(in_catalog(), or_(SoundPackage.minimum_tier.in_(levels),
                                  SoundPackage.id.in_(live_package_ids(user_id, now))))


def _catalog_filter(stmt):
    return stmt.where(in_catalog())


def list_packages(caller, args: dict, now: datetime | None = None) -> Page:
    """Published, non-archived packages in the order of ``sort`` (default ``popular``: most
    played first; ``newest``, ``title``, ``duration``: shortest first), each with ``access``
    and ``in_library`` for the caller (their live assignments and library entries among the
    page's packages are read in one query)."""
    now = now or clock.now()
    stmt = _catalog_filter(select(SoundPackage))
    if args.get("category"):
        stmt = stmt.where(SoundPackage.category == args["category"].lower())
    if args.get("q"):  # both sides in one Unicode form: NFD "café" finds NFC "Café"
        pattern = _like(unicode_key(args["q"]))
        stmt = stmt.where(or_(SoundPackage.title_key.like(pattern, escape="\\"),
                              SoundPackage.description_key.like(pattern, escape="\\")))
    if args.get("accessible"):
        stmt = stmt.where(or_(SoundPackage.minimum_tier.in_(TIERS[caller.tier].package_levels),
                              SoundPackage.id.in_(live_package_ids(caller.id, now))))
    stmt = stmt.order_by(*SORTS[args.get("sort") or "popular"], SoundPackage.id)
    page = paginate(db, stmt, args)
    assigned, in_library = personal_marks(caller.id, now, [p.id for p in page.items])
    return replace(page, items=[PackageView.of(p, caller.tier, p.id in assigned,
                                               p.id in in_library) for p in page.items])


def list_categories() -> list[dict]:
    """The categories of the catalog's published packages, with how many each has, largest
    first (``{slug, title, package_count}``)."""
    count = func.count(SoundPackage.id)
    rows = db.session.execute(
        _catalog_filter(select(SoundPackage.category, count))
        .group_by(SoundPackage.category).order_by(count.desc(), SoundPackage.category)).all()
    return [{"slug": slug, "title": slug.replace("-", " ").capitalize(), "package_count": n}
            for slug, n in rows]


def get_catalog_package(package_id: int) -> SoundPackage:
    """A package visible in the catalog (published, not archived), else 404."""
    stmt = _catalog_filter(select(SoundPackage).where(SoundPackage.id == package_id))
    package = db.session.execute(stmt).scalar_one_or_none()
    if package is None:
        not_found("Package")
    return package


def get_catalog_package_by_slug(slug: str) -> SoundPackage:
    """A package visible in the catalog by its slug, else 404."""
    package = db.session.execute(
        _catalog_filter(select(SoundPackage).where(SoundPackage.slug == slug))
    ).scalar_one_or_none()
    if package is None:
        not_found("Package")
    return package


def package_detail(caller, package_id: int | None = None, now: datetime | None = None, *,
                   slug: str | None = None) -> PackageView:
    """Detail (by id, or by ``slug``) with tracks; signed stream URLs only when the caller's
    tier or a live assignment opens it."""
    now = now or clock.now()
    package = (get_catalog_package_by_slug(slug) if slug is not None
               else get_catalog_package(package_id))
    assigned, in_library = personal_marks(caller.id, now, [package.id])
    view = PackageView.of(package, caller.tier, package.id in assigned,
                          package.id in in_library)
    tracks, expires = [], None
    for track in view.package.tracks:
        url = None
        if not view.locked:
            url, expires = media.stream_url(track.media_path, now)
        tracks.append(TrackView(track, url))
    return replace(view, tracks=tuple(tracks), stream_urls_expire_at=expires)


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
        if field == "published":
            if field in data:  # when, too: offline listening is judged by it
                package.set_published(bool(data[field]), clock.now())
        elif field in data:
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
    package.track_count = len(tracks)
    package.duration_seconds = sum(int(t["duration_seconds"]) for t in tracks)
    if package.id is not None:
        _fit_resume_positions(package, existing[:len(tracks)], existing[len(tracks):])
    for track in existing[len(tracks):]:
        package.tracks.remove(track)


def _fit_resume_positions(package: SoundPackage, kept: list[Track],
                          removed: list[Track]) -> None:
    """Keep every resume position of the package's sessions inside what it now plays: a
    position in a track that is removed goes back to the start (the session's track is
    forgotten with it, and a position without a track is one in the package); one past the
    end of a track (or of a package without a track) that got shorter is at its end."""
    s = ListeningSession
    if removed:
        db.session.execute(update(s).where(
            s.track_id.in_([t.id for t in removed]), s.position_seconds.is_not(None))
            .values(position_seconds=0).execution_options(synchronize_session=False))
    if kept:
        length = case({t.id: t.duration_seconds for t in kept}, value=s.track_id)
        db.session.execute(update(s).where(
            s.track_id.in_([t.id for t in kept]), s.position_seconds > length)
            .values(position_seconds=length).execution_options(synchronize_session=False))
    db.session.execute(update(s).where(
        s.package_id == package.id, s.track_id.is_(None),
        s.position_seconds > package.duration_seconds)
        .values(position_seconds=package.duration_seconds)
        .execution_options(synchronize_session=False))


@contextmanager
def _package_change(slug: str | None):
    """One unit of work for a package edit; a taken slug is 409 ``conflict``, nothing saved."""
    try:
        with unit_of_work():
            yield
    except IntegrityError as exc:
        raise ApiError(409, "conflict", f"A package with slug {slug!r} already exists.",
                       errors=[f"slug: {slug!r} is already taken."]) from exc


def create_package(actor, data: dict) -> SoundPackage:
    with _package_change(data["slug"]):
        package = SoundPackage(slug=data["slug"], title=data["title"],
                               description=data.get("description", ""),
                               category=data["category"],
                               minimum_tier=data.get("minimum_tier", "public"),
                               image_path=data.get("image_path"))
        _apply(package, {"published": data.get("published", False),
                         "tracks": data.get("tracks", [])})
        db.session.add(package)
        db.session.flush()
        audit.record(actor, "package.create", "package", package.id, None, snapshot(package))
    return package


def admin_list_packages(args: dict) -> Page:
    """Every package for administrators, including drafts (and archived ones on request)."""
    stmt = select(SoundPackage).options(selectinload(SoundPackage.tracks))
    if not args.get("include_archived"):
        stmt = stmt.where(SoundPackage.archived_at.is_(None))
    if args.get("published") is not None:
        stmt = stmt.where(SoundPackage.published.is_(args["published"]))
    if args.get("q"):
        stmt = stmt.where(or_(SoundPackage.title_key.like(_like(unicode_key(args["q"])),
                                                          escape="\\"),
                              SoundPackage.slug.ilike(_like(args["q"]), escape="\\")))
    return paginate(db, stmt.order_by(SoundPackage.id.desc()), args)


def admin_get_package(package_id: int, *, lock: bool = False) -> SoundPackage:
    """Any package, drafts and archived ones included, else 404. ``lock``: its row is locked
    until the transaction ends (``FOR NO KEY UPDATE``: rows that reference it may still be
    inserted), so that two edits of one package (its tracks, counted and positioned from what
    is read) run one after the other. Lock order: a package's row before its sessions' rows
    (``listening.complete_session`` and the offline sync take it first too)."""
    if not lock:
        package = db.session.get(SoundPackage, package_id)
    else:
        package = db.session.execute(
            select(SoundPackage).where(SoundPackage.id == package_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)).scalar_one_or_none()
    if package is None:
        not_found("Package")
    return package


def update_package(actor, package_id: int, data: dict) -> SoundPackage:
    with _package_change(data.get("slug")):
        package = admin_get_package(package_id, lock=True)
        before = snapshot(package)
        _apply(package, data)
        if package.published and not package.tracks:
            fail(422, "validation_error", "The request is not valid.",
                 errors=["tracks: A published package needs at least one track."])
        db.session.flush()
        audit.record(actor, "package.update", "package", package.id, before, snapshot(package))
    return package


def archive_package(actor, package_id: int, now: datetime | None = None) -> SoundPackage:
    """Archive (the catalog's delete): hidden from the catalog; sessions and history keep it."""
    with unit_of_work():
        package = admin_get_package(package_id, lock=True)
        if package.archived_at is None:
            before = snapshot(package)
            package.archived_at = now or clock.now()
            audit.record(actor, "package.archive", "package", package.id, before,
                         snapshot(package))
    return package


def seed_catalog(entries: list[dict], actor_label: str = "seed") -> dict:
    """Create or update packages by slug from validated entries (``PackageCreateSchema``);
    running it twice changes nothing the second time. One transaction: all or nothing. Each
    package created or changed is in the audit log, as an admin's edit, by ``actor_label``."""
    slugs = [e["slug"] for e in entries]
    if len(set(slugs)) != len(slugs):
        raise ValueError("the file repeats a slug")
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    with unit_of_work():
        # locked like an admin edit: a seed and an edit of one package run one after the other
        existing = {p.slug: p for p in db.session.execute(
            select(SoundPackage).where(SoundPackage.slug.in_(slugs))
            .order_by(SoundPackage.id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)).scalars()}
        for entry in entries:
            entry = {"description": "", "minimum_tier": "public", **entry}
            package = existing.get(entry["slug"])
            if package is None:
                package = SoundPackage(popularity=0)
                db.session.add(package)
                _apply(package, entry)
                db.session.flush()
                audit.record(None, "package.create", "package", package.id, None,
                             snapshot(package), actor_label=actor_label)
                counts["created"] += 1
                continue
            before = snapshot(package)
            _apply(package, entry)
            after = snapshot(package)
            if after == before:
                counts["unchanged"] += 1
                continue
            audit.record(None, "package.update", "package", package.id, before, after,
                         actor_label=actor_label)
            counts["updated"] += 1
    return counts


def catalog_size() -> int:
    return db.session.execute(
        _catalog_filter(select(func.count(SoundPackage.id)))).scalar_one()
