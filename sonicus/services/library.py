"""The user's personal library: packages they added or an admin assigned to them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import joinedload

from ..envelope import Page, not_found, paginate
from ..extensions import db
from ..models import SoundPackage, User, UserSoundPackage
from ..models.base import utcnow
from ..tiers import check_package_access
from . import audit
from .catalog import PackageView, get_catalog_package
from .subscriptions import get_subscription
from .transaction import unit_of_work


@dataclass(frozen=True)
class LibraryItem:
    """A library entry with its package as the owner's tier sees it (``LibraryEntrySchema``)."""

    entry: UserSoundPackage
    package: PackageView

    def __getattr__(self, name):
        return getattr(self.entry, name)

    @property
    def assigned_by_admin(self) -> bool:
        return self.entry.assigned_by_id is not None

    @classmethod
    def of(cls, entry: UserSoundPackage, tier_name: str) -> LibraryItem:
        return cls(entry, PackageView.of(entry.package, tier_name))


def _entry(user_id: int, package_id: int) -> UserSoundPackage | None:
    return db.session.execute(
        select(UserSoundPackage).options(joinedload(UserSoundPackage.package))
        .where(UserSoundPackage.user_id == user_id, UserSoundPackage.package_id == package_id)
    ).scalar_one_or_none()


def list_library(caller, args: dict) -> Page:
    """The caller's library, newest first; archived packages drop out of it."""
    stmt = (select(UserSoundPackage).join(UserSoundPackage.package)
            .options(joinedload(UserSoundPackage.package))
            .where(UserSoundPackage.user_id == caller.id, SoundPackage.archived_at.is_(None)))
    if args.get("favorite") is not None:
        stmt = stmt.where(UserSoundPackage.favorite.is_(args["favorite"]))
    stmt = stmt.order_by(UserSoundPackage.assigned_at.desc(), UserSoundPackage.id.desc())
    page = paginate(db, stmt, args)
    return replace(page, items=[LibraryItem.of(e, caller.tier) for e in page.items])


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


def add_to_library(caller, package_id: int,
                   favorite: bool | None = None) -> tuple[LibraryItem, bool]:
    """Add a catalog package; 403 above the caller's tier. Re-adding returns the entry as is
    (favourite updated when given). Returns ``(item, created)``."""
    package = get_catalog_package(package_id)
    check_package_access(caller.tier, package.minimum_tier)
    with unit_of_work():
        created = _insert_entry(caller.id, package.id, None, favorite)
        entry = _entry(caller.id, package.id)
        if not created and favorite is not None:
            entry.favorite = favorite
    return LibraryItem.of(entry, caller.tier), created


def set_favorite(caller, package_id: int, favorite: bool) -> LibraryItem:
    with unit_of_work():
        entry = _entry(caller.id, package_id)
        if entry is None or entry.package.archived_at is not None:
            not_found("Library entry")
        entry.favorite = favorite
    return LibraryItem.of(entry, caller.tier)


def remove_from_library(user_id: int, package_id: int) -> None:
    with unit_of_work():
        entry = _entry(user_id, package_id)
        if entry is None:
            not_found("Library entry")
        db.session.delete(entry)


def assign_package(actor, user_id: int, package_id: int,
                   favorite: bool | None = None) -> tuple[LibraryItem, bool]:
    """An administrator puts a catalog package into a user's library (audit-logged).

    The tier is not checked here: an assignment is an editorial grant. A package above the
    user's tier shows as ``locked`` in their library, and starting it still needs the tier.
    """
    with unit_of_work():
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
        tier = get_subscription(user).tier
    return LibraryItem.of(entry, tier), created
