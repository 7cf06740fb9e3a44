"""Packages an administrator assigned to a user: a live assignment opens its package whatever
the user's tier (``tiers.check_package_access(..., assigned=True)``).

Every reader asks here, with one query per request however many packages it shows:
``live_assignments`` (a user's live assignments by package), ``live_package_ids`` (the same
as a subquery, for filters inside a larger statement) and ``is_assigned`` (one package, at any
instant: "was it assigned at time t"). Assigning and revoking are in ``services.library``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select

from .. import clock
from ..extensions import db
from ..models import PackageAssignment


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


def is_assigned(user_id: int, package_id: int, at: datetime) -> bool:
    """Whether an assignment opened this package to this user at ``at``."""
    return db.session.execute(select(exists().where(
        PackageAssignment.user_id == user_id, PackageAssignment.package_id == package_id,
        PackageAssignment.live_at(at)))).scalar_one()


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
