"""The user's personal library (packages they added or an admin assigned to them) and the
administrators' assignments, which open a package whatever the user's tier."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import joinedload

from .. import clock
from ..api_errors import fail, not_found
from ..extensions import db
from ..models import PackageAssignment, SoundPackage, User, UserSoundPackage, UserSubscription
from ..models.base import utcnow
from ..models.subscription import tier_awaiting_payment
from ..pagination import Page, paginate
from ..tiers import ACCESS_LOCKED, check_package_access, package_access
from . import audit
from .assignments import live_assignment, live_assignments
from .catalog import PackageView, get_catalog_package, in_catalog
from .subscriptions import lock_or_create_subscription
from .transaction import dialect_insert, unit_of_work


@dataclass(frozen=True)
class LibraryItem:
    """A library entry with its package as the owner sees it (``LibraryEntrySchema``) and the
    live assignment that opens it, if any."""

    entry: UserSoundPackage
    package: PackageView
    assignment: PackageAssignment | None = None

    def __getattr__(self, name):
        return getattr(self.entry, name)

    @property
    def assigned_by_admin(self) -> bool:
        """An administrator put it in the library, or a live assignment opens it: an entry
        the user had added before an assignment shows as assigned while the assignment
        lasts, and is the user's again once it ends."""
        return self.assignment is not None or self.entry.assigned_by_id is not None

    @classmethod
    def of(cls, entry: UserSoundPackage, tier_name: str,
           assignment: PackageAssignment | None = None) -> LibraryItem:
        return cls(entry, PackageView.of(entry.package, tier_name, assignment is not None,
                                         in_library=True), assignment)


def _entry(user_id: int, package_id: int, *, lock: bool = False) -> UserSoundPackage | None:
    """The library entry, if any; ``lock``: its row locked until the transaction ends (a
    removal at the same moment waits, or has happened and it is None: never a write to a
    row that is gone)."""
    stmt = (select(UserSoundPackage).options(joinedload(UserSoundPackage.package))
            .where(UserSoundPackage.user_id == user_id,
                   UserSoundPackage.package_id == package_id))
    if lock:
        stmt = (stmt.with_for_update(of=UserSoundPackage)
                .execution_options(populate_existing=True))
    return db.session.execute(stmt).scalar_one_or_none()


def _insert_and_lock(user_id: int, package_id: int, assigned_by_id: int | None,
                     favorite: bool | None) -> tuple[UserSoundPackage, bool]:
    """The entry, inserted when missing (``_insert_entry``) and locked; one removed between
    the insert that found it there and the lock is inserted again. ``(entry, created)``."""
    created = _insert_entry(user_id, package_id, assigned_by_id, favorite)
    entry = _entry(user_id, package_id, lock=True)
    if entry is None:  # removed at this moment (another tab)
        created = _insert_entry(user_id, package_id, assigned_by_id, favorite) or created
        entry = _entry(user_id, package_id, lock=True)
    return entry, created


def list_library(caller, args: dict, now: datetime | None = None) -> Page:
    """The caller's library, newest first; packages out of the catalog (archived, or
    unpublished until they are published again) drop out of it. Each package
    shows ``access`` (the caller's live assignments are read in one query)."""
    now = now or clock.now()
    stmt = (select(UserSoundPackage).join(UserSoundPackage.package)
            .options(joinedload(UserSoundPackage.package))
            .where(UserSoundPackage.user_id == caller.id, in_catalog()))
    if args.get("favorite") is not None:
        stmt = stmt.where(UserSoundPackage.favorite.is_(args["favorite"]))
    stmt = stmt.order_by(UserSoundPackage.assigned_at.desc(), UserSoundPackage.id.desc())
    page = paginate(db, stmt, args)
    assigned = (live_assignments(caller.id, now, [e.package_id for e in page.items])
                if page.items else {})
    return replace(page, items=[LibraryItem.of(e, caller.tier, assigned.get(e.package_id))
                                for e in page.items])


def _insert_entry(user_id: int, package_id: int, assigned_by_id: int | None,
                  favorite: bool | None) -> bool:
    """Insert once (a concurrent duplicate is a no-op). Returns True when a row was created."""
    stmt = dialect_insert()(UserSoundPackage).values(
        user_id=user_id, package_id=package_id, assigned_at=utcnow(),
        assigned_by_id=assigned_by_id, favorite=bool(favorite))
    stmt = stmt.on_conflict_do_nothing(index_elements=["user_id", "package_id"])
    return db.session.execute(stmt).rowcount == 1


