"""Personal analytics: mark stale, request a refresh, compute, store, cache, publish.

The refresh request is an outbox: ``mark_stale`` writes ``stale_since`` in the caller's
transaction; ``request_refresh`` enqueues after the commit (best effort); a periodic sweep
re-enqueues anything still stale, so no refresh is lost while Redis is down.

Every figure is computed in SQL from the user's own rows (aggregates only): the database
returns a handful of rows per user however many sessions there are.

Days are the user's days under the day settings in force (``clock.user_day``); a session
belongs to the day stored with it when it started. Only sessions that count
(``ListeningSession.counts_in_outcomes``: no refunded taps, at least a minute listened) feed
streaks, completion figures and mood outcomes.

The cache's key, the settings stamp the figures are kept under and their forgetting:
``services.analytics_cache``.
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta

from flask import current_app
from sqlalchemy import and_, case, func, select, update
from sqlalchemy.exc import IntegrityError

from .. import clock
from ..cache import cache_get_raw, cache_replace, cache_set
from ..extensions import db
from ..models import ListeningSession, SoundPackage, User, UserAnalytics
from ..models.listening import ENDED
from ..models.user import merge_preferences
from ..realtime.publish import publish_to_user
from ..tasks.queue import QUEUE_ANALYTICS, enqueue, job_is_pending
from .analytics_cache import (
    cache_key,
    invalidate_user_analytics,
    settings_stamp,
    settings_version,
    still_there,
)
from .package_labels import labels_unchanged, listened_labels
from .quota import counted_on_day
from .recaps import forget_recent_recaps
from .recommendation_model import refresh_user_outcomes
from .streaks import active_days, day_islands, recent_freeze_days, streaks_from_islands
from .transaction import dialect_insert, names_a_missing_user, unit_of_work

log = logging.getLogger(__name__)

DAILY_MINUTES_DAYS = 30
TOP_CATEGORIES = 5
GOAL_DAYS = 7  # goal.days_met_last_7
# Default of ANALYTICS_STALE_GRACE_SECONDS: a row stale for longer than this is re-enqueued
# by the sweep (its own enqueue was lost).
STALE_GRACE_SECONDS = 30
SWEEP_BATCH = 500
REFRESH_JOB_ID = "analytics-refresh-{user_id}"


def _cache_figures(user_id: int, settings: str, data: dict, ttl: int, labels: dict) -> None:
    """Cache ``data``, computed under ``settings`` (``settings_stamp`` of the user as read
    for the computation: taken before any commit reloads the row) with the catalog's
    ``labels`` of the user's packages as read before it (``package_labels``)."""
    cache_set(cache_key(user_id), {"settings": settings, "figures": data, "labels": labels}, ttl)


def _cached_figures(person, raw: str | None) -> dict | None:
    """The cached figures of ``person`` (``raw``: the entry read), if computed under the
    settings it has now and its packages' titles and categories as they are now."""
    cached = None if raw is None else json.loads(raw)
    if not isinstance(cached, dict) or cached.get("settings") != settings_stamp(person) \
            or not labels_unchanged(cached.get("labels")):
        return None
    return cached.get("figures")


def mark_stale(user_id: int) -> None:
    """Record, in the current transaction, that this user's analytics need a refresh.
    ``stale_since`` holds the latest mark: a refresh clears it only when nothing marked the
    row again after the refresh read it."""
    now = clock.now()
    stmt = dialect_insert()(UserAnalytics).values(user_id=user_id, data={}, stale_since=now)
    stmt = stmt.on_conflict_do_update(index_elements=[UserAnalytics.user_id],
                                      set_={"stale_since": now})
    db.session.execute(stmt)


def request_refresh(user_id: int) -> None:
    """Enqueue the refresh job (after the commit); inline on the embedded default. The
    recaps the change can touch are forgotten at once."""
    forget_recent_recaps(user_id)
    try:
        enqueue(refresh_user_analytics, user_id, queue=QUEUE_ANALYTICS, best_effort=True)
    except Exception:  # inline run on the embedded default: the sweep retries it
        log.exception("inline analytics refresh failed for user %s", user_id)
        db.session.rollback()


