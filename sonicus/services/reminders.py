"""Reminders: the periodic job that sends at most one reminder per user day (API.md,
Reminders). Who is due, and the claim of their user day, is ``services.reminder_claims``; the
preferences and push subscriptions are set through ``services.reminder_settings``.

Sending: one job per batch of claimed reminders; a push service's 404/410 deletes that
subscription (the row as the job read it: a browser that subscribed again meanwhile keeps its
new one); 429, 5xx and network failures are retried for that subscription only, after
``WEBPUSH_RETRY_SECONDS`` (Retry-After, when longer, wins), then given up. With
``weekly_recap``, the reminder of a Monday carries the recap of the week before.

The jobs (``send_due_reminders``, ``deliver_reminders``, ``retry_reminder_pushes``) are
queued by their dotted path in this module: they keep their names and their place here.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

from flask import current_app
from sqlalchemy import and_, bindparam, delete, or_, select, update

from .. import clock
from ..extensions import db
from ..models import ListeningSession, User
from ..models.reminders import PushSubscription, ReminderDelivery, ReminderPreferences
from ..tasks.queue import QUEUE_DEFAULT, enqueue, get_queue
from . import webpush
from .recaps import compute_recap
from .reminder_claims import (
    CATCH_UP_MINUTES,
    listened_on,
    refresh_smart_times,
    scan_due_reminders,
)
from .streaks import Island, streaks_from_islands
from .transaction import unit_of_work

log = logging.getLogger(__name__)

SEND_BATCH = 50  # reminders per sending job
KEEP_DELIVERIES_DAYS = 14


def send_due_reminders() -> int:
    """The periodic job: refresh stale smart times, claim who is due, and enqueue the sending
    in batches (inline without Redis); a reminder claimed earlier whose sending job was lost
    (never sent, still due: ``reminder_claims.scan_due_reminders``) is queued again; old
    deliveries are pruned. The number claimed."""
    now = clock.now()
    refresh_smart_times(now)
    due = scan_due_reminders(now)
    _enqueue_sending(due.claimed, "reminders-")
    # another job for reminders whose job was lost; should the original still run (late),
    # whichever runs first takes them (``_deliver``), the other sends nothing
    _enqueue_sending(due.unsent, f"reminders-again-{int(now.timestamp()) // 60}-")
    with unit_of_work():
        db.session.execute(delete(ReminderDelivery).where(
            ReminderDelivery.local_day < now.date() - timedelta(days=KEEP_DELIVERIES_DAYS)))
    if due.claimed:
        log.info("reminders claimed: %d", len(due.claimed))
    if due.unsent:
        log.warning("reminders claimed but never sent, queued again: %d", len(due.unsent))
    return len(due.claimed)


def _enqueue_sending(delivery_ids: list[int], job_prefix: str) -> None:
    """Queue the sending of these reminders in batches. A batch that cannot be queued (Redis
    away) stays claimed and unsent: a later scan queues it again while it is still due."""
    for start in range(0, len(delivery_ids), SEND_BATCH):
        batch = delivery_ids[start:start + SEND_BATCH]
        enqueue(deliver_reminders, batch, queue=QUEUE_DEFAULT,
                job_id=f"{job_prefix}{batch[0]}", retries=0, best_effort=True)


# ---- sending ------------------------------------------------------------------------------------

def current_streaks(user_days: dict[int, date],
                    never_begun: dict[int, frozenset[date]] | None = None) -> dict[int, int]:
    """The current streak of each user at their ``day`` (the analytics' figure, freezes
    included: ``streaks.streaks_from_islands``; ``never_begun``: each user's
    ``clock.dates_never_begun``), for a batch of users in one query."""
    never_begun = never_begun or {}
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
    return {user_id: streaks_from_islands(runs, user_days[user_id],
                                          never_begun.get(user_id, frozenset())).current
            for user_id, runs in islands.items()}


def reminder_payload(user: User, delivery: ReminderDelivery, streak: int | None) -> dict:
    """What the service worker shows: ``{title, body, url, tag}`` (+ ``kind``, ``day``). A
    streak only when given (the user shows streaks); on a recap Monday, last week's figures
    (``services.recaps.compute_recap``) when there are any."""
    day = delivery.local_day
    streak = streak or 0
    recap = compute_recap(user.id, "week", day - timedelta(days=7)) if delivery.recap else None
    if recap is not None and recap["sessions"]:  # an empty week: the plain reminder
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
    transaction, the outcome (devices gone, pushes counted) in one. A reminder whose user
    turned reminders off or listened since it was claimed (a retry comes up to an hour
    later), or whose user day is over by now (its own reminder belongs to the next; but see
    ``_claimed_when_its_day_was_over``), is not sent; a reminder's first sending takes it
    (``sent_at``), so a job run again after its worker died sends it no second time (at most
    one per user day)."""
    found = db.session.execute(  # still wanted: reminders on, and not listened since
        select(ReminderDelivery, User).join(User, User.id == ReminderDelivery.user_id)
        .join(ReminderPreferences, ReminderPreferences.user_id == User.id)
        .where(ReminderDelivery.id.in_(list(wanted)), User.is_active.is_(True),
               ReminderPreferences.enabled.is_(True),
               ~listened_on(ReminderDelivery.user_id, ReminderDelivery.local_day))).all()
    moment = clock.now()  # and the user day it was claimed for not over (ended or moved)
    found = [(delivery, user) for delivery, user in found
             if clock.user_day(user, moment).day <= delivery.local_day
             or _claimed_when_its_day_was_over(user, delivery, moment)]
    firsts = [delivery.id for delivery, _user in found if wanted[delivery.id] is None]
    if firsts:  # taken once: the job run again (its worker died) sends no reminder twice
        table = ReminderDelivery.__table__
        taken = set(db.session.execute(
            update(table).where(table.c.id.in_(firsts), table.c.sent_at.is_(None))
            .values(sent_at=clock.now()).returning(table.c.id)).scalars())
        found = [(delivery, user) for delivery, user in found
                 if wanted[delivery.id] is not None or delivery.id in taken]
    by_user = {user.id: (delivery, user) for delivery, user in found}
    subscriptions = db.session.execute(
        select(PushSubscription).where(PushSubscription.user_id.in_(list(by_user)))
        .order_by(PushSubscription.id)).scalars().all()
    shown = [(delivery, user) for delivery, user in by_user.values()
             if user.merged_preferences.get("show_streaks", True)]
    streaks = current_streaks({user.id: delivery.local_day for delivery, user in shown},
                              {user.id: clock.dates_never_begun(user) for _, user in shown})
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
            gone.append(_as_read(subscription))
            continue
        pushes.append((subscription, payloads[subscription.user_id]))
    results = webpush.send_many(pushes, topic="reminder", held=_account_held)
    for (subscription, _payload), result in zip(pushes, results, strict=True):
        delivery, _user = by_user[subscription.user_id]
        if result.outcome == webpush.SENT:
            sent[delivery.id] += 1
        elif result.outcome == webpush.GONE:
            gone.append(_as_read(subscription))
        elif result.outcome == webpush.RETRY:
            again.setdefault(delivery.id, []).append(subscription.id)
            if result.retry_after is not None:
                retry_after[delivery.id] = max(retry_after.get(delivery.id, 0.0),
                                               result.retry_after)
    if gone or sent:
        with unit_of_work():
            if gone:
                db.session.execute(delete(PushSubscription).where(or_(*gone)))
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


