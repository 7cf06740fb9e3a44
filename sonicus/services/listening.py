"""Listening sessions: start within the tier's daily quota, heartbeats, completion, history,
and closing sessions left open.

Quota (race-free on PostgreSQL): ``start_session`` locks the user's ``user_subscriptions`` row
(``SELECT ... FOR UPDATE``) for the whole transaction, then counts today's counted sessions and
inserts in one statement, and commits. Two starts for the same user therefore run one after
the other; other users are not blocked. Tier changes write the same row, so a start never
sees a half-changed tier. On SQLite (the embedded development default) FOR UPDATE is ignored;
writes are serialised by SQLite's own database lock instead.

Listened time, completion and the give-back of an accidental tap are the server's word, by
the rules of ``listened.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import make_transient_to_detached, selectinload

from .. import clock
from ..api_errors import fail, not_found
from ..extensions import db
from ..models import ListeningSession, SoundPackage, Track, User, UserSubscription
from ..models.listening import ABANDONED, ENDED, OPEN
from ..models.subscription import tier_awaiting_payment
from ..pagination import Page, paginate
from ..tiers import (
    TIERS,
    UNLIMITED_SESSION_CLOSE_SECONDS,
    check_daily_quota,
    check_package_access,
)
from . import analytics
from .assignments import assigned_clause
from .catalog import in_catalog
from .listened import clamp_listened, clamp_position, is_accidental_tap, reaches_completion
from .quota import insert_within_quota, today_of
from .subscriptions import insert_default_subscription, tier_in_force
from .transaction import names_a_missing, unit_of_work

log = logging.getLogger(__name__)

STALE_BATCH = 500


def start_session(user_id: int, package_id: int, track_id: int | None = None,
                  mood_before: int | None = None, now: datetime | None = None,
                  client_id: str | None = None) -> ListeningSession:
    """Start a session (see ``start_or_find_session``); the session only."""
    return start_or_find_session(user_id, package_id, track_id, mood_before, now,
                                 client_id)[0]


def start_or_find_session(user_id: int, package_id: int, track_id: int | None = None,
                          mood_before: int | None = None, now: datetime | None = None,
                          client_id: str | None = None) -> tuple[ListeningSession, bool]:
    """Start a session: 404 unknown package/track, 403 when neither the tier nor a live
    assignment opens the package (402 when the tier of a checkout waiting for its payment
    would), 429 quota used today. ``(session, created)``.

    Two statements (and one more with ``client_id``): the first locks the user's subscription
    row for the whole transaction and reads, with it, the user's day settings, the package,
    the track and whether an assignment opens the package; the second counts the day's
    sessions and inserts, only when the count is below the limit (``insert_within_quota``).
    Two starts of one user run one after the other, and the second's count, a statement that
    begins once it holds the lock, sees the first's session. The day settings need no fresher
    read than the lock's: a change of them takes effect only at the next boundary of the day
    (``User.change_day_settings``), so the day a start counts on is the same either way.

    A session started asks for the user's analytics to be refreshed once it has committed
    (``sessions_today`` went up; a live dashboard gets ``analytics.updated``).

    ``client_id`` (the client's uuid) makes a start retry-safe: when the user already has a
    session with it, that session is the answer (``created`` False) and nothing is counted
    again. Under the lock a concurrent start with the same id waits and then finds the first
    one; the unique constraint on (user_id, client_id) is the last word."""
    now = now or clock.now()
    try:
        with unit_of_work():
            context, package, track = _lock_for_start(user_id, package_id, track_id, now)
            if client_id is not None:
                existing = _by_client_id(user_id, client_id)
                if existing is not None:
                    return existing, False
            tier = TIERS[tier_in_force(context, now)]
            if package is None:
                not_found("Package")
            check_package_access(tier.name, package.minimum_tier, context.assigned,
                                 awaiting=tier_awaiting_payment(context))
            if track_id is not None and (track is None or track.package_id != package.id):
                not_found("Track")
            day, resets_at = today_of(context, now)
            values = {
                "user_id": user_id, "package_id": package.id,
                "track_id": None if track is None else track.id, "tier": tier.name,
                "status": OPEN, "started_at": now, "local_day": day,
                "max_duration_seconds": tier.max_session_seconds, "listened_seconds": 0,
                "completed": False, "counts_toward_quota": True, "mood_before": mood_before,
                "client_id": client_id}
            session_id = insert_within_quota(values, tier.name)
            if session_id is None:
                check_daily_quota(tier.name, tier.daily_sessions, resets_at, now)
            session = _as_loaded(session_id, values, package, track)
    except IntegrityError as exc:
        db.session.rollback()
        if names_a_missing(exc, "tracks"):  # an admin removed it since the lock's read
            not_found("Track")
        # Another start with this client id won (only possible without the row lock, as on
        # SQLite): that one is the answer.
        existing = _by_client_id(user_id, client_id) if client_id is not None else None
        if existing is None:
            raise
        return existing, False
    # today's sessions went up: a dashboard left open hears of it (best effort, after the
    # commit; the start's next refresh, at its end at the latest, catches a lost one)
    analytics.request_refresh(user_id)
    return session, True


# What ``subscriptions.tier_in_force`` reads: a start is judged by the tier in force, which a
# trial's, a grace's or a period's end has changed before the expiry job writes it. With
# them, the tier of a checkout waiting for its payment (``tier_awaiting_payment``: a refusal
# it would lift is a 402), read by the same statement.
_DEADLINE_COLUMNS = (UserSubscription.tier, UserSubscription.status,
                     UserSubscription.trial_ends_at, UserSubscription.past_due_since,
                     UserSubscription.current_period_end, UserSubscription.pending_tier,
                     UserSubscription.cancel_at_period_end, UserSubscription.complimentary,
                     UserSubscription.provider, UserSubscription.payment_method_on_file,
                     UserSubscription.checkout_tier)


def _start_context_statement(with_track: bool):
    """The first statement of a start, built once (a start binds ``user_id``, ``package_id``,
    ``at`` and, ``with_track``, ``track_id``): the user's subscription row locked until the
    transaction ends (``FOR UPDATE OF user_subscriptions``: its tier and the deadlines that
    change it), the user's day settings, the package when the catalog shows it (else NULLs),
    the track (else NULLs) and whether a live assignment opens the package to the user."""
    user_id, package_id = bindparam("user_id"), bindparam("package_id")
    stmt = (select(*_DEADLINE_COLUMNS, User.timezone, User.day_start_hour,
                   User.prior_timezone, User.prior_day_start_hour,
                   User.day_settings_effective_at, User.earlier_day_settings,
                   assigned_clause(user_id, package_id, bindparam("at")).label("assigned"),
                   SoundPackage)
            .select_from(UserSubscription)
            .join(User, User.id == UserSubscription.user_id)
            .outerjoin(SoundPackage, and_(SoundPackage.id == package_id, in_catalog())))
    if with_track:
        stmt = stmt.add_columns(Track).outerjoin(Track, Track.id == bindparam("track_id"))
    return (stmt.where(UserSubscription.user_id == user_id)
            .with_for_update(of=UserSubscription).execution_options(populate_existing=True))


_START_CONTEXT = {False: _start_context_statement(False), True: _start_context_statement(True)}


def _lock_for_start(user_id: int, package_id: int, track_id: int | None, now: datetime):
    """Run the start's first statement (``_start_context_statement``), creating the missing
    subscription row first when there is none. ``(row, package, track)``: ``row`` carries the
    tier, the day settings and ``assigned``."""
    stmt = _START_CONTEXT[track_id is not None]
    params = {"user_id": user_id, "package_id": package_id, "at": now, "track_id": track_id}
    row = db.session.execute(stmt, params).first()
    if row is None:
        insert_default_subscription(user_id)
        row = db.session.execute(stmt, params).one()
    return row, row.SoundPackage, (row.Track if track_id is not None else None)


_SESSION_COLUMNS = tuple(ListeningSession.__table__.columns.keys())


def _as_loaded(session_id: int, values: dict, package: SoundPackage,
               track: Track | None) -> ListeningSession:
    """The session just inserted, as the session holds a row it loaded: every column known
    (nothing loads later), its package and track attached (the answer shows both), nothing
    left to flush. Built the way the ORM builds a loaded row (the values straight into the
    instance's state), not through the constructor's change tracking."""
    session = ListeningSession.__mapper__.class_manager.new_instance()
    state = session.__dict__
    state.update(dict.fromkeys(_SESSION_COLUMNS))
    state.update(values, id=session_id, package=package, track=track)
    make_transient_to_detached(session)
    db.session.add(session)
    return session


def _by_client_id(user_id: int, client_id: str) -> ListeningSession | None:
    return db.session.execute(
        select(ListeningSession)
        .options(selectinload(ListeningSession.package), selectinload(ListeningSession.track))
        .where(ListeningSession.user_id == user_id, ListeningSession.client_id == client_id)
        .execution_options(populate_existing=True)).scalar_one_or_none()


def _note_progress(session: ListeningSession, track_id: int | None,
                   position_seconds: int | None, now: datetime) -> None:
    """Record where the listener is: the track (one of the session's package) and the
    position in it. Another track without a position starts at its beginning: a position in
    the track left behind says nothing of this one."""
    if track_id is not None and track_id != session.track_id:
        # FOR KEY SHARE: a track an admin is removing at this moment is waited for and then
        # not found, never referenced by a write the database refuses once it is gone
        track = db.session.execute(
            select(Track).where(Track.id == track_id)
            .with_for_update(read=True, key_share=True)).scalar_one_or_none()
        if track is None or track.package_id != session.package_id:
            not_found("Track")
        session.track = track
        if position_seconds is None and session.position_seconds is not None:
            position_seconds = 0
    if position_seconds is not None:
        session.position_seconds = clamp_position(session, position_seconds)
        session.position_updated_at = now


@dataclass(frozen=True)
class Progress:
    """A heartbeat's answer (``SessionProgressSchema``): the session as stored, and whether the
    claim was cut to the server's figure."""

    session: ListeningSession
    clamped: bool

    def __getattr__(self, name):
        return getattr(self.session, name)


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


def heartbeat(user_id: int, session_id: int, listened_seconds: int,
              now: datetime | None = None, *, track_id: int | None = None,
              position_seconds: int | None = None) -> Progress:
    """Progress: the listened time (clamped, never decreasing) and where the listener is.
    ``clamped`` when the claim was more than the server stores."""
    now = now or clock.now()
    with unit_of_work():
        session = get_session(user_id, session_id, lock=True)
        _ensure_open(session)
        _note_progress(session, track_id, position_seconds, now)
        session.listened_seconds = clamp_listened(session, listened_seconds, now)
        session.last_heartbeat_at = now
    return Progress(session, int(listened_seconds) > session.listened_seconds)


def complete_session(user_id: int, session_id: int, listened_seconds: int, completed: bool,
                     mood_after: int | None = None, note: str | None = None,
                     now: datetime | None = None, *, track_id: int | None = None,
                     position_seconds: int | None = None) -> ListeningSession:
    """End a session. ``completed`` is the client's word, kept as ``client_completed``; the
    session is completed only when the server's listened time reaches 80% of what it can play.
    An accidental tap (ended within 60 s, under 30 s listened) gives the day's quota back; any
    other ending bumps the package's popularity. Analytics are marked stale in the same
    transaction and a refresh is requested after the commit."""
    now = now or clock.now()
    with unit_of_work():
        # the package's row before the session's (its popularity is bumped below): an admin's
        # edit of its tracks locks the package, then moves its sessions' positions
        db.session.execute(
            select(SoundPackage.id).join(ListeningSession,
                                         ListeningSession.package_id == SoundPackage.id)
            .where(ListeningSession.id == session_id, ListeningSession.user_id == user_id)
            .with_for_update(of=SoundPackage, key_share=True))
        session = get_session(user_id, session_id, lock=True)
        _ensure_open(session)
        _note_progress(session, track_id, position_seconds, now)
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
    if is_accidental_tap(session.started_at, now, session.listened_seconds):
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
        if session.last_heartbeat_at is None and session.listened_seconds == 0:
            # started and left without a heartbeat: not a 0-minute listen
            session.end_reason = ABANDONED
            session.completed = False
        else:
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