# ---- computation ---------------------------------------------------------------------------

def _minutes(seconds) -> float:
    return round(float(seconds or 0) / 60.0, 1)


def _mood(value) -> float | None:
    return None if value is None else round(float(value), 2)


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _mood_terms():
    """(the session has both moods and counts, mood after minus mood before) in SQL."""
    s = ListeningSession
    return (s.mood_before.is_not(None) & s.mood_after.is_not(None) & s.counts_in_outcomes,
            s.mood_after - s.mood_before)


def _totals(user_id: int, today: date):
    """One row: (sessions, completed, ended, seconds, seconds this week, sessions today,
    average mood change); completed and ended count only sessions that count; sessions today
    are the quota's (``quota.counted_on_day``: a tap given back is none)."""
    s = ListeningSession
    has_mood, mood_change = _mood_terms()
    week_start = today - timedelta(days=today.weekday())
    counted = s.counts_in_outcomes
    return db.session.execute(select(
        func.coalesce(func.sum(case((s.abandoned, 0), else_=1)), 0),  # started and left
        func.coalesce(func.sum(case((counted & s.completed.is_(True), 1), else_=0)), 0),
        func.coalesce(func.sum(case((counted & (s.status == ENDED), 1), else_=0)), 0),
        func.coalesce(func.sum(s.listened_seconds), 0),
        func.coalesce(func.sum(case((s.local_day >= week_start, s.listened_seconds),
                                    else_=0)), 0),
        func.coalesce(func.sum(case((and_(*counted_on_day(user_id, today)), 1), else_=0)), 0),
        func.avg(case((has_mood, mood_change), else_=None)),
    ).where(s.user_id == user_id)).one()


def _daily_seconds(user_id: int, today: date) -> list[tuple[date, int]]:
    """Seconds listened on each of the last ``DAILY_MINUTES_DAYS`` days, oldest first."""
    s = ListeningSession
    first_daily = today - timedelta(days=DAILY_MINUTES_DAYS - 1)
    daily_rows = db.session.execute(
        select(s.local_day, func.coalesce(func.sum(s.listened_seconds), 0))
        .where(s.user_id == user_id, s.local_day >= first_daily, s.local_day <= today)
        .group_by(s.local_day)).all()
    by_day = {_as_date(day): int(secs) for day, secs in daily_rows}
    days = (first_daily + timedelta(days=i) for i in range(DAILY_MINUTES_DAYS))
    return [(day, by_day.get(day, 0)) for day in days]


def _package_rows(user_id: int) -> list:
    """One row per package the user listened to: (id, title, category, sessions, seconds,
    sessions with both moods, average mood change). Categories and mood outcomes both come
    from it (the catalog is small; the sessions never leave the database)."""
    s, p = ListeningSession, SoundPackage
    has_mood, mood_change = _mood_terms()
    return db.session.execute(
        select(p.id, p.title, p.category, func.count(s.id),
               func.coalesce(func.sum(s.listened_seconds), 0),
               func.sum(case((has_mood, 1), else_=0)),
               func.avg(case((has_mood, mood_change), else_=None)))
        .join(p, p.id == s.package_id).where(s.user_id == user_id)
        .group_by(p.id, p.title, p.category)).all()


def _top_categories(package_rows) -> list[dict]:
    categories: dict[str, list] = {}
    for _pid, _title, category, count, secs, _mood_count, _avg in package_rows:
        entry = categories.setdefault(category, [0, 0])
        entry[0] += count
        entry[1] += secs or 0
    return [
        {"category": name, "sessions": count, "minutes": _minutes(secs)}
        for name, (count, secs) in sorted(categories.items(),
                                          key=lambda item: (-item[1][0], -item[1][1], item[0]))
    ][:TOP_CATEGORIES]


def _mood_by_package(package_rows) -> list[dict]:
    return sorted(
        ({"package_id": pid, "title": title, "sessions": int(mood_count),
          "avg_mood_change": _mood(avg)}
         for pid, title, _category, _count, _secs, mood_count, avg in package_rows
         if mood_count),
        key=lambda item: (-item["avg_mood_change"], -item["sessions"], item["package_id"]))


