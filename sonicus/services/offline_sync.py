"""Offline listening uploaded later: ``POST /api/user/sessions/sync``.

Each item is judged with what was in force when it started (``started_at``): the tier (the
fold of the subscription's tier-setting events, ``tiers.tier_in_force_at``), the user's
assignments (``PackageAssignment.is_live``) and the user's day (``clock.user_day``, under the
day settings then in force). A licence live at that instant needs the package to be open by
the tier or an assignment then (``services.downloads``), so those two decide.

Rules, in order; the first that fails rejects the item with its code:

- ``client_id`` already stored for the user: ``unchanged`` (a retried batch changes nothing);
- ``started_at_out_of_range``: ``started_at`` older than 14 days or in the future (2 min skew);
- ``invalid_interval``: ``ended_at`` not after ``started_at``, in the future (2 min skew), or
  more than 24 h after it;
- ``not_found``: no such package in the catalog at ``started_at`` (created after it,
  unpublished or archived by then: ``SoundPackage.in_catalog_at``), or a track not of that
  package;
- ``package_locked``: neither the tier nor an assignment opened the package at ``started_at``;
- ``overlap``: it overlaps another of the user's sessions (stored, or earlier in the batch) by
  more than 60 s (an upload spans its interval; a live one, open or ended, what it is known
  to have played: up to its last heartbeat, so the order in which the app completes it and
  uploads does not matter, ``_known_end``);
- ``daily_session_limit_reached``: the user day it started in was full: within a day, the
  k-th quota-counted start (by start time) never exceeds the daily limit of the tier it
  started on, with this item inserted where it belongs.

Listened time is clamped by ``ended_at - started_at``, the content's length and the tier's
maximum at ``started_at``; completion is the server's word (``reaches_completion``); an
accidental tap (ended within 60 s, under 30 s listened) counts no quota, as a live one.

Concurrency: the batch takes the user's subscription row lock, as a live start does, so a
batch and a start racing for a day's last slot run one after the other and exactly one gets
it; the unique (user_id, client_id) constraint is the last word on duplicates.

Bounded work: a fixed number of set-based queries per batch whatever its size (events,
assignments, packages, tracks, stored client ids, neighbouring sessions, the days' counted
starts), one multi-row insert, one popularity update, one analytics mark; one refresh (one
``analytics.updated``) after the commit.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import case, or_, select, update

from .. import clock
from ..extensions import db
from ..models import (
    ListeningSession,
    PackageAssignment,
    SoundPackage,
    SubscriptionEvent,
    Track,
    User,
    UserSubscription,
)
from ..models.listening import ENDED
from ..tiers import (
    ACCESS_LOCKED,
    TIER_SETTING_EVENTS,
    TIERS,
    package_access,
    tier_in_force_at,
)
from . import analytics
from .listened import is_accidental_tap, reaches_completion
from .subscriptions import due_change, lock_or_create_subscription
from .transaction import unit_of_work

SYNC_WINDOW = timedelta(days=14)
CLOCK_SKEW = timedelta(minutes=2)
MAX_INTERVAL = timedelta(hours=24)
OVERLAP_TOLERANCE_SECONDS = 60
CREATED, UNCHANGED, REJECTED = "created", "unchanged", "rejected"


@dataclass(frozen=True)
class SyncResult:
    """One item's outcome (``SyncResultSchema``); ``client_id`` as the item spelled it."""

    client_id: str
    status: str
    session_id: int | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class SyncAnswer:
    results: list[SyncResult]


