"""Reminders: the periodic job that sends at most one reminder per user day (API.md,
Reminders), from the caller's preferences and push subscriptions (``services.reminder_settings``).

The rules of a reminder on the user's day D (their time zone and ``day_start_hour`` in force,
``clock.day_settings_at``):

- due from the reminder time (``HH:MM``, or "smart": the local hour at which the user most
  often starts sessions they complete, 21:00 without data) for ``CATCH_UP_MINUTES``; times
  are wall-clock times of the user's time zone (PostgreSQL ``AT TIME ZONE``: DST included;
  a time skipped by a spring-forward is sent at the first minute after it);
- only on the days chosen (D's weekday), never inside quiet hours (``quiet_start`` to
  ``quiet_end``, wrapping midnight when the end is earlier), only to a user with a push
  subscription, and not when the user already listened on D (a session that counts towards
  the quota: a refunded tap does not), which also covers a goal met;
- at most one per user day: a ``reminder_deliveries`` row (unique (user, day)) is inserted
  before anything is sent, by the very statement that finds who is due
  (``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``): two workers scanning at once
  claim disjoint sets.

Sending: one job per batch of claimed reminders; a push service's 404/410 deletes that
subscription; 429, 5xx and network failures are retried for that subscription only, after
``WEBPUSH_RETRY_SECONDS`` (Retry-After, when longer, wins), then given up. With
``weekly_recap``, the reminder of a Monday carries the recap of the week before.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import date, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, available_timezones

from flask import current_app
from sqlalchemy import bindparam, delete, exists, select, text, update
from sqlalchemy.dialects import sqlite

from .. import clock
from ..extensions import db
from ..models import ListeningSession, User
from ..models.reminders import PushSubscription, ReminderDelivery, ReminderPreferences
from ..tasks.queue import QUEUE_DEFAULT, enqueue, get_queue
from . import webpush
from .recaps import compute_recap
from .reminder_settings import DEFAULT_SMART_MINUTE
from .streaks import Island, streaks_from_islands
from .transaction import unit_of_work

log = logging.getLogger(__name__)

CATCH_UP_MINUTES = 60  # a reminder missed (worker down, quiet hours) is sent this long after
SMART_LOOKBACK_DAYS = 90
SMART_REFRESH_SECONDS = 24 * 3600
SMART_BATCH = 5000
SEND_BATCH = 50  # reminders per sending job
KEEP_DELIVERIES_DAYS = 14


def _is_postgresql() -> bool:
    return db.session.get_bind().dialect.name == "postgresql"


# ---- who is due: the rule in Python (SQLite, development) and in SQL (PostgreSQL) -----------

def reminder_due(wall_minute: int, day_start_hour: int, at_minute: int, days_mask: int,
                 weekday: int, quiet_start: int | None, quiet_end: int | None) -> bool:
    """THE timing rule. ``wall_minute``: the user's local time (minutes after midnight);
    ``weekday``: ISO weekday (1 = Monday) of the user's day."""
    shift = day_start_hour * 60
    since_day_start = (wall_minute - shift) % 1440
    reminder_offset = (at_minute - shift) % 1440
    if not 0 <= since_day_start - reminder_offset < CATCH_UP_MINUTES:
        return False
    if not days_mask & (1 << (weekday - 1)):
        return False
    return not in_quiet_hours(wall_minute, quiet_start, quiet_end)


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
CLAIM_DUE_SQL = """
WITH zones AS MATERIALIZED (
    SELECT * FROM unnest(CAST(:zone_names AS text[]), CAST(:zone_dates AS date[]),
                         CAST(:zone_minutes AS int[])) AS z (tz, local_date, wall_minute)
), placed AS (
    SELECT p.user_id, p.days_mask, p.weekly_recap, p.quiet_start_minute AS qs,
           p.quiet_end_minute AS qe,
           COALESCE(p.remind_minute, p.smart_minute, :default_minute) AS at_minute,
           CASE WHEN f.prior THEN zp.wall_minute ELSE z.wall_minute END AS wall_minute,
           CASE WHEN f.prior THEN zp.local_date ELSE z.local_date END AS local_date,
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
                        AS user_day,
                 (((q.wall_minute - q.dsh * 60) % 1440 + 1440) % 1440)
                   - (((q.at_minute - q.dsh * 60) % 1440 + 1440) % 1440) AS minutes_late
          FROM placed q) AS p
    WHERE p.minutes_late BETWEEN 0 AND :catch_up - 1
      AND (p.days_mask & (1 << (extract(isodow FROM p.user_day)::int - 1))) <> 0
      AND NOT (p.qs IS NOT NULL AND p.qe IS NOT NULL AND p.qs <> p.qe AND (
            (p.qs < p.qe AND p.wall_minute >= p.qs AND p.wall_minute < p.qe)
         OR (p.qs > p.qe AND (p.wall_minute >= p.qs OR p.wall_minute < p.qe))))
)
INSERT INTO sonicus.reminder_deliveries (user_id, local_day, recap, created_at, pushes_sent)
SELECT t.user_id, t.user_day, t.weekly_recap AND extract(isodow FROM t.user_day) = 1, :now, 0
FROM timed t
WHERE EXISTS (SELECT 1 FROM sonicus.push_subscriptions ps WHERE ps.user_id = t.user_id)
  AND NOT EXISTS (SELECT 1 FROM sonicus.reminder_deliveries d
                  WHERE d.user_id = t.user_id AND d.local_day = t.user_day)
  AND NOT EXISTS (SELECT 1 FROM sonicus.user_sessions us
                  WHERE us.user_id = t.user_id AND us.local_day = t.user_day
                    AND us.counts_toward_quota IS TRUE)
ON CONFLICT (user_id, local_day) DO NOTHING
RETURNING id
"""

