"""The audit log: who changed what, when, with the state before and after."""

from __future__ import annotations

from ..extensions import db
from ..models import AuditLog, User


def record(actor: User | None, action: str, target_type: str, target_id,
           before: dict | None = None, after: dict | None = None,
           actor_label: str | None = None) -> AuditLog:
    """Add an audit entry to the current transaction (the caller commits)."""
    entry = AuditLog(actor_id=actor.id if actor is not None else None,
                     actor_label=actor_label or (actor.email if actor is not None else "system"),
                     action=action, target_type=target_type,
                     target_id=None if target_id is None else str(target_id),
                     before=before, after=after)
    db.session.add(entry)
    return entry
