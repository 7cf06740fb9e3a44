"""Recaps: a week, a month or a year of the user's listening (API.md "Recaps").

Periods are made of the user's days (each session belongs to the user day it started on):
a week runs Monday to Sunday, a month and a year are the calendar's. Every figure is an
SQL aggregate over the user's own rows (two statements: the period and the previous one
grouped by package and hour, and the day islands); the sessions never leave the database.

Cached (``sonicus.cache``) under the user's recap generation, when there was listening in the
period or the previous one (zeros are computed again, not kept): a period that is over is kept
long (``PAST_TTL_SECONDS``), the current one briefly (``CURRENT_TTL_SECONDS``). A change to the
user's sessions forgets the periods it can touch (``forget_recent_recaps``: sessions land
on days of the last two weeks at most, offline sync included); a change of profile or an
erasure forgets them all (``forget_user_recaps``, a new generation). Year recaps are computed
ahead by ``precompute_year_recaps`` (a periodic job, January 1 to 7) and on demand.

``preferences.show_streaks`` false: ``longest_streak`` is null (applied when served, never
cached). A cached recap keeps what the catalog called its packages (``labels``) and is computed
again once an admin renames one or moves it to another category (``package_labels``): titles
and categories show as they are now in every recap cached before.
"""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, Integer, case, cast, func, literal, select

from .. import clock
from ..api_errors import ApiError
from ..cache import (
    cache_delete,
    cache_delete_generation,
    cache_get,
    cache_get_raw,
    cache_replace,
    cache_set,
)
from ..extensions import db
from ..models import ListeningSession, SoundPackage, User
from ..models.user import merge_preferences
from .package_labels import labels_unchanged
from .streaks import active_days, day_islands, streaks_from_islands

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
PROBE_STEP = timedelta(days=1)  # UTC offsets are probed this often (_offset_segments)
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


def _changes_key(user_id: int) -> str:
    """Counts the changes to the user's sessions (``forget_recent_recaps``)."""
    return f"recap-changes:{user_id}"


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
    """Forget every cached recap of the user (profile changed, account erased); owed while
    this process skips Redis."""
    cache_delete(_generation_key(user_id), critical=True)


def forget_recent_recaps(user_id: int, now: datetime | None = None) -> None:
    """Forget the cached recaps of periods that a change to the user's sessions can touch:
    those overlapping the last ``RECENT_DAYS`` days (whatever the user's time zone); owed
    while this process skips Redis, like ``forget_user_recaps``."""
    today = (now or clock.now()).astimezone(UTC).date() + timedelta(days=1)
    cache_delete_generation(_generation_key(user_id), f"recap:{user_id}:",
                            _recent_period_suffixes(today), changes_key=_changes_key(user_id))


@lru_cache(maxsize=4)
def _recent_period_suffixes(today: date) -> tuple[str, ...]:
    """The cache key suffixes of the periods overlapping the ``RECENT_DAYS`` days up to
    ``today``: the same all day long, so worked out once a day, not on every session start
    (54 period bounds: about 15% of a start's instructions)."""
    suffixes = []
    for period in PERIODS:
        seen = set()
        for back in range(RECENT_DAYS + 2):
            first, _last = period_bounds(period, today - timedelta(days=back))
            if first not in seen:
                seen.add(first)
                suffixes.append(f":{period}:{first.isoformat()}")
    return tuple(suffixes)


# ---- the figures -----------------------------------------------------------------------------

def _minutes(seconds) -> float:
    return round(float(seconds or 0) / 60.0, 1)


def _mood(value) -> float | None:
    return None if value is None else round(float(value), 2)


def _utc_offset(person, moment: datetime) -> int:
    """Seconds east of UTC of the user's time zone in force at ``moment``."""
    zone = ZoneInfo(clock.day_settings_at(person, moment).timezone)
    return int(moment.astimezone(zone).utcoffset().total_seconds())


