"""Platform-wide figures for administrators.

Computed with a handful of SQL aggregates, stored as a ``platform_stats`` row and cached for
``STATS_CACHE_TTL_SECONDS``. Reading: the cache, else the newest stored row; when that row is
older than the TTL it is served while a refresh job is requested (one at a time); with nothing
stored yet the first call computes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import delete, distinct, func, select

from .. import clock
from ..cache import cache_get, cache_set
from ..extensions import db, get_redis, guarded_redis_call
from ..models import ListeningSession, PlatformStats, User, UserSubscription
from ..models.listening import ENDED
from ..models.subscription import ACTIVE, PAST_DUE, TRIALING
from ..tasks.queue import QUEUE_MAINTENANCE, enqueue
from ..tiers import STARTER, TIERS
from .subscriptions.expiry import in_force_columns

CACHE_KEY = "platform_stats"
REFRESH_LOCK_KEY = "sonicus:lock:platform-stats-refresh"
REFRESH_JOB_ID = "platform-stats-refresh"
KEEP_ROWS_DAYS = 90
CURRENCY = "USD"
# A paid tier "in force": the subscription keeps its tier in these statuses
# (past_due keeps it during the grace period).
IN_FORCE = (ACTIVE, PAST_DUE)


def _ttl() -> int:
    return max(1, int(current_app.config["STATS_CACHE_TTL_SECONDS"]))


def _user_counts() -> tuple[int, int]:
    """(all users, suspended users)."""
    users_total, users_suspended = db.session.execute(
        select(func.count(User.id), func.count(User.id).filter(User.is_active.is_(False)))
    ).one()
    return users_total, users_suspended


def _subscription_groups() -> list:
    """One small grouped result over subscriptions; every subscription figure derives from it:
    rows of (tier, status, complimentary, trial_used, count), by the tier and status in force
    (``in_force_columns``: a trial, grace or period whose end has passed counts as what it
    became, as the admin list shows it, before the expiry job writes the change)."""
    tier, status = in_force_columns(clock.now())
    return db.session.execute(
        select(tier, status, UserSubscription.complimentary, UserSubscription.trial_used,
               func.count())
        .group_by(tier, status, UserSubscription.complimentary, UserSubscription.trial_used)
    ).all()


def _known_tier(tier: str) -> str:
    return tier if tier in TIERS else STARTER


def _paid_in_force(tier: str, status: str) -> bool:
    """A paid tier the subscription currently keeps (``tier`` already one of ``TIERS``)."""
    return TIERS[tier].is_paid and status in IN_FORCE


def _mrr(paying_by_tier: dict[str, int]) -> str:
    mrr_cents = sum(TIERS[tier].price_cents * count for tier, count in paying_by_tier.items())
    return str((Decimal(mrr_cents) / 100).quantize(Decimal("0.01")))


def _subscription_figures(groups, users_total: int) -> dict:
    """Users by tier, subscriptions in force (paying or complimentary), trialing, MRR."""
    users_by_tier = dict.fromkeys(TIERS, 0)
    paying_by_tier = dict.fromkeys(TIERS, 0)
    with_subscription = active = complimentary = trialing = 0
    for tier, status, is_complimentary, _trial_used, count in groups:
        with_subscription += count
        tier = _known_tier(tier)
        users_by_tier[tier] += count
        if _paid_in_force(tier, status):
            active += count
            if is_complimentary:
                complimentary += count
            else:
                paying_by_tier[tier] += count
        if status == TRIALING:
            trialing += count
    # A user whose subscription row is not created yet is on the free tier.
    users_by_tier[STARTER] += max(0, users_total - with_subscription)
    return {
        "users_by_tier": users_by_tier,
        "active_subscriptions": active,
        "paying_subscriptions": sum(paying_by_tier.values()),
        "complimentary_subscriptions": complimentary,
        "trialing": trialing,
        "mrr": _mrr(paying_by_tier),
        "currency": CURRENCY,
    }


def _trial_counts(groups) -> tuple[int, int]:
    """(trials ended, trials converted): a used trial no longer trialing, and of those the
    ones now paying for a paid tier in force."""
    trials_ended = trials_converted = 0
    for tier, status, is_complimentary, trial_used, count in groups:
        if status == TRIALING or not trial_used:
            continue
        trials_ended += count
        if _paid_in_force(_known_tier(tier), status) and not is_complimentary:
            trials_converted += count
    return trials_ended, trials_converted


def _listening_counts(now: datetime) -> tuple:
    """(sessions today, sessions in 30 days, active users in 7 and in 30 days, average
    seconds of an ended session), over the sessions started in the last 30 days. A session
    abandoned without a heartbeat is no 0-second listen: it is left out of the average."""
    today_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since_7d, since_30d = now - timedelta(days=7), now - timedelta(days=30)
    started = ListeningSession.started_at
    return db.session.execute(
        select(
            func.count(ListeningSession.id).filter(started >= today_start),
            func.count(ListeningSession.id),
            func.count(distinct(ListeningSession.user_id)).filter(started >= since_7d),
            func.count(distinct(ListeningSession.user_id)),
            func.avg(ListeningSession.listened_seconds).filter(
                ListeningSession.status == ENDED, ~ListeningSession.abandoned),
        ).where(started >= since_30d, started <= now)
    ).one()


def compute_platform_stats(now: datetime | None = None) -> dict:
    """The figures, from SQL aggregates only (no row is loaded into Python)."""
    now = now or clock.now()
    users_total, users_suspended = _user_counts()
    groups = _subscription_groups()
    sessions_today, sessions_30d, active_7d, active_30d, avg_seconds = _listening_counts(now)
    trials_ended, trials_converted = _trial_counts(groups)
    return {
        "users_total": users_total,
        "users_suspended": users_suspended,
        **_subscription_figures(groups, users_total),
        "sessions_today": sessions_today,
        "sessions_30d": sessions_30d,
        "active_users_7d": active_7d,
        "active_users_30d": active_30d,
        "trials_ended": trials_ended,
        "trials_converted": trials_converted,
        "trial_conversion_rate": (round(trials_converted / trials_ended, 4)
                                  if trials_ended else None),
        "avg_session_minutes": round(float(avg_seconds or 0) / 60, 2),
        "computed_at": now.isoformat(),
    }


def _typed(data: dict) -> dict:
    """Stored/cached JSON back to the service's types (computed_at as a datetime)."""
    out = dict(data)
    out["computed_at"] = datetime.fromisoformat(data["computed_at"])
    return out