def _goal(goal_minutes, daily_seconds: list[tuple[date, int]]) -> dict | None:
    """How the user does against ``preferences.daily_goal_minutes`` (None: no goal). A day
    meets it with the goal's seconds listened (9 min 59 s shown rounded as 10.0 does not)."""
    if not goal_minutes:
        return None
    recent = [seconds for _day, seconds in daily_seconds[-GOAL_DAYS:]]
    return {"minutes_today": _minutes(recent[-1]), "goal_minutes": int(goal_minutes),
            "met_today": recent[-1] >= goal_minutes * 60,
            "days_met_last_7": sum(1 for seconds in recent if seconds >= goal_minutes * 60)}


def compute_user_analytics(user: User, now: datetime | None = None) -> dict:
    """Every figure of API.md "Analytics" for ``user``, from their own rows only.

    With ``preferences.show_streaks`` false the streak figures (current and longest streak,
    freezes) are None: the analytics, the dashboard and the socket never show them."""
    now = now or clock.now()
    today = clock.user_day(user, now).day
    preferences = merge_preferences(dict(user.preferences or {}))
    total, completed, ended, seconds, week_seconds, today_count, avg_change = \
        _totals(user.id, today)
    islands = day_islands(user.id, today)
    daily_seconds = _daily_seconds(user.id, today)
    package_rows = _package_rows(user.id)
    data = {
        "total_sessions": int(total),
        "completed_sessions": int(completed),
        "completion_rate": round(int(completed) / int(ended), 3) if ended else 0.0,
        "total_minutes": _minutes(seconds),
        "minutes_this_week": _minutes(week_seconds),
        "sessions_today": int(today_count),
        "current_streak_days": None,
        "longest_streak_days": None,
        "freezes_available": None,
        "freeze_days": None,
        "avg_mood_change": _mood(avg_change),
        "goal": _goal(preferences.get("daily_goal_minutes"), daily_seconds),
        "active_days_last_7": active_days(islands, today - timedelta(days=6), today),
        "active_days_last_30": active_days(islands, today - timedelta(days=29), today),
        "top_categories": _top_categories(package_rows),
        "daily_minutes": [{"date": day.isoformat(), "minutes": _minutes(seconds)}
                          for day, seconds in daily_seconds],
        "mood_by_package": _mood_by_package(package_rows),
        "day": today.isoformat(),
        "computed_at": now.isoformat(),
    }
    if preferences.get("show_streaks") is not False:
        streaks = streaks_from_islands(islands, today, clock.dates_never_begun(user))
        data.update(current_streak_days=streaks.current, longest_streak_days=streaks.longest,
                    freezes_available=streaks.freezes_available,
                    freeze_days=recent_freeze_days(streaks, today))
    return data


def _cache_ttl(user, now: datetime) -> int:
    """The configured TTL, cut short at the user's next day start (today's figures roll)."""
    ttl = int(current_app.config["ANALYTICS_CACHE_TTL_SECONDS"])
    until_rollover = (clock.user_day(user, now).ends_at - now).total_seconds()
    return max(1, min(ttl, int(until_rollover) + 1))


