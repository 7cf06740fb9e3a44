"""Listening sessions: start within the tier's daily quota, heartbeats, completion, history,
and closing sessions left open.

Quota (race-free on PostgreSQL): ``start_session`` locks the user's ``user_subscriptions`` row
(``SELECT ... FOR UPDATE``) for the whole transaction, counts today's counted sessions, inserts
and commits. Two starts for the same user therefore run one after the other; other users are
not blocked. Tier changes write the same row, so a start never sees a half-changed tier.
On SQLite (the embedded development default) FOR UPDATE is ignored; writes are serialised by
SQLite's own database lock instead.

Listened time is always the server's number: the client's claim is clamped by the wall time
since the start, the track's length (the package's when no track was chosen) and the tier's
maximum length, and never decreases.

Completion is the server's word too: a session is ``completed`` only when its listened time
reaches 80% of its playable length (``reaches_completion``); what the client said is kept as
``client_completed`` and decides nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from .. import clock
from ..envelope import Page, fail, not_found, paginate
from ..extensions import db
from ..models import ListeningSession, SoundPackage, Track, User
from ..models.listening import ENDED, OPEN
from ..tiers import TIERS, UNLIMITED_SESSION_CLOSE_SECONDS, check_package_access
from . import analytics
from .assignments import is_assigned
from .catalog import get_catalog_package
from .quota import enforce_daily_quota
from .subscriptions import lock_or_create_subscription
from .transaction import unit_of_work

log = logging.getLogger(__name__)

# An accidental tap: ended within this many seconds with less than that listened.
GIVE_BACK_WITHIN_SECONDS = 60
GIVE_BACK_UNDER_LISTENED_SECONDS = 30
STALE_BATCH = 500


def start_session(user_id: int, package_id: int, track_id: int | None = None,
                  mood_before: int | None = None, now: datetime | None = None
                  ) -> ListeningSession:
    """Start a session: 404 unknown package/track, 403 when neither the tier nor a live
    assignment opens the package, 429 quota used today.

    The user's subscription row is locked for the whole transaction: two starts of one user
    run one after the other, so the count and the insert cannot interleave. The user row (its
    day settings) is read afresh after taking the lock."""
    now = now or clock.now()
    with unit_of_work():
        sub = lock_or_create_subscription(user_id)
        user = db.session.get(User, user_id, populate_existing=True)
        tier = TIERS[sub.tier]
        package = get_catalog_package(package_id)
        check_package_access(tier.name, package.minimum_tier,
                             is_assigned(user_id, package.id, now))
        track = None
        if track_id is not None:
            track = db.session.get(Track, track_id)
            if track is None or track.package_id != package.id:
                not_found("Track")
        day = enforce_daily_quota(user, tier.name, now)
        session = ListeningSession(
            user_id=user_id, package=package, track=track,  # the answer shows both
            tier=tier.name, status=OPEN, started_at=now, local_day=day,
            max_duration_seconds=tier.max_session_seconds, listened_seconds=0,
            completed=False, counts_toward_quota=True, mood_before=mood_before)
        db.session.add(session)
    return session


def content_seconds(session: ListeningSession) -> int | None:
    """The length of what is being played: the track, else the whole package."""
    if session.track is not None:
        return session.track.duration_seconds
    length = session.package.duration_seconds if session.package is not None else 0
    return length or None


def playable_seconds(session: ListeningSession) -> int | None:
    """What the session can play: the smaller of the content's length and the tier's maximum
    session length; None when neither is known."""
    caps = [c for c in (content_seconds(session), session.max_duration_seconds) if c]
    return min(caps) if caps else None


def reaches_completion(session: ListeningSession) -> bool:
    """THE completion rule: the server's listened time reaches 80% of the playable length."""
    playable = playable_seconds(session)
    return playable is not None and session.listened_seconds * 5 >= playable * 4


def clamp_listened(session: ListeningSession, claimed: int, now: datetime) -> int:
    """The server's listened seconds: the claim capped by wall time, content and tier length,
    and never below what was already recorded."""
    wall = max(0, int((now - session.started_at).total_seconds()))
    caps = [wall]
    length = content_seconds(session)
    if length is not None:
        caps.append(length)
    if session.max_duration_seconds is not None:
        caps.append(session.max_duration_seconds)
    return max(session.listened_seconds, min([max(0, int(claimed)), *caps]))


def get_session(user_id: int, session_id: int, *, lock: bool = False) -> ListeningSession:
    """One of the caller's sessions; someone else's id is 404."""
    stmt = (select(ListeningSession)
            .options(selectinload(ListeningSession.package), selectinload(ListeningSession.track))
            .where(ListeningSession.id == session_id, ListeningSession.user_id == user_id))
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    session = db.session.execute(stmt).scalar_one_or_none()
    if session is None:
        not_found("Session")
    return session


def _ensure_open(session: ListeningSession) -> None:
    if session.status != OPEN:
        fail(409, "conflict", "This session has already ended.")


@dataclass(frozen=True)
class Progress:
    """A heartbeat's answer: the session with the stored figure, and whether the claim was
    cut (``clamped``: more was claimed than the server stores)."""

    session: ListeningSession
    clamped: bool

    def __getattr__(self, name):
        return getattr(self.session, name)