# "smart": the local hour (user's time zone) at which the user most often started sessions
# they completed in the last SMART_LOOKBACK_DAYS days (ties: the later hour); none: null
# (21:00 applies). Refreshed daily per user, a bounded batch per run, stalest first.
REFRESH_SMART_SQL = f"""
WITH stale AS (
    SELECT p.user_id, u.timezone
    FROM sonicus.reminder_preferences p JOIN sonicus.users u ON u.id = p.user_id
    WHERE p.enabled IS TRUE AND p.remind_minute IS NULL
      AND (p.smart_computed_at IS NULL OR p.smart_computed_at < :stale_before)
    ORDER BY p.smart_computed_at NULLS FIRST
    LIMIT :batch
    FOR UPDATE OF p SKIP LOCKED
), hours AS (
    SELECT s.user_id, extract(hour FROM us.started_at AT TIME ZONE s.timezone)::int AS hour,
           count(*) AS n
    FROM stale s JOIN sonicus.user_sessions us ON us.user_id = s.user_id
    WHERE us.started_at >= :since AND us.completed IS TRUE
      AND us.counts_toward_quota IS TRUE AND us.listened_seconds >= {60}
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
        select(p, User.timezone).join(User, User.id == p.user_id)
        .where(p.enabled.is_(True), p.remind_minute.is_(None),
               (p.smart_computed_at.is_(None)) | (p.smart_computed_at < stale_before))
        .limit(batch)).all()
    s = ListeningSession
    for prefs, tz in rows:
        starts = db.session.execute(select(s.started_at).where(
            s.user_id == prefs.user_id, s.started_at >= since, s.completed.is_(True),
            s.counts_in_outcomes)).scalars()
        hours = Counter(moment.astimezone(ZoneInfo(tz)).hour for moment in starts)
        best = max(hours.items(), key=lambda item: (item[1], item[0]), default=None)
        prefs.smart_minute = None if best is None else best[0] * 60
        prefs.smart_computed_at = now
    return len(rows)


@lru_cache(maxsize=1)
def _zone_names() -> tuple[str, ...]:
    """The names a user's ``timezone`` may take (``clock.is_valid_timezone``)."""
    return tuple(sorted(available_timezones()))


def zone_clocks(now: datetime) -> dict:
    """Every IANA time zone's local date and wall-clock minute at ``now`` (the parameters of
    ``CLAIM_DUE_SQL``): about 600 conversions, a millisecond or two."""
    names, dates, minutes = [], [], []
    for name in _zone_names():
        local = now.astimezone(ZoneInfo(name))
        names.append(name)
        dates.append(local.date())
        minutes.append(local.hour * 60 + local.minute)
    return {"zone_names": names, "zone_dates": dates, "zone_minutes": minutes}


def claim_due_reminders(now: datetime | None = None) -> list[int]:
    """Find the users due a reminder now and claim their user day; the new deliveries' ids
    (a user day already claimed, by this run or another worker's, is not returned)."""
    now = now or clock.now()
    with unit_of_work():
        if _is_postgresql():
            # a small result from a big estimate: compiling it (JIT) costs seconds
            db.session.execute(text("SET LOCAL jit = off"))
            return list(db.session.execute(text(CLAIM_DUE_SQL), {
                "now": now, "default_minute": DEFAULT_SMART_MINUTE,
                "catch_up": CATCH_UP_MINUTES, **zone_clocks(now)}).scalars())
        return _claim_due_python(now)