def refresh_user_analytics(user_id: int, *, publish: bool = True) -> dict | None:
    """Recompute, store, cache and (by default) publish one user's analytics. Idempotent;
    the refresh job itself (enqueued by reference).

    The user's analytics row is locked for the computation (PostgreSQL), so two refreshes of
    one user run one after the other and the later one stores the newer figures.
    ``stale_since`` is cleared only if no one marked the row again after it was read here.

    An account erased meanwhile ends it quietly (None): erased before the figures are
    stored, its row is refused (no failed job); erased after, its figures are forgotten
    again once cached (``analytics_cache.still_there``), so none stay cached past the erasure.
    """
    user = db.session.get(User, user_id)
    if user is None:
        invalidate_user_analytics(user_id)
        db.session.rollback()
        return None
    try:
        db.session.execute(dialect_insert()(UserAnalytics).values(user_id=user_id, data={})
                           .on_conflict_do_nothing(index_elements=[UserAnalytics.user_id]))
    except IntegrityError as exc:
        db.session.rollback()
        if not names_a_missing_user(exc):
            raise
        invalidate_user_analytics(user_id)  # erased since it was read
        return None
    marked = db.session.execute(
        select(UserAnalytics.stale_since).where(UserAnalytics.user_id == user_id)
        .with_for_update()).scalar_one()
    now = clock.now()
    labels = listened_labels(user_id)
    data = compute_user_analytics(user, now)
    settings = settings_stamp(user)  # as read for the computation, before the commit
    version = settings_version(user)
    values = {"data": data, "computed_at": now}
    if marked is not None:
        values["stale_since"] = case((UserAnalytics.stale_since <= marked, None),
                                     else_=UserAnalytics.stale_since)
    db.session.execute(update(UserAnalytics).where(UserAnalytics.user_id == user_id)
                       .values(**values))
    refresh_user_outcomes(user_id)  # the user's own figures behind their recommendations
    ttl = _cache_ttl(user, now)
    db.session.commit()
    _cache_figures(user_id, settings, data, ttl, labels)
    forget_recent_recaps(user_id)  # again: a recap computed while the change committed
    there = still_there(user_id)
    db.session.rollback()
    if not there:
        return None
    if publish:
        publish_to_user(user_id, {"type": "analytics.updated", "data": data},
                        settings_version=version)
    return data


def get_user_analytics(person) -> dict:
    """The caller's analytics (``person``: a user or a caller): from the cache, else computed
    now and cached (not stored: a read never commits) unless a refresh cached newer meanwhile,
    nor left cached when the account was erased meanwhile (``analytics_cache.still_there``)."""
    raw = cache_get_raw(cache_key(person.id))
    if (data := _cached_figures(person, raw)) is not None:
        return data
    now, labels = clock.now(), listened_labels(person.id)
    data = compute_user_analytics(person, now)
    if cache_replace(cache_key(person.id), {"settings": settings_stamp(person), "figures": data,
                                            "labels": labels}, _cache_ttl(person, now), raw):
        still_there(person.id)  # erased meanwhile: what was just cached is forgotten again
    return data


def analytics_for_user_id(user_id: int) -> dict | None:
    """The analytics of a user known by id (a socket's snapshot); None once erased."""
    return None if (user := db.session.get(User, user_id)) is None else get_user_analytics(user)


def stale_user_ids(limit: int = SWEEP_BATCH, grace_seconds: int | None = None):
    """Users whose analytics were marked stale more than ``grace_seconds`` ago."""
    grace_seconds = grace_seconds if grace_seconds is not None else int(
        current_app.config.get("ANALYTICS_STALE_GRACE_SECONDS", STALE_GRACE_SECONDS))
    cutoff = clock.now() - timedelta(seconds=grace_seconds)
    return list(db.session.execute(
        select(UserAnalytics.user_id)
        .where(UserAnalytics.stale_since.is_not(None), UserAnalytics.stale_since <= cutoff)
        .order_by(UserAnalytics.stale_since).limit(limit)).scalars())


def all_user_ids() -> list[int]:
    return list(db.session.execute(select(User.id).order_by(User.id)).scalars())

def queue_refresh(user_id: int) -> None:
    """Mark the caller's analytics stale and enqueue a refresh (the sweep covers a lost one)."""
    with unit_of_work():
        mark_stale(user_id)
    request_refresh(user_id)


def sweep_stale_analytics() -> int:
    """Periodic: re-enqueue refreshes still marked stale (their enqueue was lost, e.g. Redis
    was down); a refresh already waiting for a worker is left alone."""
    queued = 0
    for user_id in stale_user_ids():
        job_id = REFRESH_JOB_ID.format(user_id=user_id)
        if job_is_pending(job_id):
            continue
        enqueue(refresh_user_analytics, user_id, queue=QUEUE_ANALYTICS, job_id=job_id)
        queued += 1
    if queued:
        log.info("stale analytics sweep: %d refreshes enqueued", queued)
    return queued