class _Intervals:
    """The user's sessions near the batch as (start, end) in epoch seconds, sorted by start:
    how much a new interval overlaps any of them, looking only at those that can reach it."""

    # No stored session is longer than this (an upload's 24 h, an open one's 3 h, plus slack).
    REACH = (MAX_INTERVAL + timedelta(hours=1)).total_seconds()

    def __init__(self, spans):
        self.spans = sorted((s.timestamp(), e.timestamp()) for s, e in spans)
        self.starts = [start for start, _end in self.spans]

    def overlaps(self, started: datetime, ended: datetime, tolerance: float) -> bool:
        start, end = started.timestamp(), ended.timestamp()
        index = bisect.bisect_left(self.starts, end)
        while index > 0:
            index -= 1
            other_start, other_end = self.spans[index]
            if other_start < start - self.REACH:
                break
            if min(end, other_end) - max(start, other_start) > tolerance:
                return True
        return False

    def add(self, started: datetime, ended: datetime) -> None:
        span = (started.timestamp(), ended.timestamp())
        index = bisect.bisect_right(self.starts, span[0])
        self.starts.insert(index, span[0])
        self.spans.insert(index, span)


class _Rejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class _Context:
    """What the batch needs, loaded in a few set-based queries."""

    now: datetime
    user: User
    current_tier: str
    tier_changes: list[tuple[datetime, str | None]]
    assignments: dict[int, list[PackageAssignment]]
    packages: dict[int, SoundPackage]
    tracks: dict[int, Track]
    intervals: _Intervals
    days: dict[datetime, date]
    day_starts: dict[date, list[tuple[datetime, int | None]]]


def sync_sessions(user_id: int, items: list[dict], now: datetime | None = None) -> SyncAnswer:
    """Store the sessions played offline; one result per item, in order."""
    now = now or clock.now()
    results: list[SyncResult | None] = [None] * len(items)
    created: list[tuple[int, ListeningSession]] = []
    with unit_of_work():
        sub = lock_or_create_subscription(user_id)
        user = db.session.get(User, user_id, populate_existing=True)
        ids = [str(item["client_id"]) for item in items]  # canonical: stored and compared
        sent = [getattr(item["client_id"], "sent", ids[i]) for i, item in enumerate(items)]
        stored = dict(db.session.execute(
            select(ListeningSession.client_id, ListeningSession.id)
            .where(ListeningSession.user_id == user_id, ListeningSession.client_id.in_(ids))
        ).all())
        pending = []
        for index, item in enumerate(items):
            if ids[index] in stored:
                results[index] = SyncResult(sent[index], UNCHANGED, stored[ids[index]])
                continue
            try:
                _check_interval(item, now)
            except _Rejected as rejected:
                results[index] = SyncResult(sent[index], REJECTED, None, rejected.code,
                                            rejected.message)
                continue
            pending.append(index)
        if pending:
            context = _load_context(user, sub, [items[i] for i in pending], now)
            for index in pending:
                try:
                    session = _judge(context, ids[index], items[index])
                except _Rejected as rejected:
                    results[index] = SyncResult(sent[index], REJECTED, None, rejected.code,
                                                rejected.message)
                    continue
                created.append((index, session))
        if created:
            sessions = [session for _index, session in created]
            db.session.add_all(sessions)
            db.session.flush()  # one multi-row INSERT ... RETURNING
            _bump_popularity(sessions)
            analytics.mark_stale(user_id)
            for index, session in created:
                results[index] = SyncResult(sent[index], CREATED, session.id)
    if created:
        analytics.request_refresh(user_id)  # one refresh, one analytics.updated
    return SyncAnswer([r for r in results if r is not None])


def _check_interval(item: dict, now: datetime) -> None:
    started, ended = item["started_at"], item["ended_at"]
    if started > now + CLOCK_SKEW or started < now - SYNC_WINDOW:
        raise _Rejected("started_at_out_of_range",
                        "started_at must be within the last 14 days and not in the future.")
    if ended <= started or ended > now + CLOCK_SKEW or ended - started > MAX_INTERVAL:
        raise _Rejected("invalid_interval",
                        "ended_at must be after started_at, not in the future, and within "
                        "24 hours of it.")


def _moments(item: dict, now: datetime) -> tuple[datetime, datetime]:
    """started_at and ended_at as stored, never after now: an interval that ends within the
    allowed skew ahead of now (a device whose clock runs ahead) is moved back to end now,
    keeping its length (cut at now, it would lose what was listened, down to nothing)."""
    ahead = max(item["ended_at"] - now, timedelta(0))
    return item["started_at"] - ahead, item["ended_at"] - ahead


