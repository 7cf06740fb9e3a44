"""What the catalog calls a user's packages now: their titles and categories, which an admin may
change at any time. Cached figures (analytics, recaps) keep the labels they were computed with
(``labels_of``) and are served only while the catalog still says the same
(``labels_unchanged``): a renamed package, or one moved to another category, shows as it is now
in ``mood_by_package``, ``top_packages`` and ``top_categories``, not after the cache runs out."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import ListeningSession, SoundPackage


def labels_of(package_ids) -> dict[str, list]:
    """``{"<package id>": [title, category]}`` of these packages as the catalog has them now."""
    ids = sorted({int(pid) for pid in package_ids})
    if not ids:
        return {}
    p = SoundPackage
    return {str(pid): [title, category] for pid, title, category in db.session.execute(
        select(p.id, p.title, p.category).where(p.id.in_(ids))).all()}


def listened_labels(user_id: int) -> dict[str, list]:
    """``labels_of`` every package the user has a session of (read BEFORE the figures: a change
    committed meanwhile then shows as a difference, never as labels newer than the figures)."""
    p, s = SoundPackage, ListeningSession
    # driven by the user's sessions (their user_id index), as the figures' own scan is
    return {str(pid): [title, category] for pid, title, category in db.session.execute(
        select(p.id, p.title, p.category).distinct().join(s, s.package_id == p.id)
        .where(s.user_id == user_id)).all()}


def labels_unchanged(labels) -> bool:
    """Whether the catalog still labels these packages as ``labels`` says (one lookup by id)."""
    return isinstance(labels, dict) and labels_of(labels) == labels
