"""Job functions: take ids, reload from the database, idempotent."""

from __future__ import annotations


def refresh_user_analytics(user_id: int):
    from ..services.analytics import refresh_user_analytics as refresh

    return refresh(user_id)


def close_stale_sessions():
    """Close listening sessions left open past their maximum length (idempotent)."""
    from ..services.listening import close_stale_sessions as close

    return close()


def refresh_platform_stats():
    """Recompute the platform figures, store and cache them; returns when they were computed."""
    from ..services.stats import refresh_platform_stats as refresh

    return refresh()["computed_at"].isoformat()


def process_due_subscriptions():
    """Trial ends, grace ends and period ends that are due (safe twice and in parallel)."""
    from ..services.subscriptions import process_due_subscriptions as process

    result = process()
    return {"processed": result["processed"], "outcomes": result["outcomes"]}
