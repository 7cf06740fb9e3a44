"""Job functions: take ids, reload from the database, idempotent."""

from __future__ import annotations


def refresh_user_analytics(user_id: int):
    from ..services.analytics import refresh_user_analytics as refresh

    return refresh(user_id)


def process_due_subscriptions():
    """Trial ends, grace ends and period ends that are due (safe twice and in parallel)."""
    from ..services.subscriptions import process_due_subscriptions as process

    result = process()
    return {"processed": result["processed"], "outcomes": result["outcomes"]}