def _claim_due_python(now: datetime) -> list[int]:
    """The same rule for SQLite (development): few users, read into Python."""
    p = ReminderPreferences
    rows = db.session.execute(
        select(p, User).join(User, User.id == p.user_id)
        .where(p.enabled.is_(True), User.is_active.is_(True),
               exists().where(PushSubscription.user_id == p.user_id))).all()
    claimed = []
    for prefs, user in rows:
        settings = clock.day_settings_at(user, now)
        wall = now.astimezone(ZoneInfo(settings.timezone))
        day = (wall - timedelta(hours=settings.day_start_hour)).date()
        at_minute = next(m for m in (prefs.remind_minute, prefs.smart_minute,
                                     DEFAULT_SMART_MINUTE) if m is not None)
        if not reminder_due(wall.hour * 60 + wall.minute, settings.day_start_hour, at_minute,
                            prefs.days_mask, day.isoweekday(), prefs.quiet_start_minute,
                            prefs.quiet_end_minute):
            continue
        listened = db.session.execute(select(exists().where(
            ListeningSession.user_id == user.id, ListeningSession.local_day == day,
            ListeningSession.counts_toward_quota.is_(True)))).scalar()
        if listened:
            continue
        new_id = db.session.execute(
            sqlite.insert(ReminderDelivery).values(
                user_id=user.id, local_day=day, created_at=now, pushes_sent=0,
                recap=prefs.weekly_recap and day.isoweekday() == 1)
            .on_conflict_do_nothing().returning(ReminderDelivery.id)).scalar()
        if new_id is not None:
            claimed.append(new_id)
    return claimed


def send_due_reminders() -> int:
    """The periodic job: refresh stale smart times, claim who is due, and enqueue the sending
    in batches (inline without Redis); old deliveries are pruned. The number claimed."""
    now = clock.now()
    refresh_smart_times(now)
    claimed = claim_due_reminders(now)
    for start in range(0, len(claimed), SEND_BATCH):
        batch = claimed[start:start + SEND_BATCH]
        enqueue(deliver_reminders, batch, queue=QUEUE_DEFAULT,
                job_id=f"reminders-{batch[0]}", retries=0)
    with unit_of_work():
        db.session.execute(delete(ReminderDelivery).where(
            ReminderDelivery.local_day < now.date() - timedelta(days=KEEP_DELIVERIES_DAYS)))
    if claimed:
        log.info("reminders claimed: %d", len(claimed))
    return len(claimed)


# ---- sending ------------------------------------------------------------------------------------

def current_streaks(user_days: dict[int, date]) -> dict[int, int]:
    """The current streak of each user at their ``day`` (the analytics' figure, freezes
    included: ``streaks.streaks_from_islands``), for a batch of users in one query."""
    if not user_days:
        return {}
    s = ListeningSession
    rows = db.session.execute(
        select(s.user_id, s.local_day)
        .where(s.user_id.in_(list(user_days)), s.completed.is_(True), s.counts_in_outcomes)
        .distinct().order_by(s.user_id, s.local_day)).all()
    islands: dict[int, list[Island]] = {user_id: [] for user_id in user_days}
    for user_id, day in rows:
        if day > user_days[user_id]:
            continue
        runs = islands[user_id]
        if runs and runs[-1].last == day - timedelta(days=1):
            runs[-1] = Island(runs[-1].first, day)
        else:
            runs.append(Island(day, day))
    return {user_id: streaks_from_islands(runs, user_days[user_id]).current
            for user_id, runs in islands.items()}


def reminder_payload(user: User, delivery: ReminderDelivery, streak: int | None) -> dict:
    """What the service worker shows: ``{title, body, url, tag}`` (+ ``kind``, ``day``). A
    streak only when given (the user shows streaks); on a recap Monday, last week's figures
    (``services.recaps.compute_recap``)."""
    day = delivery.local_day
    streak = streak or 0
    recap = compute_recap(user.id, "week", day - timedelta(days=7)) if delivery.recap else None
    if recap is not None:
        last_week = day - timedelta(days=7)
        body = (f"Last week: {round(recap['minutes'])} min in {recap['sessions']} "
                f"sessions over {recap['active_days']} days.")
        if streak >= 2:
            body += f" Your streak: {streak} days."
        return {"title": "Your week in sound", "body": body,
                "url": f"/recap?period=week&date={last_week.isoformat()}",
                "tag": "sonicus-weekly-recap", "kind": "weekly_recap", "day": day.isoformat(),
                "recap": {"from": recap["from"], "to": recap["to"],
                          "minutes": recap["minutes"], "sessions": recap["sessions"],
                          "active_days": recap["active_days"]}}
    body = "A few minutes of sound for yourself today."
    if streak >= 2:
        body = f"Keep your {streak}-day streak going: a few minutes of sound today."
    return {"title": "Time to listen", "body": body, "url": "/?from=reminder",
            "tag": "sonicus-reminder", "kind": "reminder", "day": day.isoformat()}