def heartbeat(user_id: int, session_id: int, listened_seconds: int,
              now: datetime | None = None) -> Progress:
    now = now or clock.now()
    with unit_of_work():
        session = get_session(user_id, session_id, lock=True)
        _ensure_open(session)
        session.listened_seconds = clamp_listened(session, listened_seconds, now)
    return Progress(session, clamped=listened_seconds > session.listened_seconds)


def complete_session(user_id: int, session_id: int, listened_seconds: int, completed: bool,
                     mood_after: int | None = None, note: str | None = None,
                     now: datetime | None = None) -> ListeningSession:
    """End a session. ``completed`` is the client's word, kept as ``client_completed``; the
    session is completed only when the server's listened time reaches 80% of what it can play.
    An accidental tap (ended within 60 s, under 30 s listened) gives the day's quota back; any
    other ending bumps the package's popularity. Analytics are marked stale in the same
    transaction and a refresh is requested after the commit."""
    now = now or clock.now()
    with unit_of_work():
        session = get_session(user_id, session_id, lock=True)
        _ensure_open(session)
        _end(session, listened_seconds, completed, mood_after, note, now)
        analytics.mark_stale(user_id)
    analytics.request_refresh(user_id)
    return session


def _end(session: ListeningSession, listened_seconds: int, completed: bool,
         mood_after: int | None, note: str | None, now: datetime) -> None:
    session.listened_seconds = clamp_listened(session, listened_seconds, now)
    session.status = ENDED
    session.ended_at = now
    session.client_completed = bool(completed)
    session.completed = reaches_completion(session)
    session.end_reason = "completed" if session.completed else "stopped"
    if mood_after is not None:
        session.mood_after = mood_after
    if note is not None:
        session.note = note
    elapsed = (now - session.started_at).total_seconds()
    if (elapsed <= GIVE_BACK_WITHIN_SECONDS
            and session.listened_seconds < GIVE_BACK_UNDER_LISTENED_SECONDS):
        session.counts_toward_quota = False
    else:
        db.session.execute(update(SoundPackage).where(SoundPackage.id == session.package_id)
                           .values(popularity=SoundPackage.popularity + 1))


def list_history(user_id: int, args: dict) -> Page:
    """The caller's sessions, newest first; ``from``/``to`` are the user's days, inclusive."""
    stmt = (select(ListeningSession)
            .options(selectinload(ListeningSession.package), selectinload(ListeningSession.track))
            .where(ListeningSession.user_id == user_id))
    first: date | None = args.get("from")
    last: date | None = args.get("to")
    if first is not None:
        stmt = stmt.where(ListeningSession.local_day >= first)
    if last is not None:
        stmt = stmt.where(ListeningSession.local_day <= last)
    stmt = stmt.order_by(ListeningSession.started_at.desc(), ListeningSession.id.desc())
    return paginate(db, stmt, args)


def _close_batch(max_seconds: int | None, now: datetime) -> tuple[int, set[int]]:
    limit = UNLIMITED_SESSION_CLOSE_SECONDS if max_seconds is None else max_seconds
    cutoff = now - timedelta(seconds=limit)
    condition = (ListeningSession.max_duration_seconds.is_(None) if max_seconds is None
                 else ListeningSession.max_duration_seconds == max_seconds)
    rows = db.session.execute(
        select(ListeningSession)
        .options(selectinload(ListeningSession.package), selectinload(ListeningSession.track))
        .where(ListeningSession.status == OPEN, condition,
               ListeningSession.started_at < cutoff)
        .order_by(ListeningSession.id).limit(STALE_BATCH)
        .with_for_update(skip_locked=True, of=ListeningSession)
        .execution_options(populate_existing=True)
    ).scalars().all()
    users = set()
    for session in rows:
        end = session.started_at + timedelta(seconds=limit)
        session.listened_seconds = clamp_listened(session, session.listened_seconds, end)
        session.status = ENDED
        session.ended_at = end
        session.end_reason = "expired"
        # the client said nothing: only the server's listened time can complete it
        session.completed = reaches_completion(session)
        if session.user_id is not None:
            users.add(session.user_id)
    for user_id in users:
        analytics.mark_stale(user_id)
    db.session.commit()
    return len(rows), users


def close_stale_sessions(now: datetime | None = None) -> int:
    """Close sessions left open past their maximum length (3 hours when unlimited).

    Safe to run twice or concurrently: rows are claimed with ``FOR UPDATE SKIP LOCKED`` and
    only ``open`` ones are touched. Listened time is clamped as for a completion; the session
    is ended at ``started_at + limit`` and is completed only by the server's listened time
    (``reaches_completion``), never by anything the client said. Returns how many sessions
    were closed.
    """
    now = now or clock.now()
    lengths = db.session.execute(
        select(ListeningSession.max_duration_seconds).distinct()
        .where(ListeningSession.status == OPEN)).scalars().all()
    closed, users = 0, set()
    for length in lengths:
        while True:
            count, batch_users = _close_batch(length, now)
            closed += count
            users |= batch_users
            if count < STALE_BATCH:
                break
    for user_id in users:
        analytics.request_refresh(user_id)
    if closed:
        log.info("closed %d stale listening sessions", closed)
    return closed