def _load_context(user: User, sub: UserSubscription, items: list[dict],
                  now: datetime) -> _Context:
    spans_of_items = [_moments(item, now) for item in items]
    first = min(start for start, _end in spans_of_items)
    last = max(end for _start, end in spans_of_items)
    package_ids = {item["package_id"] for item in items}
    track_ids = {item["track_id"] for item in items if item.get("track_id") is not None}

    changes = [(at, to_tier) for at, to_tier in db.session.execute(
        select(SubscriptionEvent.at, SubscriptionEvent.to_tier)
        .where(SubscriptionEvent.user_id == user.id,
               SubscriptionEvent.type.in_(sorted(TIER_SETTING_EVENTS)))
        .order_by(SubscriptionEvent.at, SubscriptionEvent.id)).all()]
    current_tier = sub.tier
    change = due_change(sub, now)
    if change is not None:
        # A trial's, a grace's or a period's end that has passed and that the expiry job has
        # not written yet: a change of its own (after the row's tier, which held until then).
        changes = (changes or [(datetime.min.replace(tzinfo=UTC), current_tier)]) + [change]
        current_tier = change[1]

    assignments: dict[int, list[PackageAssignment]] = {}
    a = PackageAssignment
    for row in db.session.execute(
            select(a).where(a.user_id == user.id, a.package_id.in_(package_ids),
                            a.assigned_at <= last,
                            or_(a.expires_at.is_(None), a.expires_at > first),
                            or_(a.revoked_at.is_(None), a.revoked_at > first))).scalars():
        assignments.setdefault(row.package_id, []).append(row)

    # locked (in id order, before any session or track is written) for the popularity bump:
    # a package's row before its sessions', as an admin's edit of its tracks takes them
    packages = {p.id: p for p in db.session.execute(
        select(SoundPackage).where(SoundPackage.id.in_(package_ids),
                                   or_(SoundPackage.published.is_(True),
                                       SoundPackage.unpublished_at.is_not(None)))
        .order_by(SoundPackage.id).with_for_update(key_share=True)).scalars()}
    tracks = {t.id: t for t in db.session.execute(
        select(Track).where(Track.id.in_(track_ids))).scalars()} if track_ids else {}

    s = ListeningSession
    spans = []
    for started, ended, heartbeat in db.session.execute(
            select(s.started_at, s.ended_at, s.last_heartbeat_at)
            .where(s.user_id == user.id, s.started_at < last,
                   s.started_at > first - MAX_INTERVAL - timedelta(hours=1),
                   or_(s.ended_at.is_(None), s.ended_at > first))).all():
        known = _known_end(started, heartbeat)
        spans.append((started, known if ended is None else min(ended, known)))

    days = {start: clock.user_day(user, start).day for start, _end in spans_of_items}
    day_starts: dict[date, list[tuple[datetime, int | None]]] = {
        day: [] for day in days.values()}
    for day, started, tier in db.session.execute(
            select(s.local_day, s.started_at, s.tier)
            .where(s.user_id == user.id, s.local_day.in_(set(days.values())),
                   s.counts_toward_quota.is_(True))
            .order_by(s.started_at, s.id)).all():
        day_starts.setdefault(_as_date(day), []).append(
            (started, TIERS[tier].daily_sessions if tier in TIERS else None))
    return _Context(now, user, current_tier, changes, assignments, packages, tracks,
                    _Intervals(spans), days, day_starts)


def _as_date(value) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _known_end(started: datetime, heartbeat: datetime | None) -> datetime:
    """How far a session is known to have played, for overlaps: to its last heartbeat (an
    upload's is its end). A live session's heartbeats are what the server heard as it
    played; what its completion (or the stale sweep) adds after the last one has no known
    place between that heartbeat and the end, which comes whenever the app is back online.
    So an upload is judged alike whether the live session it meets is still open, swept or
    completed, whichever the app sends first."""
    return max(started, heartbeat) if heartbeat is not None else started


