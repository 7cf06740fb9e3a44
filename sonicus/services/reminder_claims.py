"""Who is due a reminder (API.md, Reminders): the timing rule, the "smart" reminder times, and
the scan that finds the users due one now and claims their user day. The periodic job that
calls them and sends the reminders is ``services.reminders``; the preferences read here are
set through ``services.reminder_settings``.

The rules of a reminder on the user's day D (their time zone and ``day_start_hour`` in force,
``clock.day_settings_at``):

- due from the reminder time (``HH:MM``, or "smart": the local hour at which the user most
  often starts sessions they complete, 21:00 without data) for ``CATCH_UP_MINUTES``; times
  are wall-clock times of the user's time zone (PostgreSQL ``AT TIME ZONE``: DST included;
  a time skipped by a spring-forward is sent at the first minute after it, for the day it
  belongs to, even when that day ended inside the jump: ``skipped_reminder_day``; a time a
  fall-back repeats is sent at its first occurrence, the claim below keeps it from a second);
- only on the days chosen (D's weekday), never inside quiet hours (``quiet_start`` to
  ``quiet_end``, wrapping midnight when the end is earlier), only to a user with a push
  subscription, and not when the user already listened on D (a session that counts towards
  the quota: a refunded tap does not), which also covers a goal met;
- at most one per user day: a ``reminder_deliveries`` row (unique (user, day)) is inserted
  before anything is sent, by the very statement that finds who is due
  (``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``): two workers scanning at once
  claim disjoint sets.
- a claimed reminder never sent (``sent_at`` still null: its sending job was lost, as when
  the enqueue failed after the claim, Redis restarted empty, or a worker died before taking
  it) is found again by the same statement while its user is still due by the rule above
  (inside the catch-up hour, outside quiet hours, not listened since...) and the claim is
  older than ``UNSENT_GRACE_SECONDS`` (a job just queued is not doubled): the job queues it
  again. Its sending takes it (``sent_at``) first, so a late original and the job queued
  again send it once.

The rule is written twice, in SQL for PostgreSQL (``CLAIM_DUE_SQL``) and in Python for SQLite
(``reminder_due``, development); the two must say the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import exists, select, text
from sqlalchemy.dialects import sqlite

from .. import clock
from ..extensions import db
from ..models import ListeningSession, User
from ..models.listening import OUTCOME_MIN_LISTENED_SECONDS
from ..models.reminders import PushSubscription, ReminderDelivery, ReminderPreferences
from .reminder_clocks import (
    CATCH_UP_MINUTES,
    skipped_reminder_day,
    zone_clock,
    zone_clocks,
)
from .reminder_settings import DEFAULT_SMART_MINUTE
from .transaction import unit_of_work

UNSENT_GRACE_SECONDS = 120  # a claim still unsent this long after is queued again
UNSENT_BATCH = 5000  # claims queued again per scan at most (the oldest first)
# Every session read is placed in the zone in force when it started (the zones replaced are
# remembered, ``clock.DAY_SETTINGS_KEPT``).
SMART_LOOKBACK_DAYS = 90
SMART_REFRESH_SECONDS = 24 * 3600
SMART_BATCH = 5000


def _is_postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


# ---- who is due: the rule in Python (SQLite, development) and in SQL (PostgreSQL) -----------

def reminder_due(wall_minute: int, day_start_hour: int, at_minute: int, days_mask: int,
                 weekday: int, quiet_start: int | None, quiet_end: int | None,
                 skipped_minutes: int = 0, skipped_time: bool = False) -> bool:
    """THE timing rule. ``wall_minute``: the user's local time (minutes after midnight);
    ``weekday``: ISO weekday (1 = Monday) of the user's day; ``skipped_minutes``: how far the
    zone's clock jumped forward within the last ``CATCH_UP_MINUTES`` (``ZoneClock``);
    ``skipped_time``: the reminder time is one that jump skipped (``skipped_reminder_day``):
    due until the catch-up hour after the jump is over, for the day it belongs to."""
    shift = day_start_hour * 60
    since_day_start = (wall_minute - shift) % 1440
    reminder_offset = (at_minute - shift) % 1440
    if not skipped_time and not (
            0 <= since_day_start - reminder_offset < CATCH_UP_MINUTES + skipped_minutes):
        return False
    if not days_mask & (1 << (weekday - 1)):
        return False
    return not in_quiet_hours(wall_minute, quiet_start, quiet_end)


def listened_on(user_id, day):
    """Whether the user listened on their ``day`` (a session that counts towards the quota: a
    refunded tap does not), as an SQL ``EXISTS`` over columns or values."""
    s = ListeningSession
    return exists().where(s.user_id == user_id, s.local_day == day,
                          s.counts_toward_quota.is_(True))


def in_quiet_hours(wall_minute: int, quiet_start: int | None, quiet_end: int | None) -> bool:
    if quiet_start is None or quiet_end is None or quiet_start == quiet_end:
        return False
    if quiet_start < quiet_end:
        return quiet_start <= wall_minute < quiet_end
    return wall_minute >= quiet_start or wall_minute < quiet_end


# One statement finds the due users and claims their day (API.md, Reminders); it mirrors
# ``reminder_due``. The local clock is computed once per time zone (``zones``, given by
# ``zone_clocks``: the same tz database as every other user-day computation of the app,
# ``clock.local_day``), not once per user; per user only integer arithmetic remains
# (``timed``: whose time has come, a few dozen per minute). Only for those are the
# subscription, the day's delivery and the day's sessions looked up, each by its index.
# The same statement returns the users still due (``wanted``) whose day was claimed earlier
# but never sent (``unsent``): a lost sending job is queued again only while the rule says
# the user is due (inside the catch-up hour of their reminder time, outside quiet hours),
# found by the unique (user, day) index, and bounded by ``:unsent_limit``.
CLAIM_DUE_SQL = """
WITH zones AS MATERIALIZED (
    SELECT * FROM unnest(CAST(:zone_names AS text[]), CAST(:zone_dates AS date[]),
                         CAST(:zone_minutes AS int[]), CAST(:zone_skips AS int[]),
                         CAST(:zone_jump_dates AS date[]), CAST(:zone_jump_minutes AS int[]))
                  AS z (tz, local_date, wall_minute, skipped, jump_date, jump_minute)
), placed AS (
    SELECT p.user_id, p.days_mask, p.weekly_recap, p.quiet_start_minute AS qs,
           p.quiet_end_minute AS qe,
           COALESCE(p.remind_minute, p.smart_minute, :default_minute) AS at_minute,
           CASE WHEN f.prior THEN zp.wall_minute ELSE z.wall_minute END AS wall_minute,
           CASE WHEN f.prior THEN zp.skipped ELSE z.skipped END AS skipped,
           CASE WHEN f.prior THEN zp.local_date ELSE z.local_date END AS local_date,
           CASE WHEN f.prior THEN zp.jump_date ELSE z.jump_date END AS jump_date,
           CASE WHEN f.prior THEN zp.jump_minute ELSE z.jump_minute END AS jump_minute,
           CASE WHEN f.prior THEN u.prior_day_start_hour ELSE u.day_start_hour END AS dsh
    FROM sonicus.reminder_preferences p
    JOIN sonicus.users u ON u.id = p.user_id
    JOIN zones z ON z.tz = u.timezone
    LEFT JOIN zones zp ON zp.tz = u.prior_timezone
    CROSS JOIN LATERAL (
        -- the settings in force (clock.day_settings_at): the prior ones until the change
        SELECT u.day_settings_effective_at > :now AND zp.tz IS NOT NULL
               AND u.prior_day_start_hour IS NOT NULL AS prior) AS f
    WHERE p.enabled IS TRUE AND u.is_active IS TRUE
), timed AS MATERIALIZED (
    SELECT user_id, user_day, weekly_recap
    FROM (SELECT q.*, q.local_date - CASE WHEN q.wall_minute < q.dsh * 60 THEN 1 ELSE 0 END
                        AS today,
                 (((q.wall_minute - q.dsh * 60) % 1440 + 1440) % 1440)
                   - (((q.at_minute - q.dsh * 60) % 1440 + 1440) % 1440) AS minutes_late,
                 ((q.at_minute - q.jump_minute) % 1440 + 1440) % 1440 AS into_jump
          FROM placed q) AS p
    CROSS JOIN LATERAL (  -- skipped_reminder_day: a time the jump skipped, for its own day
        SELECT CASE WHEN p.into_jump < p.skipped
                    THEN p.jump_date + (p.jump_minute + p.into_jump) / 1440
                         - CASE WHEN (p.jump_minute + p.into_jump) % 1440 < p.dsh * 60
                                THEN 1 ELSE 0 END END AS skipped_day) AS j
    CROSS JOIN LATERAL (SELECT COALESCE(j.skipped_day, p.today) AS user_day) AS d
    WHERE (j.skipped_day IS NOT NULL OR p.minutes_late BETWEEN 0 AND :catch_up - 1 + p.skipped)
      AND (p.days_mask & (1 << (extract(isodow FROM d.user_day)::int - 1))) <> 0
      AND NOT (p.qs IS NOT NULL AND p.qe IS NOT NULL AND p.qs <> p.qe AND (
            (p.qs < p.qe AND p.wall_minute >= p.qs AND p.wall_minute < p.qe)
         OR (p.qs > p.qe AND (p.wall_minute >= p.qs OR p.wall_minute < p.qe))))
), wanted AS (
    SELECT t.* FROM timed t
    WHERE EXISTS (SELECT 1 FROM sonicus.push_subscriptions ps WHERE ps.user_id = t.user_id)
      AND NOT EXISTS (SELECT 1 FROM sonicus.user_sessions us
                      WHERE us.user_id = t.user_id AND us.local_day = t.user_day
                        AND us.counts_toward_quota IS TRUE)
), claimed AS (
    INSERT INTO sonicus.reminder_deliveries (user_id, local_day, recap, created_at, pushes_sent)
    SELECT w.user_id, w.user_day, w.weekly_recap AND extract(isodow FROM w.user_day) = 1, :now, 0
    FROM wanted w
    WHERE NOT EXISTS (SELECT 1 FROM sonicus.reminder_deliveries d
                      WHERE d.user_id = w.user_id AND d.local_day = w.user_day)
    ON CONFLICT (user_id, local_day) DO NOTHING
    RETURNING id
), unsent AS (
    SELECT d.id FROM wanted w
    JOIN sonicus.reminder_deliveries d ON d.user_id = w.user_id AND d.local_day = w.user_day
    WHERE d.sent_at IS NULL AND d.created_at <= :unsent_before
    ORDER BY d.created_at, d.id
    LIMIT :unsent_limit
)
SELECT id, FALSE AS unsent FROM claimed
UNION ALL
SELECT id, TRUE FROM unsent
"""

# "smart": the local hour (the user's time zone in force when each session started,
# ``clock.day_settings_at``, as in the recaps' listening hours) at which the user most often
# started sessions they completed in the last SMART_LOOKBACK_DAYS days (ties: the later
# hour); none: null (21:00 applies). Refreshed daily per user, a bounded batch per run,
# stalest first. ``spans``: the time zones a stale user had over time, every remembered
# change included (``earlier_day_settings``, ``clock._settings_changes``): each earlier zone
# from the end of those before it until its own end, then the prior zone until the change
# takes effect, then the current one; each session is read in the one span it started in.
REFRESH_SMART_SQL = f"""
WITH stale AS (
    SELECT p.user_id, u.timezone, u.earlier_day_settings,
           CASE WHEN u.prior_timezone IS NOT NULL AND u.prior_day_start_hour IS NOT NULL
                THEN u.day_settings_effective_at END AS prior_until,
           u.prior_timezone
    FROM sonicus.reminder_preferences p JOIN sonicus.users u ON u.id = p.user_id
    WHERE p.enabled IS TRUE AND p.remind_minute IS NULL
      AND (p.smart_computed_at IS NULL OR p.smart_computed_at < :stale_before)
    ORDER BY p.smart_computed_at NULLS FIRST
    LIMIT :batch
    FOR UPDATE OF p SKIP LOCKED
), earlier AS (
    SELECT s.user_id, e.item ->> 'timezone' AS tz,
           CAST(e.item ->> 'until' AS timestamptz) AS until,
           max(CAST(e.item ->> 'until' AS timestamptz)) OVER (
               PARTITION BY s.user_id ORDER BY e.n
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS since
    FROM stale s
    CROSS JOIN LATERAL json_array_elements(
        CASE WHEN json_typeof(CAST(s.earlier_day_settings AS json)) = 'array'
             THEN CAST(s.earlier_day_settings AS json) ELSE CAST('[]' AS json) END)
        WITH ORDINALITY AS e (item, n)
), earlier_end AS (
    SELECT user_id, max(until) AS until FROM earlier GROUP BY user_id
), spans AS (
    SELECT user_id, tz, since, until FROM earlier
    UNION ALL
    SELECT s.user_id, s.prior_timezone, ee.until, s.prior_until
    FROM stale s LEFT JOIN earlier_end ee ON ee.user_id = s.user_id
    WHERE s.prior_until IS NOT NULL
    UNION ALL
    SELECT s.user_id, s.timezone, greatest(ee.until, s.prior_until), NULL
    FROM stale s LEFT JOIN earlier_end ee ON ee.user_id = s.user_id
), hours AS (
    SELECT us.user_id, extract(hour FROM us.started_at AT TIME ZONE sp.tz)::int AS hour,
           count(*) AS n
    FROM stale s
    JOIN sonicus.user_sessions us ON us.user_id = s.user_id
    JOIN spans sp ON sp.user_id = us.user_id
                 AND (sp.since IS NULL OR us.started_at >= sp.since)
                 AND (sp.until IS NULL OR us.started_at < sp.until)
    WHERE us.started_at >= :since AND us.completed IS TRUE
      AND us.counts_toward_quota IS TRUE AND us.listened_seconds >= {OUTCOME_MIN_LISTENED_SECONDS}
    GROUP BY 1, 2
), best AS (
    SELECT DISTINCT ON (user_id) user_id, hour FROM hours ORDER BY user_id, n DESC, hour DESC
)
UPDATE sonicus.reminder_preferences p
SET smart_minute = best.hour * 60, smart_computed_at = :now
FROM stale LEFT JOIN best ON best.user_id = stale.user_id
WHERE p.user_id = stale.user_id
"""


def refresh_smart_times(now: datetime | None = None, batch: int = SMART_BATCH) -> int:
    """Compute the "smart" time of users whose figure is missing or a day old."""
    now = now or clock.now()
    since = now - timedelta(days=SMART_LOOKBACK_DAYS)
    stale_before = now - timedelta(seconds=SMART_REFRESH_SECONDS)
    with unit_of_work():
        if _is_postgresql():
            return db.session.execute(text(REFRESH_SMART_SQL), {
                "now": now, "since": since, "stale_before": stale_before,
                "batch": batch}).rowcount
        return _refresh_smart_times_python(now, since, stale_before, batch)


def _refresh_smart_times_python(now, since, stale_before, batch) -> int:
    p = ReminderPreferences
    rows = db.session.execute(
        select(p, User).join(User, User.id == p.user_id)
        .where(p.enabled.is_(True), p.remind_minute.is_(None),
               (p.smart_computed_at.is_(None)) | (p.smart_computed_at < stale_before))
        .limit(batch)).all()
    s = ListeningSession
    for prefs, user in rows:
        starts = db.session.execute(select(s.started_at).where(
            s.user_id == prefs.user_id, s.started_at >= since, s.completed.is_(True),
            s.counts_in_outcomes)).scalars()
        hours = Counter(
            moment.astimezone(ZoneInfo(clock.day_settings_at(user, moment).timezone)).hour
            for moment in starts)
        best = max(hours.items(), key=lambda item: (item[1], item[0]), default=None)
        prefs.smart_minute = None if best is None else best[0] * 60
        prefs.smart_computed_at = now
    return len(rows)


@dataclass(frozen=True)
class DueReminders:
    """What one scan found: the user days it claimed, and those claimed earlier that were
    never sent and are still due (their sending job was lost: queue them again)."""

    claimed: list[int] = field(default_factory=list)
    unsent: list[int] = field(default_factory=list)


def claim_due_reminders(now: datetime | None = None) -> list[int]:
    """Find the users due a reminder now and claim their user day; the new deliveries' ids
    (a user day already claimed, by this run or another worker's, is not returned)."""
    return scan_due_reminders(now).claimed


def scan_due_reminders(now: datetime | None = None) -> DueReminders:
    """Claim the user days due now (``claim_due_reminders``) and, in the same statement,
    find the reminders claimed more than ``UNSENT_GRACE_SECONDS`` ago whose sending never
    began (``sent_at`` null) and whose user is still due by the same rule: inside the
    catch-up hour of their reminder time, a subscription, not listened since (at most
    ``UNSENT_BATCH``, the oldest first)."""
    now = now or clock.now()
    unsent_before = now - timedelta(seconds=UNSENT_GRACE_SECONDS)
    with unit_of_work():
        if _is_postgresql():
            # a small result from a big estimate: compiling it (JIT) costs seconds
            db.session.execute(text("SET LOCAL jit = off"))
            rows = db.session.execute(text(CLAIM_DUE_SQL), {
                "now": now, "default_minute": DEFAULT_SMART_MINUTE,
                "catch_up": CATCH_UP_MINUTES, "unsent_before": unsent_before,
                "unsent_limit": UNSENT_BATCH, **zone_clocks(now)}).all()
            return DueReminders(claimed=[row.id for row in rows if not row.unsent],
                                unsent=[row.id for row in rows if row.unsent])
        return _claim_due_python(now, unsent_before)


def _claim_due_python(now: datetime, unsent_before: datetime) -> DueReminders:
    """The same rule for SQLite (development): few users, read into Python."""
    p = ReminderPreferences
    rows = db.session.execute(
        select(p, User).join(User, User.id == p.user_id)
        .where(p.enabled.is_(True), User.is_active.is_(True),
               exists().where(PushSubscription.user_id == p.user_id))).all()
    claimed, unsent = [], []
    for prefs, user in rows:
        settings = clock.day_settings_at(user, now)
        zone = ZoneInfo(settings.timezone)
        local = zone_clock(zone, now)
        at_minute = next(m for m in (prefs.remind_minute, prefs.smart_minute,
                                     DEFAULT_SMART_MINUTE) if m is not None)
        day = skipped_reminder_day(local, settings.day_start_hour, at_minute)
        skipped_time = day is not None
        if day is None:
            day = clock.local_day(now, settings.timezone, settings.day_start_hour)
        if not reminder_due(local.wall_minute, settings.day_start_hour, at_minute,
                            prefs.days_mask, day.isoweekday(), prefs.quiet_start_minute,
                            prefs.quiet_end_minute, local.skipped, skipped_time):
            continue
        if db.session.execute(select(listened_on(user.id, day))).scalar():
            continue
        d = ReminderDelivery
        earlier = db.session.execute(select(d).where(d.user_id == user.id,
                                                     d.local_day == day)).scalar()
        if earlier is not None:
            if earlier.sent_at is None and earlier.created_at <= unsent_before:
                unsent.append((earlier.created_at, earlier.id))
            continue
        new_id = db.session.execute(
            sqlite.insert(d).values(
                user_id=user.id, local_day=day, created_at=now, pushes_sent=0,
                recap=prefs.weekly_recap and day.isoweekday() == 1)
            .on_conflict_do_nothing().returning(d.id)).scalar()
        if new_id is not None:
            claimed.append(new_id)
    return DueReminders(claimed=claimed,
                        unsent=[delivery_id for _, delivery_id in sorted(unsent)[:UNSENT_BATCH]])
