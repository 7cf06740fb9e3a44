"""What a listening session counts: THE rules of listened time, completion and the give-back
of an accidental tap, shared by live sessions (``listening.py``) and offline uploads
(``offline_sync.py``).

- Listened time is always the server's number: the client's claim is clamped by the wall time
  since the start, the track's length (the package's when no track was chosen) and the tier's
  maximum length, and never decreases.
- Completion is the server's word too: a session is ``completed`` only when its listened time
  reaches 80% of its playable length (``reaches_completion``); what the client said is kept as
  ``client_completed`` and decides nothing.
- An accidental tap (ended within 60 s with under 30 s listened) costs no quota.
- A place to resume is no longer one once the package has been heard to completion in a
  session started after it (``finished_since``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists
from sqlalchemy.orm import aliased

from ..models import ListeningSession

# An accidental tap: ended within this many seconds with less than that listened.
GIVE_BACK_WITHIN_SECONDS = 60
GIVE_BACK_UNDER_LISTENED_SECONDS = 30


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


def listened_caps(session: ListeningSession, now: datetime) -> list[int]:
    """What listened time cannot exceed: the wall time since the start, the content's length
    and the tier's maximum length."""
    caps = [max(0, int((now - session.started_at).total_seconds()))]
    length = content_seconds(session)
    if length is not None:
        caps.append(length)
    if session.max_duration_seconds is not None:
        caps.append(session.max_duration_seconds)
    return caps


def clamp_listened(session: ListeningSession, claimed: int, now: datetime) -> int:
    """The server's listened seconds: the claim capped by wall time, content and tier length,
    and never below what was already recorded."""
    return max(session.listened_seconds,
               min([max(0, int(claimed)), *listened_caps(session, now)]))


def clamp_position(session: ListeningSession, position: int) -> int:
    """A resume position within the content being played."""
    length = content_seconds(session)
    position = max(0, int(position))
    return min(position, length) if length is not None else position


def is_accidental_tap(started_at: datetime, ended_at: datetime, listened_seconds: int) -> bool:
    """THE give-back rule: ended within 60 s with under 30 s listened costs no quota."""
    return ((ended_at - started_at).total_seconds() <= GIVE_BACK_WITHIN_SECONDS
            and listened_seconds < GIVE_BACK_UNDER_LISTENED_SECONDS)


def finished_since(session) -> object:
    """SQL: the listener has completed the package of ``session`` (the ``ListeningSession``
    entity or an alias of it) in a session started after it, so its position is no longer a
    place to resume (the dashboard's ``continue_listening``, ``GET /api/user/playback``)."""
    later = aliased(ListeningSession)
    return exists().where(later.user_id == session.user_id,
                          later.package_id == session.package_id,
                          later.completed.is_(True), later.started_at > session.started_at)
