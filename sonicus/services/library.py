"""The user's personal library: packages they added or an admin assigned to them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import joinedload

from ..envelope import not_found, paginate
from ..extensions import db
from ..models import SoundPackage, User, UserSoundPackage
from ..models.base import utcnow
from . import audit
from .catalog import get_catalog_package, package_view, validate_package_access
from .subscriptions import get_subscription


def entry_view(entry: UserSoundPackage, tier: str) -> dict:
    return {"package_id": entry.package_id, "assigned_at": entry.assigned_at,
            "favorite": entry.favorite, "assigned_by_admin": entry.assigned_by_id is not None,
            "package": package_view(entry.package, tier)}


def _entry(user_id: int, package_id: int) -> UserSoundPackage | None:
    return db.session.execute(
        select(UserSoundPackage).options(joinedload(UserSoundPackage.package))
        .where(UserSoundPackage.user_id == user_id, UserSoundPackage.package_id == package_id)
    ).scalar_one_or_none()


def list_library(user: User, args: dict) -> list[dict]:
    """The caller's library, newest first; archived packages drop out of it."""
    tier = get_subscription(user).tier
    stmt = (select(UserSoundPackage).join(UserSoundPackage.package)
            .options(joinedload(UserSoundPackage.package))
            .where(UserSoundPackage.user_id == user.id, SoundPackage.archived_at.is_(None)))
    if args.get("favorite") is not None:
        stmt = stmt.where(UserSoundPackage.favorite.is_(args["favorite"]))
    stmt = stmt.order_by(UserSoundPackage.assigned_at.desc(), UserSoundPackage.id.desc())
    return [entry_view(e, tier) for e in paginate(db, stmt, args)]


def _insert_entry(user_id: int, package_id: int, assigned_by_id: int | None,
                  favorite: bool | None) -> bool:
    """Insert once (a concurrent duplicate is a no-op). Returns True when a row was created."""
    dialect = db.session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(UserSoundPackage).values(
        user_id=user_id, package_id=package_id, assigned_at=utcnow(),
        assigned_by_id=assigned_by_id, favorite=bool(favorite))
    stmt = stmt.on_conflict_do_nothing(index_elements=["user_id", "package_id"])
    return db.session.execute(stmt).rowcount == 1


def add_to_library(user: User, package_id: int, favorite: bool | None = None) -> tuple[dict, bool]:
    """Add a catalog package; 403 above the caller's tier. Re-adding returns the entry as is
    (favourite updated when given). Returns ``(entry, created)``."""
    package = get_catalog_package(package_id)
    tier = get_subscription(user).tier
    validate_package_access(user, package, tier=tier)
    created = _insert_entry(user.id, package.id, None, favorite)
    entry = _entry(user.id, package.id)
    if not created and favorite is not None:
        entry.favorite = favorite
    db.session.commit()
    return entry_view(entry, tier), created


def set_favorite(user: User, package_id: int, favorite: bool) -> dict:
    entry = _entry(user.id, package_id)
    if entry is None or entry.package.archived_at is not None:
        not_found("Library entry")
    entry.favorite = favorite
    db.session.commit()
    return entry_view(entry, get_subscription(user).tier)


def remove_from_library(user: User, package_id: int) -> None:
    entry = _entry(user.id, package_id)
    if entry is None:
        not_found("Library entry")
    db.session.delete(entry)
    db.session.commit()


def assign_package(actor: User, user_id: int, package_id: int,
                   favorite: bool | None = None) -> tuple[dict, bool]:
    """An administrator puts a catalog package into a user's library (audit-logged).

    The tier is not checked here: an assignment is an editorial grant. A package above the
    user's tier shows as ``locked`` in their library, and starting it still needs the tier.
    """
    user = db.session.get(User, user_id)
    if user is None:
        not_found("User")
    package = get_catalog_package(package_id)
    created = _insert_entry(user.id, package.id, actor.id, favorite)
    entry = _entry(user.id, package.id)
    if not created and favorite is not None:
        entry.favorite = favorite
    audit.record(actor, "library.assign", "user", user.id, None,
                 {"package_id": package.id, "slug": package.slug, "created": created})
    db.session.commit()
    return entry_view(entry, get_subscription(user).tier), created