def deliver_reminders(delivery_ids: list[int]) -> int:
    """Job: send the claimed reminders (each to every subscription of its user). The number
    of pushes the push services accepted."""
    return _deliver({delivery_id: None for delivery_id in delivery_ids}, attempt=0)


def retry_reminder_pushes(delivery_id: int, subscription_ids: list[int], attempt: int) -> int:
    """Job: the pushes of one reminder that a push service asked to retry later."""
    return _deliver({delivery_id: set(subscription_ids)}, attempt=attempt)


def _deliver(wanted: dict[int, set[int] | None], attempt: int) -> int:
    """Send a batch of reminders: the reads in a few queries, the pushes outside any
    transaction, the outcome (devices gone, pushes counted) in one."""
    found = db.session.execute(
        select(ReminderDelivery, User).join(User, User.id == ReminderDelivery.user_id)
        .where(ReminderDelivery.id.in_(list(wanted)), User.is_active.is_(True))).all()
    by_user = {user.id: (delivery, user) for delivery, user in found}
    subscriptions = db.session.execute(
        select(PushSubscription).where(PushSubscription.user_id.in_(list(by_user)))
        .order_by(PushSubscription.id)).scalars().all()
    streaks = current_streaks({
        user.id: delivery.local_day for delivery, user in by_user.values()
        if user.merged_preferences.get("show_streaks", True)})
    payloads = {
        user.id: json.dumps(reminder_payload(user, delivery, streaks.get(user.id)),
                            separators=(",", ":")).encode()
        for delivery, user in by_user.values()}
    db.session.commit()  # no transaction stays open across the network (rows stay loaded)
    now = clock.now()
    sent: Counter = Counter()
    gone, again, retry_after = [], {}, {}
    pushes = []
    for subscription in subscriptions:
        delivery, _user = by_user[subscription.user_id]
        only = wanted[delivery.id]
        if only is not None and subscription.id not in only:
            continue
        if subscription.expires_at is not None and subscription.expires_at <= now:
            gone.append(subscription.id)
            continue
        pushes.append((subscription, payloads[subscription.user_id]))
    results = webpush.send_many(pushes, topic="reminder")
    for (subscription, _payload), result in zip(pushes, results, strict=True):
        delivery, _user = by_user[subscription.user_id]
        if result.outcome == webpush.SENT:
            sent[delivery.id] += 1
        elif result.outcome == webpush.GONE:
            gone.append(subscription.id)
        elif result.outcome == webpush.RETRY:
            again.setdefault(delivery.id, []).append(subscription.id)
            if result.retry_after is not None:
                retry_after[delivery.id] = max(retry_after.get(delivery.id, 0.0),
                                               result.retry_after)
    if gone or sent:
        with unit_of_work():
            if gone:
                db.session.execute(delete(PushSubscription).where(
                    PushSubscription.id.in_(gone)))
            if sent:
                table = ReminderDelivery.__table__
                db.session.execute(
                    update(table).where(table.c.id == bindparam("delivery"))
                    .values(pushes_sent=table.c.pushes_sent + bindparam("count"),
                            sent_at=now),
                    [{"delivery": d, "count": n} for d, n in sent.items()])
    for delivery_id, subscription_ids in again.items():
        _schedule_retry(delivery_id, subscription_ids, attempt, retry_after.get(delivery_id))
    return sum(sent.values())


def _schedule_retry(delivery_id: int, subscription_ids: list[int], attempt: int,
                    retry_after: float | None) -> None:
    config = current_app.config
    delays = list(config.get("WEBPUSH_RETRY_SECONDS") or [])
    if attempt >= len(delays):
        log.warning("reminder %s: giving up on %d push(es) after %d retries", delivery_id,
                    len(subscription_ids), attempt)
        return
    delay = float(delays[attempt])
    if retry_after is not None:
        delay = max(delay, min(retry_after, float(config.get("WEBPUSH_RETRY_MAX_SECONDS",
                                                               3600.0))))
    queue = get_queue(QUEUE_DEFAULT)
    if queue is None:  # no Redis: no worker to come back later
        log.warning("reminder %s: %d push(es) not retried (no REDIS_URL)", delivery_id,
                    len(subscription_ids))
        return
    args = (delivery_id, subscription_ids, attempt + 1)
    try:
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), retry_reminder_pushes, *args,
                             job_timeout=120, result_ttl=300, failure_ttl=7 * 24 * 3600)
        else:
            enqueue(retry_reminder_pushes, *args, queue=QUEUE_DEFAULT, retries=0)
    except Exception as exc:  # Redis away: the push is lost, the reminder day stays claimed
        log.warning("reminder %s: retry not scheduled: %s", delivery_id, type(exc).__name__)
