"""Reminder settings: the caller's reminder preferences and the push subscriptions of their
browsers (API.md, Reminders). Who is due a reminder is ``services.reminder_claims``; the
periodic job that sends the reminders is ``services.reminders``.

A reminder time is ``HH:MM`` or "smart" (the local hour at which the user most often starts
sessions they complete, ``DEFAULT_SMART_MINUTE`` without data); a user keeps at most
``MAX_SUBSCRIPTIONS_PER_USER`` subscriptions.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select

from .. import clock
from ..api_errors import ApiError
from ..extensions import db
from ..models import User
from ..models.reminders import (
    ALL_DAYS_MASK,
    WEEKDAYS,
    PushSubscription,
    ReminderPreferences,
    days_to_mask,
    mask_to_days,
)
from . import webpush
from .transaction import account_gone, dialect_insert, unit_of_work

DEFAULT_SMART_MINUTE = 21 * 60
MAX_SUBSCRIPTIONS_PER_USER = 10  # devices; the least recently subscribed goes first
DEFAULTS = {"enabled": False, "time": "smart", "days": list(WEEKDAYS), "quiet_start": None,
            "quiet_end": None, "weekly_recap": True}


def minute_to_text(minute: int | None) -> str | None:
    return None if minute is None else f"{minute // 60:02d}:{minute % 60:02d}"


def text_to_minute(value: str | None) -> int | None:
    if value is None:
        return None
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


# ---- preferences ------------------------------------------------------------------------------

def _preferences_view(row: ReminderPreferences | None) -> dict:
    if row is None:
        return {**DEFAULTS, "smart_time": minute_to_text(DEFAULT_SMART_MINUTE)}
    return {
        "enabled": row.enabled,
        "time": "smart" if row.remind_minute is None else minute_to_text(row.remind_minute),
        "days": mask_to_days(row.days_mask),
        "quiet_start": minute_to_text(row.quiet_start_minute),
        "quiet_end": minute_to_text(row.quiet_end_minute),
        "weekly_recap": row.weekly_recap,
        "smart_time": minute_to_text(row.smart_minute if row.smart_minute is not None
                                     else DEFAULT_SMART_MINUTE),
    }


def get_reminder_preferences(user_id: int) -> dict:
    return _preferences_view(db.session.get(ReminderPreferences, user_id))


def update_reminder_preferences(user_id: int, changes: dict) -> dict:
    """Change the caller's reminder preferences (fields not given keep their value)."""
    with unit_of_work():
        db.session.execute(dialect_insert()(ReminderPreferences).values(
            user_id=user_id, enabled=False, days_mask=ALL_DAYS_MASK, weekly_recap=True,
            updated_at=clock.now()).on_conflict_do_nothing())
        row = db.session.execute(
            select(ReminderPreferences).where(ReminderPreferences.user_id == user_id)
            .with_for_update().execution_options(populate_existing=True)).scalar_one()
        if "enabled" in changes:
            row.enabled = changes["enabled"]
        if "time" in changes:
            smart = changes["time"] == "smart"
            if smart and row.remind_minute is not None:
                row.smart_computed_at = None  # computed by the next run of the job
            row.remind_minute = None if smart else text_to_minute(changes["time"])
        if "days" in changes:
            row.days_mask = days_to_mask(changes["days"])
        if "quiet_start" in changes:
            row.quiet_start_minute = text_to_minute(changes["quiet_start"])
            row.quiet_end_minute = text_to_minute(changes["quiet_end"])
        if "weekly_recap" in changes:
            row.weekly_recap = changes["weekly_recap"]
        row.updated_at = clock.now()
        return _preferences_view(row)


# ---- push subscriptions -----------------------------------------------------------------------

def _lock_account(user_id: int) -> None:
    """The user's row, locked until the transaction ends, so that one user's subscriptions
    saved at the same moment are trimmed to the cap one after the other (each sees the
    others' new rows); ``FOR NO KEY UPDATE``, as every change of a user: rows that reference
    the user may still be written meanwhile. An account erased since sign-in is 404."""
    found = db.session.execute(select(User.id).where(User.id == user_id)
                               .with_for_update(key_share=True)).scalar_one_or_none()
    if found is None:
        raise account_gone()


def save_push_subscription(user_id: int, endpoint: str, p256dh: str, auth: str,
                           expires_at: datetime | None = None) -> tuple[int, bool]:
    """Store the caller's browser subscription; ``(id, created)``. The same endpoint again
    updates its keys (``created`` False when it was already the caller's); an endpoint another
    account subscribed on the same browser moves to the caller (the browser's last sign-in).
    The endpoint is stored and looked up in its one spelling (``webpush.normalized_endpoint``:
    ``https://FCM.googleapis.com.:443/x`` is the device of ``https://fcm.googleapis.com/x``)."""
    endpoint = webpush.normalized_endpoint(endpoint)
    now = clock.now()
    values = {"user_id": user_id, "p256dh": p256dh, "auth": auth, "expires_at": expires_at,
              "updated_at": now}
    with unit_of_work():
        _lock_account(user_id)
        row = db.session.execute(
            select(PushSubscription).where(PushSubscription.endpoint == endpoint)
            .with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
        if row is None:
            new_id = db.session.execute(
                dialect_insert()(PushSubscription)
                .values(endpoint=endpoint, created_at=now, **values)
                .on_conflict_do_nothing().returning(PushSubscription.id)).scalar()
            if new_id is None:  # another request stored it a moment ago: update that one
                row = db.session.execute(
                    select(PushSubscription).where(PushSubscription.endpoint == endpoint)
                    .with_for_update()
                    .execution_options(populate_existing=True)).scalar_one()
        created = row is None or row.user_id != user_id
        if row is not None:
            for name, value in values.items():
                setattr(row, name, value)
            new_id = row.id
        db.session.flush()
        keep = (select(PushSubscription.id).where(PushSubscription.user_id == user_id)
                .order_by(PushSubscription.updated_at.desc(), PushSubscription.id.desc())
                .limit(MAX_SUBSCRIPTIONS_PER_USER))
        db.session.execute(delete(PushSubscription).where(
            PushSubscription.user_id == user_id, PushSubscription.id.not_in(keep)))
        return new_id, created


def delete_push_subscription(user_id: int, subscription_id: int) -> None:
    """Forget one of the caller's subscriptions; another user's id is 404."""
    with unit_of_work():
        gone = db.session.execute(delete(PushSubscription).where(
            PushSubscription.id == subscription_id, PushSubscription.user_id == user_id))
        if gone.rowcount == 0:
            raise ApiError(404, "not_found", "Push subscription not found.")

