"""Recaps: a week, a month or a year of the user's listening (API.md "Recaps").

Periods are made of the user's days (each session belongs to the user day it started on):
a week runs Monday to Sunday, a month and a year are the calendar's. Every figure is an
SQL aggregate over the user's own rows (four statements: the period and the previous one
together, the packages, the hours, the streak islands); the sessions never leave the database.

Cached (``sonicus.cache``) under the user's recap generation: a period that is over is kept
long (``PAST_TTL_SECONDS``), the current one briefly (``CURRENT_TTL_SECONDS``). A change to
the user's sessions forgets the periods it can touch (``forget_recent_recaps``: sessions land
on days of the last two weeks at most, offline sync included); a change of profile or an
erasure forgets them all (``forget_user_recaps``, a new generation). Year recaps are computed
ahead by ``precompute_year_recaps`` (a periodic job, January 1 to 7) and on demand.

``preferences.show_streaks`` false: ``longest_streak`` is null (applied when served, never
cached).
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, case, cast, func, literal, select

from .. import clock
from ..cache import cache_delete, cache_get, cache_set
from ..envelope import ApiError
from ..extensions import db
from ..models import ListeningSession, SoundPackage, User
from ..models.user import merge_preferences
from .streaks import streak_islands, streaks_from_islands

log = logging.getLogger(__name__)

PERIODS = ("week", "month", "year")
FIRST_RECAP_DATE, LAST_RECAP_DATE = date(1970, 1, 1), date(9998, 12, 31)
TOP_PACKAGES = 5
TOP_CATEGORIES = 5
CURRENT_TTL_SECONDS = 300
PAST_TTL_SECONDS = 400 * 24 * 3600  # a past year stays until the next one is computed
GENERATION_TTL_SECONDS = PAST_TTL_SECONDS
# Sessions are stored on a user day of the last 14 days at most (offline sync); two days of
# margin for time zones.
RECENT_DAYS = 16
PRECOMPUTE_UNTIL_DAY = 7  # year recaps are precomputed on January 1..7 (user days)


# ---- periods ---------------------------------------------------------------------------------

def period_bounds(period: str, on_date: date) -> tuple[date, date]:
    """The first and last day of the ``period`` containing ``on_date``."""
    if period == "week":
        first = on_date - timedelta(days=on_date.weekday())
        return first, first + timedelta(days=6)
    if period == "month":
        first = on_date.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        return first, following - timedelta(days=1)
    if period == "year":
        return date(on_date.year, 1, 1), date(on_date.year, 12, 31)
    raise ApiError(422, "validation_error", "The request is not valid.",
                   errors=["period: Must be one of: week, month, year."])


# ---- the cache -------------------------------------------------------------------------------

def _generation_key(user_id: int) -> str:
    return f"recap-generation:{user_id}"


def _recap_key(user_id: int, generation: str, period: str, first: date) -> str:
    return f"recap:{user_id}:{generation}:{period}:{first.isoformat()}"


def _generation(user_id: int) -> str:
    """The user's current recap generation (made when there is none). Read before computing,
    so a change committed after the computation began forgets what it stores."""
    generation = cache_get(_generation_key(user_id))
    if generation is None:
        generation = secrets.token_hex(6)
        cache_set(_generation_key(user_id), generation, GENERATION_TTL_SECONDS)
    return generation


def forget_user_recaps(user_id: int) -> None:
    """Forget every cached recap of the user (profile changed, account erased)."""
    cache_delete(_generation_key(user_id))


def forget_recent_recaps(user_id: int, now: datetime | None = None) -> None:
    """Forget the cached recaps of periods that a change to the user's sessions can touch:
    those overlapping the last ``RECENT_DAYS`` days (whatever the user's time zone)."""
    generation = cache_get(_generation_key(user_id))
    if generation is None:
        return
    today = (now or clock.now()).astimezone(UTC).date() + timedelta(days=1)
    for period in PERIODS:
        seen = set()
        for back in range(RECENT_DAYS + 2):
            first, _last = period_bounds(period, today - timedelta(days=back))
            if first not in seen:
                seen.add(first)
                cache_delete(_recap_key(user_id, generation, period, first))


# ---- the figures -----------------------------------------------------------------------------

def _minutes(seconds) -> float:
    return round(float(seconds or 0) / 60.0, 1)


def _mood(value) -> float | None:
    return None if value is None else round(float(value), 2)


def _totals(user_id: int, first: date, last: date, prev_first: date):
    """One row: the period's and the previous period's totals (one scan of both)."""
    s = ListeningSession
    now_ = s.local_day >= first
    before = s.local_day < first
    counted = s.counts_in_outcomes
    has_mood = s.mood_before.is_not(None) & s.mood_after.is_not(None) & counted
    in_mood = now_ & has_mood
    return db.session.execute(select(
        func.coalesce(func.sum(case((now_, s.listened_seconds), else_=0)), 0),
        func.coalesce(func.sum(case((now_, 1), else_=0)), 0),
        func.coalesce(func.sum(case((now_ & counted & s.completed.is_(True), 1), else_=0)), 0),
        func.count(func.distinct(case((now_ & counted, s.local_day), else_=None))),
        func.avg(case((in_mood, s.mood_before), else_=None)),
        func.avg(case((in_mood, s.mood_after), else_=None)),
        func.avg(case((in_mood, s.mood_after - s.mood_before), else_=None)),
        func.coalesce(func.sum(case((before, s.listened_seconds), else_=0)), 0),
        func.coalesce(func.sum(case((before, 1), else_=0)), 0),
        func.count(func.distinct(case((before & counted, s.local_day), else_=None))),
    ).where(s.user_id == user_id, s.local_day >= prev_first, s.local_day <= last)).one()


def _package_rows(user_id: int, first: date, last: date) -> list:
    """One row per package listened to in the period: (id, title, category, sessions,
    seconds, sessions with both moods that count, average mood change)."""
    s, p = ListeningSession, SoundPackage
    has_mood = s.mood_before.is_not(None) & s.mood_after.is_not(None) & s.counts_in_outcomes
    return db.session.execute(
        select(p.id, p.title, p.category, func.count(s.id),
               func.coalesce(func.sum(s.listened_seconds), 0),
               func.sum(case((has_mood, 1), else_=0)),
               func.avg(case((has_mood, s.mood_after - s.mood_before), else_=None)))
        .join(p, p.id == s.package_id)
        .where(s.user_id == user_id, s.local_day >= first, s.local_day <= last)
        .group_by(p.id, p.title, p.category)).all()


def _zone_expression(person):
    """The user's time zone in force when each session started (``clock.day_settings_at``),
    as an SQL expression."""
    s = ListeningSession
    effective_at = person.day_settings_effective_at
    if effective_at is not None and person.prior_timezone is not None \
            and person.prior_day_start_hour is not None:
        return case((s.started_at < effective_at, person.prior_timezone), else_=person.timezone)
    return literal(person.timezone)


def _listening_hours(person, first: date, last: date) -> list[float]:
    """Minutes listened by the local hour at which the sessions started (24 numbers).

    PostgreSQL converts each start to the zone in force then and groups by its hour. SQLite
    knows no time zones: it groups by quarter hour of UTC (every zone's offset is a whole
    number of quarter hours), and each quarter's few rows are placed on their local hour here.
    """
    s = ListeningSession
    scope = (s.user_id == person.id, s.local_day >= first, s.local_day <= last)
    seconds = [0] * 24
    if db.session.get_bind().dialect.name == "postgresql":
        hour = func.extract("hour", func.timezone(_zone_expression(person), s.started_at))
        for value, total in db.session.execute(
                select(hour, func.sum(s.listened_seconds)).where(*scope).group_by(hour)):
            seconds[int(value)] += int(total or 0)
    else:
        hour = func.strftime("%Y-%m-%d %H", s.started_at)
        quarter = cast(func.strftime("%M", s.started_at), Integer) // 15
        for value, part, total in db.session.execute(
                select(hour, quarter, func.sum(s.listened_seconds)).where(*scope)
                .group_by(hour, quarter)):
            moment = (datetime.strptime(value, "%Y-%m-%d %H").replace(tzinfo=UTC)
                      + timedelta(minutes=15 * int(part)))
            zone = clock.day_settings_at(person, moment).timezone
            seconds[moment.astimezone(ZoneInfo(zone)).hour] += int(total or 0)
    return [_minutes(value) for value in seconds]


def recap_figures(person, period: str, on_date: date) -> dict:
    """The recap of the ``period`` containing ``on_date`` for ``person`` (a user or a caller:
    its id and day settings), uncached, streaks shown whatever the preferences."""
    first, last = period_bounds(period, on_date)
    prev_first, _prev_last = period_bounds(period, first - timedelta(days=1))
    (seconds, sessions, completed, active_days, avg_before, avg_after, avg_change,
     prev_seconds, prev_sessions, prev_active_days) = _totals(person.id, first, last, prev_first)
    packages = _package_rows(person.id, first, last)
    top_packages = sorted(packages, key=lambda r: (-(r[4] or 0), -r[3], r[0]))[:TOP_PACKAGES]
    categories: dict[str, list] = {}
    for _pid, _title, category, count, secs, _moods, _avg in packages:
        entry = categories.setdefault(category, [0, 0])
        entry[0] += count
        entry[1] += secs or 0
    top_categories = sorted(categories.items(), key=lambda c: (-c[1][0], -c[1][1], c[0]))
    with_mood = [r for r in packages if r[5]]
    best = min(with_mood, key=lambda r: (-float(r[6]), -r[5], r[0]), default=None)
    streaks = streaks_from_islands(streak_islands(person.id, last), last)
    return {
        "period": period,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "minutes": _minutes(seconds),
        "sessions": int(sessions),
        "completed_sessions": int(completed),
        "active_days": int(active_days),
        "longest_streak": streaks.longest_within(first, last),
        "top_packages": [{"package_id": pid, "title": title, "minutes": _minutes(secs)}
                         for pid, title, _c, _n, secs, _m, _a in top_packages],
        "top_categories": [{"category": name, "sessions": count, "minutes": _minutes(secs)}
                           for name, (count, secs) in top_categories[:TOP_CATEGORIES]],
        "mood": {"avg_before": _mood(avg_before), "avg_after": _mood(avg_after),
                 "avg_change": _mood(avg_change),
                 "best_package_id": None if best is None else best[0]},
        "listening_hours": _listening_hours(person, first, last),
        "previous": {"minutes": _minutes(prev_seconds), "sessions": int(prev_sessions),
                     "active_days": int(prev_active_days)},
    }


def _present(figures: dict, preferences) -> dict:
    """The figures as the user sees them: no streak when they asked not to see streaks."""
    if merge_preferences(dict(preferences or {})).get("show_streaks") is False:
        return {**figures, "longest_streak": None}
    return figures


def _cached_figures(person, period: str, on_date: date, today: date) -> dict:
    first, last = period_bounds(period, on_date)
    generation = _generation(person.id)
    key = _recap_key(person.id, generation, period, first)
    figures = cache_get(key)
    if figures is None:
        figures = recap_figures(person, period, on_date)
        cache_set(key, figures, PAST_TTL_SECONDS if last < today else CURRENT_TTL_SECONDS)
    return figures


def get_recap(person, period: str, on_date: date | None = None) -> dict:
    """The recap the user asked for (``on_date`` None: the period containing their today),
    from the cache, else computed now and cached."""
    today = clock.user_day(person, clock.now()).day
    return _present(_cached_figures(person, period, on_date or today, today),
                    person.preferences)


def compute_recap(user_id: int, period: str, on_date: date | None = None, *,
                  use_cache: bool = True) -> dict | None:
    """The recap of ``period`` (``week``, ``month`` or ``year``) containing ``on_date`` (None:
    the user's today) for the user ``user_id``, as ``GET /api/user/recap`` answers it
    (``show_streaks`` honoured); None when there is no such user. Served from the recap cache
    and stored there unless ``use_cache`` is False."""
    user = db.session.get(User, user_id)
    if user is None:
        return None
    today = clock.user_day(user, clock.now()).day
    on_date = on_date or today
    figures = (_cached_figures(user, period, on_date, today) if use_cache
               else recap_figures(user, period, on_date))
    return _present(figures, user.preferences)


# ---- the January job -------------------------------------------------------------------------

def _listeners_of_year(year: int) -> list[int]:
    """Users with a session started in ``year`` (a day of margin either side for time zones;
    the recap itself uses the user's days)."""
    s = ListeningSession
    start = datetime(year, 1, 1, tzinfo=UTC) - timedelta(days=1)
    end = datetime(year + 1, 1, 1, tzinfo=UTC) + timedelta(days=1)
    return list(db.session.execute(
        select(s.user_id).where(s.started_at >= start, s.started_at < end,
                                s.user_id.is_not(None))
        .distinct().order_by(s.user_id)).scalars())


def precompute_year_recaps(now: datetime | None = None) -> int:
    """Periodic (hourly): on January 1..7 of each user's own days, compute and cache last
    year's recap of every user who listened that year. Idempotent: a recap already cached is
    left alone. Returns how many were computed."""
    now = now or clock.now()
    utc_today = now.astimezone(UTC).date()
    if not (utc_today.month == 1 and utc_today.day <= PRECOMPUTE_UNTIL_DAY + 1) \
            and not (utc_today.month == 12 and utc_today.day == 31):
        return 0
    year = utc_today.year - 1 if utc_today.month == 1 else utc_today.year
    computed = 0
    for user_id in _listeners_of_year(year):
        user = db.session.get(User, user_id)
        if user is None:
            continue
        today = clock.user_day(user, now).day
        if today.year != year + 1 or today.month != 1 or today.day > PRECOMPUTE_UNTIL_DAY:
            continue
        first, _last = period_bounds("year", date(year, 1, 1))
        if cache_get(_recap_key(user_id, _generation(user_id), "year", first)) is None:
            _cached_figures(user, "year", first, today)
            computed += 1
        db.session.rollback()  # end the read's transaction before the next user
    if computed:
        log.info("year recaps for %d: %d computed", year, computed)
    return computed
