"""Job functions: take ids, reload from the database, idempotent."""

from __future__ import annotations


def refresh_user_analytics(user_id: int):
    from ..services.analytics import refresh_user_analytics as refresh

    return refresh(user_id)


def close_stale_sessions():
    """Close listening sessions left open past their maximum length (idempotent)."""
    from ..services.listening import close_stale_sessions as close

    return close()