def add_to_library(caller, package_id: int, favorite: bool | None = None,
                   now: datetime | None = None) -> tuple[LibraryItem, bool]:
    """Add a catalog package; 403 when neither the caller's tier nor a live assignment opens
    it. The entry itself grants nothing: access stays the tier's and the assignments'.
    Re-adding returns the entry as is (favourite updated when given). Returns
    ``(item, created)``."""
    now = now or clock.now()
    package = get_catalog_package(package_id)
    assignment = live_assignment(caller.id, package.id, now)
    assigned = assignment is not None
    if package_access(caller.tier, package.minimum_tier, assigned) == ACCESS_LOCKED:
        # refused: 402 when the tier whose payment has not arrived would open it, else 403
        sub = db.session.execute(select(UserSubscription.status, UserSubscription.checkout_tier)
                                 .where(UserSubscription.user_id == caller.id)).one_or_none()
        check_package_access(caller.tier, package.minimum_tier, assigned,
                             awaiting=tier_awaiting_payment(sub) if sub else None)
    with unit_of_work():
        entry, created = _insert_and_lock(caller.id, package.id, None, favorite)
        if not created and favorite is not None:
            entry.favorite = favorite
    return LibraryItem.of(entry, caller.tier, assignment), created


def set_favorite(caller, package_id: int, favorite: bool) -> LibraryItem:
    now = clock.now()
    with unit_of_work():
        entry = _entry(caller.id, package_id, lock=True)
        if entry is None or not entry.package.in_catalog_at(now):
            not_found("Library entry")
        entry.favorite = favorite
        # read before the commit: a committed change answers without the database
        assignment = live_assignment(caller.id, package_id, now)
    return LibraryItem.of(entry, caller.tier, assignment)


def remove_from_library(user_id: int, package_id: int) -> None:
    """Remove an entry from the library. An assignment of the package is not touched: it is
    the administrator's to revoke."""
    with unit_of_work():
        entry = _entry(user_id, package_id, lock=True)
        if entry is None:  # never there, or removed a moment ago (another tab)
            not_found("Library entry")
        db.session.delete(entry)


def _assignment_record(assignment: PackageAssignment, package: SoundPackage) -> dict:
    def iso(moment):
        return moment.isoformat() if moment is not None else None

    return {"package_id": package.id, "slug": package.slug,
            "assigned_at": iso(assignment.assigned_at), "expires_at": iso(assignment.expires_at),
            "revoked_at": iso(assignment.revoked_at)}


def assign_package(actor, user_id: int, package_id: int, favorite: bool | None = None,
                   expires_at: datetime | None = None,
                   now: datetime | None = None) -> tuple[LibraryItem, bool]:
    """An administrator assigns a catalog package to a user (audit-logged): it is playable by
    them whatever their tier until ``expires_at`` (optional; must be in the future, else 422)
    or a revocation, and it is put in their library.

    A live assignment of the package is updated instead (its ``expires_at`` becomes the one
    given, none meaning no end). Returns ``(item, created)``: created is False for an update.
    The user's subscription row is locked, so that assignments and session starts of one user
    serialise.
    """
    now = now or clock.now()
    if expires_at is not None and expires_at <= now:
        fail(422, "validation_error", "The request is not valid.",
             errors=["expires_at: Must be in the future."])
    with unit_of_work():
        user = db.session.get(User, user_id)
        if user is None:
            not_found("User")
        package = get_catalog_package(package_id)
        sub = lock_or_create_subscription(user.id)
        assignment = live_assignment(user.id, package.id, now, lock=True)
        created = assignment is None
        before = None if created else _assignment_record(assignment, package)
        if created:
            assignment = PackageAssignment(user_id=user.id, package_id=package.id,
                                           assigned_by_id=actor.id, assigned_at=now,
                                           expires_at=expires_at)
            db.session.add(assignment)
        else:
            assignment.expires_at = expires_at
        # ``favorite`` marks an entry the assignment puts in the library; an entry already
        # there keeps the user's own choice (and whoever added it).
        entry, _ = _insert_and_lock(user.id, package.id, actor.id, favorite)
        db.session.flush()
        audit.record(actor, "library.assign", "user", user.id, before,
                     {**_assignment_record(assignment, package), "created": created})
        tier = sub.tier
    return LibraryItem.of(entry, tier, assignment), created


def revoke_assignment(actor, user_id: int, package_id: int,
                      now: datetime | None = None) -> PackageAssignment:
    """An administrator revokes a live assignment (audit-logged); 404 when there is none.
    The row stays as history; the user's library entry stays (the package shows locked unless
    the tier opens it). A session already running may finish; the next start needs the tier."""
    now = now or clock.now()
    with unit_of_work():
        user = db.session.get(User, user_id)
        if user is None:
            not_found("User")
        lock_or_create_subscription(user.id)
        assignment = live_assignment(user.id, package_id, now, lock=True)
        if assignment is None:
            not_found("Assignment")
        package = db.session.get(SoundPackage, package_id)
        before = _assignment_record(assignment, package)
        assignment.revoked_at = now
        assignment.revoked_by_id = actor.id
        audit.record(actor, "library.revoke", "user", user.id, before,
                     _assignment_record(assignment, package))
    return assignment