def _judge(context: _Context, client_id: str, item: dict) -> ListeningSession:
    """The session to store for this item, or ``_Rejected``; records it in the context so
    later items of the batch see it."""
    started, ended = _moments(item, context.now)
    package = context.packages.get(item["package_id"])
    if package is None or started < package.created_at or not package.in_catalog_at(started):
        raise _Rejected("not_found", "Package not found.")
    track = None
    if item.get("track_id") is not None:
        track = context.tracks.get(item["track_id"])
        if track is None or track.package_id != package.id:
            raise _Rejected("not_found", "Track not found.")

    tier = tier_in_force_at(context.tier_changes, started, context.current_tier)
    assigned = any(a.is_live(started) for a in context.assignments.get(package.id, ()))
    if package_access(tier, package.minimum_tier, assigned) == ACCESS_LOCKED:
        raise _Rejected("package_locked",
                        f"Neither the {TIERS[tier].title} tier in force then nor an "
                        "assignment opened this package.")

    if context.intervals.overlaps(started, ended, OVERLAP_TOLERANCE_SECONDS):
        raise _Rejected("overlap", "It overlaps another of your sessions by more than "
                                   f"{OVERLAP_TOLERANCE_SECONDS} s.")

    session = ListeningSession(
        user_id=context.user.id, package=package, track=track, tier=tier, status=ENDED,
        started_at=started, ended_at=ended, last_heartbeat_at=ended,  # played to its end
        max_duration_seconds=TIERS[tier].max_session_seconds,
        listened_seconds=0, client_id=client_id, mood_before=item.get("mood_before"),
        mood_after=item.get("mood_after"), note=item.get("note"),
        client_completed=bool(item.get("completed")), counts_toward_quota=True)
    caps = [int((ended - started).total_seconds()), int(item["listened_seconds"])]
    length = track.duration_seconds if track is not None else (package.duration_seconds or None)
    if length:
        caps.append(length)
    if session.max_duration_seconds is not None:
        caps.append(session.max_duration_seconds)
    session.listened_seconds = max(0, min(caps))
    session.completed = reaches_completion(session)
    session.end_reason = "completed" if session.completed else "stopped"
    if item.get("position_seconds") is not None:
        position = int(item["position_seconds"])
        session.position_seconds = min(position, length) if length else position
        session.position_updated_at = ended

    day = context.days[started]
    session.local_day = day
    if is_accidental_tap(started, ended, session.listened_seconds):
        session.counts_toward_quota = False
    else:
        _take_slot(context.day_starts.setdefault(day, []), started,
                   TIERS[tier].daily_sessions, day)
    context.intervals.add(started, ended)
    return session


def _take_slot(starts: list[tuple[datetime, int | None]], started: datetime,
               limit: int | None, day: date) -> None:
    """Count a start on its day: refused when, with it inserted in start order, the k-th
    counted start of the day would exceed the daily limit of the tier it started on (this
    one's, or a later one's pushed back by it)."""
    position = bisect.bisect_right(starts, started, key=lambda entry: entry[0])
    trial = [*starts[:position], (started, limit), *starts[position:]]
    if limit is not None or any(lim is not None for _s, lim in starts[position:]):
        if any(lim is not None and k > lim for k, (_s, lim) in enumerate(trial, 1)):
            raise _Rejected("daily_session_limit_reached",
                            f"The day it started on ({day.isoformat()}) has no session left "
                            f"in the quota.")
    starts[:] = trial


def _bump_popularity(sessions: list[ListeningSession]) -> None:
    """Every stored session that is not an accidental tap adds one to its package's
    popularity, as a live one does when it ends (one statement)."""
    counts = Counter(s.package_id for s in sessions if s.counts_toward_quota)
    if not counts:
        return
    p = SoundPackage
    db.session.execute(update(p).where(p.id.in_(list(counts))).values(
        popularity=p.popularity + case(counts, value=p.id, else_=0)))