def _offset_segments(person, start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """The user's UTC offset from ``start`` to ``end``: ``[(from, seconds)]``, a new entry at
    each change (a DST change, the day settings changing zone). Probed once a day, each change
    found to the second by bisection, and probing goes on from there (so two changes within a
    day are both found, unless the second exactly undoes the first)."""
    segments = [(start, _utc_offset(person, start))]
    probe = start
    while probe < end:
        following = min(probe + PROBE_STEP, end)
        if _utc_offset(person, following) == segments[-1][1]:
            probe = following
            continue
        low, high = probe, following  # the offset changes in (low, high]
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if _utc_offset(person, middle) == segments[-1][1]:
                low = middle
            else:
                high = middle
        high = high.replace(microsecond=0)
        segments.append((high, _utc_offset(person, high)))
        probe = high
    return segments


def _local_hour(person, first: date, last: date):
    """SQL for the local hour (0..23) at which a session started, in the time zone in force
    then (``clock.day_settings_at``), the same on PostgreSQL and SQLite: the UTC offsets of
    the period are worked out here (a handful of segments), so the database only adds the
    segment's offset to the start's epoch seconds. No time zone lookups per row."""
    s = ListeningSession
    start = datetime.combine(first, time(), UTC) - timedelta(days=2)
    end = datetime.combine(last, time(), UTC) + timedelta(days=3)
    segments = _offset_segments(person, start, end)
    if len(segments) == 1:
        offset = literal(segments[0][1], Integer)
    else:
        offset = case(*((s.started_at < until, seconds)
                        for (until, _), (_, seconds) in zip(segments[1:], segments, strict=False)),
                      else_=segments[-1][1])
    if db.session.get_bind().dialect.name == "postgresql":
        epoch = cast(func.floor(func.date_part("epoch", s.started_at)), BigInteger)
    else:
        epoch = cast(func.strftime("%s", s.started_at), BigInteger)
    return (epoch + offset) // 3600 % 24


def _grouped_rows(person, first: date, last: date, prev_first: date):
    """One scan of the period and the previous one, grouped by (in the period, package,
    local hour it started at), with additive figures only, joined to the packages' titles:
    ``(in_period, package_id, title, category, hour, sessions, seconds, completed, sessions
    with moods, their moods before, their moods after)``. (Only the totals of the previous
    period's rows are used.)"""
    s, p = ListeningSession, SoundPackage
    in_period = s.local_day >= first
    counted = s.counts_in_outcomes
    has_mood = s.mood_before.is_not(None) & s.mood_after.is_not(None) & counted
    hour = _local_hour(person, first, last)
    grouped = (
        select(in_period.label("in_period"), s.package_id.label("package_id"),
               hour.label("hour"),
               func.count(s.id).label("sessions"),
               func.coalesce(func.sum(s.listened_seconds), 0).label("seconds"),
               func.sum(case((counted & s.completed.is_(True), 1), else_=0)).label("completed"),
               func.sum(case((has_mood, 1), else_=0)).label("moods"),
               func.sum(case((has_mood, s.mood_before), else_=0)).label("before"),
               func.sum(case((has_mood, s.mood_after), else_=0)).label("after"))
        .where(s.user_id == person.id, s.local_day >= prev_first, s.local_day <= last,
               ~s.abandoned)  # started and left unheard: no session (as total_sessions)
        .group_by(in_period, s.package_id, hour).subquery())
    g = grouped.c
    return db.session.execute(
        select(g.in_period, g.package_id, p.title, p.category, g.hour, g.sessions,
               g.seconds, g.completed, g.moods, g.before, g.after)
        .join(p, p.id == g.package_id)).all()


def recap_figures(person, period: str, on_date: date) -> dict:
    """The recap of the ``period`` containing ``on_date`` for ``person`` (a user or a caller:
    its id and day settings), uncached, streaks shown whatever the preferences.

    Two SQL statements: the grouped scan of the period and the previous one
    (``_grouped_rows``: a few rows per package and hour) and the user's day islands
    (``streaks.day_islands``: active days and streaks); what is left is adding up those rows.
    """
    first, last = period_bounds(period, on_date)
    prev_first, _prev_last = period_bounds(period, first - timedelta(days=1))
    totals = dict.fromkeys(("sessions", "seconds", "completed", "moods", "before", "after"), 0)
    previous = {"sessions": 0, "seconds": 0}
    packages: dict[int, dict] = {}
    seconds_by_hour = [0] * 24
    for (in_period, package_id, title, category, hour, sessions, seconds, completed,
         moods, before, after) in _grouped_rows(person, first, last, prev_first):
        if not in_period:
            previous["sessions"] += sessions
            previous["seconds"] += int(seconds)
            continue
        figures = (sessions, int(seconds), int(completed), int(moods), int(before), int(after))
        package = packages.setdefault(package_id, {
            "title": title, "category": category, **dict.fromkeys(totals, 0)})
        for name, value in zip(totals, figures, strict=True):
            totals[name] += value
            package[name] += value
        seconds_by_hour[int(hour)] += int(seconds)
    islands = day_islands(person.id, last)
    streaks = streaks_from_islands(islands, last, clock.dates_never_begun(person))

    def change(figures) -> float:
        return (figures["after"] - figures["before"]) / figures["moods"]

    top_packages = sorted(packages.items(),
                          key=lambda item: (-item[1]["seconds"], -item[1]["sessions"], item[0]))
    categories: dict[str, list] = {}
    for package in packages.values():
        entry = categories.setdefault(package["category"], [0, 0])
        entry[0] += package["sessions"]
        entry[1] += package["seconds"]
    top_categories = sorted(categories.items(), key=lambda c: (-c[1][0], -c[1][1], c[0]))
    best = min(((pid, p) for pid, p in packages.items() if p["moods"]),
               key=lambda item: (-round(change(item[1]), 2), -item[1]["moods"], item[0]),
               default=None)
    moods = totals["moods"]
    return {
        "period": period,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "minutes": _minutes(totals["seconds"]),
        "sessions": totals["sessions"],
        "completed_sessions": totals["completed"],
        "active_days": active_days(islands, first, last),
        "longest_streak": streaks.longest_within(first, last),
        "top_packages": [{"package_id": pid, "title": p["title"],
                          "minutes": _minutes(p["seconds"])}
                         for pid, p in top_packages[:TOP_PACKAGES]],
        "top_categories": [{"category": name, "sessions": count, "minutes": _minutes(secs)}
                           for name, (count, secs) in top_categories[:TOP_CATEGORIES]],
        "mood": {"avg_before": _mood(totals["before"] / moods) if moods else None,
                 "avg_after": _mood(totals["after"] / moods) if moods else None,
                 "avg_change": _mood(change(totals)) if moods else None,
                 "best_package_id": None if best is None else best[0]},
        "listening_hours": [_minutes(value) for value in seconds_by_hour],
        # what the catalog called the period's packages (stripped when served, _present)
        "labels": {str(pid): [p["title"], p["category"]] for pid, p in packages.items()},
        "previous": {"minutes": _minutes(previous["seconds"]),
                     "sessions": previous["sessions"],
                     "active_days": active_days(islands, prev_first,
                                                first - timedelta(days=1))},
    }


def _present(figures: dict, preferences) -> dict:
    """The figures as the user sees them: without the labels kept to check them, and no
    streak when they asked not to see streaks."""
    figures = {name: value for name, value in figures.items() if name != "labels"}
    if merge_preferences(dict(preferences or {})).get("show_streaks") is False:
        return {**figures, "longest_streak": None}
    return figures


def _cached_figures(person, period: str, on_date: date, today: date) -> dict:
    first, last = period_bounds(period, on_date)
    changes = cache_get_raw(_changes_key(person.id))  # before computing: see the write below
    generation = _generation(person.id)
    key = _recap_key(person.id, generation, period, first)
    figures = cache_get(key)
    # computed again when an admin renamed one of the period's packages or moved it to another
    # category since (one lookup by id): titles and categories as they are now, cached for a year
    if figures is None or not labels_unchanged(figures.get("labels")):
        figures = recap_figures(person, period, on_date)
        # not cached when the user's sessions changed meanwhile (their forget may have run
        # before this write: the figures would miss the change for a year), nor without any
        # listening in the period or the one before: any period of 1970..9998 is zeros, and
        # one user asking for each of them would fill the cache
        if figures["sessions"] or figures["previous"]["sessions"]:
            cache_replace(key, figures, PAST_TTL_SECONDS if last < today
                          else CURRENT_TTL_SECONDS, changes, watched=_changes_key(person.id))
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