def refresh_platform_stats(now: datetime | None = None) -> dict:
    """Compute, store a row (pruning old ones), cache; returns the figures."""
    data = compute_platform_stats(now)
    computed_at = datetime.fromisoformat(data["computed_at"])
    db.session.add(PlatformStats(data=data, computed_at=computed_at))
    db.session.execute(delete(PlatformStats).where(
        PlatformStats.computed_at < computed_at - timedelta(days=KEEP_ROWS_DAYS)))
    db.session.commit()
    cache_set(CACHE_KEY, data, _ttl())
    return _typed(data)


def request_refresh() -> None:
    """Enqueue one refresh (best effort); a Redis lock keeps concurrent requests to one job."""
    if get_redis() is not None:
        ttl = _ttl()
        if not guarded_redis_call("stats refresh lock", lambda client: client.set(
                REFRESH_LOCK_KEY, "1", nx=True, ex=ttl)):
            return  # another request holds it, or Redis is unavailable
    enqueue(refresh_platform_stats, queue=QUEUE_MAINTENANCE, job_id=REFRESH_JOB_ID,
            best_effort=True)


def latest_stored() -> PlatformStats | None:
    return db.session.execute(
        select(PlatformStats).order_by(PlatformStats.computed_at.desc()).limit(1)
    ).scalar_one_or_none()


def get_platform_stats(*, refresh: bool = False) -> dict:
    """The figures for the admin API and CLI (see the module docstring)."""
    if refresh:
        return refresh_platform_stats()
    cached = cache_get(CACHE_KEY)
    if cached is not None:
        return _typed(cached)
    row = latest_stored()
    if row is None:
        return refresh_platform_stats()
    age = (clock.now() - row.computed_at).total_seconds()
    ttl = _ttl()
    if age < ttl:
        cache_set(CACHE_KEY, row.data, max(1, int(ttl - age)))
    else:
        request_refresh()
    return _typed(row.data)