def _claimed_when_its_day_was_over(user: User, delivery: ReminderDelivery, moment) -> bool:
    """A reminder whose time a spring-forward skipped at the very end of its day (a day that
    starts at 03:00 ends inside New York's 02:00 -> 03:00 jump): claimed right after the jump,
    when its day was already over (``reminder_clocks.skipped_reminder_day``), and sent within
    the catch-up hour of that claim."""
    return (clock.user_day(user, delivery.created_at).day > delivery.local_day
            and moment < delivery.created_at + timedelta(minutes=CATCH_UP_MINUTES))


def _as_read(subscription: PushSubscription):
    """The condition of a dead subscription's deletion: its row still as the sending read it.
    A browser that posted its endpoint again meanwhile (new keys, a new expiration time:
    ``reminder_settings.save_push_subscription``) keeps that fresh subscription, which is
    not the one the push service refused or that expired."""
    p = PushSubscription
    return and_(p.id == subscription.id, p.user_id == subscription.user_id,
                p.p256dh == subscription.p256dh, p.auth == subscription.auth,
                p.updated_at == subscription.updated_at,
                p.expires_at.is_not_distinct_from(subscription.expires_at))


@contextmanager
def _account_held(subscription: PushSubscription) -> Iterator[bool]:
    """Around one push on its way: its user's row held ``FOR KEY SHARE`` in a transaction of
    its own (a session of its own), which blocks nothing but the erasure of the account (it
    deletes the row, ``FOR UPDATE``): an erasure waits for a push under way, at most one push
    service's timeout, and a push after it finds the account gone and does not go (False).
    The reminder was read before the erasure committed; without this its push went out
    after the account was erased."""
    with current_app.app_context():
        try:
            yield db.session.execute(
                select(User.id).where(User.id == subscription.user_id)
                .with_for_update(key_share=True)).first() is not None
        finally:
            db.session.rollback()
            db.session.remove()


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
