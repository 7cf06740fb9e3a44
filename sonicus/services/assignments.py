"""Packages an administrator assigned to a user: a live assignment opens its package whatever
the user's tier (``tiers.check_package_access(..., assigned=True)``).

Every reader asks here, with one query per request however many packages it shows:
``live_assignments`` (a user's live assignments by package), ``live_package_ids`` (the same
as a subquery, for filters inside a larger statement), ``is_assigned`` (one package, at any
instant: "was it assigned at time t") and ``personal_marks`` (for a page of the catalog: which
packages are assigned and which are in the user's library, in one query). Assigning and
revoking are in ``services.library``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, literal, select, union_all

from .. import clock
from ..extensions import db
from ..models import PackageAssignment, UserSoundPackage


def live_package_ids(user_id: int, at: datetime):
    """SELECT of the package ids the user's live assignments open at ``at``."""
    return (select(PackageAssignment.package_id)
            .where(PackageAssignment.user_id == user_id, PackageAssignment.live_at(at)))


def live_assignments(user_id: int, at: datetime | None = None,
                     package_ids=None) -> dict[int, PackageAssignment]:
    """The user's assignments live at ``at`` (default now) by package id, in one query;
    ``package_ids`` narrows it to those packages."""
    at = at or clock.now()
    stmt = (select(PackageAssignment)
            .where(PackageAssignment.user_id == user_id, PackageAssignment.live_at(at))
            .order_by(PackageAssignment.assigned_at))
    if package_ids is not None:
        stmt = stmt.where(PackageAssignment.package_id.in_(list(package_ids)))
    return {a.package_id: a for a in db.session.execute(stmt).scalars()}


def assigned_clause(user_id: int, package_id: int, at: datetime):
    """SQL: an assignment opened this package to this user at ``at`` (for one statement that
    reads it along with other things)."""
    return exists().where(
        PackageAssignment.user_id == user_id, PackageAssignment.package_id == package_id,
        PackageAssignment.live_at(at))


def is_assigned(user_id: int, package_id: int, at: datetime) -> bool:
    """Whether an assignment opened this package to this user at ``at``."""
    return db.session.execute(select(assigned_clause(user_id, package_id, at))).scalar_one()


def live_assignment(user_id: int, package_id: int, at: datetime,
                    *, lock: bool = False) -> PackageAssignment | None:
    """The assignment of this package to this user live at ``at``, if any."""
    stmt = (select(PackageAssignment)
            .where(PackageAssignment.user_id == user_id,
                   PackageAssignment.package_id == package_id, PackageAssignment.live_at(at))
            .order_by(PackageAssignment.assigned_at.desc()).limit(1))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return db.session.execute(stmt).scalar_one_or_none()


def personal_marks(user_id: int, at: datetime, package_ids) -> tuple[set[int], set[int]]:
    """Of ``package_ids``: those the user's live assignments open at ``at``, and those in the
    user's library, as ``(assigned, in_library)``, read in one query."""
    ids = list(package_ids)
    if not ids:
        return set(), set()
    assigned = (select(PackageAssignment.package_id, literal("a").label("mark"))
                .where(PackageAssignment.user_id == user_id, PackageAssignment.live_at(at),
                       PackageAssignment.package_id.in_(ids)))
    library = (select(UserSoundPackage.package_id, literal("l").label("mark"))
               .where(UserSoundPackage.user_id == user_id,
                      UserSoundPackage.package_id.in_(ids)))
    marks: tuple[set[int], set[int]] = (set(), set())
    for package_id, mark in db.session.execute(union_all(assigned, library)):
        marks[0 if mark == "a" else 1].add(package_id)
    return marks
