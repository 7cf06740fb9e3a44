"""Job functions: take ids, reload from the database, idempotent."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

REFRESH_JOB_ID = "analytics-refresh-{user_id}"
_PENDING = ("queued", "scheduled", "deferred")


def refresh_user_analytics(user_id: int):
    """Recompute, store, cache and publish one user's analytics."""
    from ..services.analytics import refresh_user_analytics as refresh

    data = refresh(user_id)
    return None if data is None else data["computed_at"]


def sweep_stale_analytics() -> int:
    """Re-enqueue refreshes still marked stale (their enqueue was lost, e.g. Redis was down)."""
    from rq.job import Job

    from ..extensions import get_redis
    from ..services.analytics import stale_user_ids
    from .queue import QUEUE_ANALYTICS, enqueue

    client = get_redis()
    queued = 0
    for user_id in stale_user_ids():
        job_id = REFRESH_JOB_ID.format(user_id=user_id)
        if client is not None:
            try:
                if Job.fetch(job_id, connection=client).get_status(refresh=False) in _PENDING:
                    continue  # already waiting for a worker
            except Exception:
                pass  # no such job (or expired): enqueue it
        enqueue(refresh_user_analytics, user_id, queue=QUEUE_ANALYTICS, job_id=job_id)
        queued += 1
    if queued:
        log.info("stale analytics sweep: %d refreshes enqueued", queued)
    return queued


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
