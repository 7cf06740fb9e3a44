"""Local users: sync from token claims, profile changes, export and erasure."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flask import current_app
from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload, selectinload

from .. import clock
from ..api_errors import ApiError, not_found
from ..extensions import db
from ..models import (
    AuditLog,
    ListeningSession,
    OfflineLicence,
    PackageAssignment,
    PushSubscription,
    ReminderDelivery,
    ReminderPreferences,
    SubscriptionEvent,
    User,
    UserAnalytics,
    UserOutcomeProfile,
    UserPackageOutcome,
    UserSoundPackage,
    UserSubscription,
)
from ..models.user import DEFAULT_PREFERENCES, ROLE_ADMIN, ROLE_USER, merge_preferences
from ..realtime.publish import CLOSE_INVALID_TOKEN, close_user_sockets, publish_settings_change
from ..validation import without_bidi_controls
from . import erasure, erasure_keys
from .analytics_cache import invalidate_user_analytics, settings_stamp, settings_version
from .person_emails import adopt_erased_emails, note_verified_email
from .recommendation_model import request_rebuild_after_erasure
from .reminder_settings import get_reminder_preferences
from .subscriptions import ended_by_a_grant, lock_or_create_subscription, settle_due_change
from .transaction import account_gone, read_one_moment, unit_of_work


@dataclass(frozen=True)
class EarlierErasure:
    """A tombstone of an earlier, erased account of the same subject or email."""

    erased_at: datetime
    trial_used: bool
    matched_by: list


@dataclass(frozen=True)
class AfterErasure:
    """What an erasure keeps, and why (a fixed statement)."""

    statement: str
    kept: tuple


@dataclass(frozen=True)
class UserExport:
    user: User
    preferences: dict
    subscription: UserSubscription | None
    subscription_events: list
    library: list
    sessions: list
    analytics: dict | None
    downloads: list = ()
    assignments: list = ()
    earlier_day_settings: list = ()
    reminder_preferences: dict | None = None
    push_subscriptions: list = ()
    reminders_sent: list = ()
    earlier_erasures: list = ()
    after_erasure: AfterErasure | None = None


def _claims_view(claims: dict) -> dict:
    groups = claims.get("groups") or []
    if not isinstance(groups, list):
        groups = []
    groups = [g for g in groups if isinstance(g, str)]
    name = claims.get("name") or claims.get("preferred_username")
    if isinstance(name, str):  # shown as the display name: nothing that reorders it
        name = without_bidi_controls(name)
    email = claims.get("email") or ""
    return {
        "email": email.strip()[:320] if isinstance(email, str) else "",
        "email_verified": claims.get("email_verified") is True,
        "name": name.strip()[:120] if isinstance(name, str) and name.strip() else None,
        "groups": groups,
        "issued_at": _issued_at(claims.get("iat")),
    }


def _issued_at(iat) -> datetime | None:
    """The token's ``iat`` as an instant, never later than now (a provider's clock ahead must
    not freeze the claims); None when absent or not a sane number."""
    if isinstance(iat, bool) or not isinstance(iat, int | float):
        return None
    try:
        # Real time, as the token's own times are checked (not the injectable business clock).
        return datetime.fromtimestamp(min(int(iat), int(time.time())), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _older_than_applied(user: User, view: dict) -> bool:
    """The token was issued before the one whose claims the account holds: its claims (an
    admin group since removed, an old email) are not written back."""
    issued_at, applied = view["issued_at"], user.claims_issued_at
    return issued_at is not None and applied is not None and issued_at < applied


def sync_user_from_claims(claims: dict, before_sign_up=None
                          ) -> tuple[User, UserSubscription | None]:
    """Find or create the user for these claims, writing only when something changed; the
    user and their subscription row. 403 for a suspended account or a missing group.
    ``before_sign_up(subject)`` is called before an account is created (it may raise)."""
    cfg = current_app.config
    view = _claims_view(claims)
    admin_group, required_group = cfg["OIDC_ADMIN_GROUP"], cfg["OIDC_REQUIRED_GROUP"]
    is_admin = admin_group in view["groups"]
    if required_group and required_group not in view["groups"] and not is_admin:
        raise ApiError(403, "forbidden", "Your account is not allowed to use Sonicus.")
    role = ROLE_ADMIN if is_admin else ROLE_USER
    user = _find_by_subject(claims["sub"])
    if user is None:
        if before_sign_up is not None:
            before_sign_up(claims["sub"])
        user = _create_user(claims["sub"], view, role)
    elif _differs(user, view, role) and not _older_than_applied(user, view):
        with unit_of_work() as work:
            user = _lock_user(user.id)
            if not _older_than_applied(user, view):  # a newer token's may have come since
                _apply_claims(user, view, role)
                work.changed_user(user.id)
    if not user.is_active:
        raise ApiError(403, "account_suspended", "This account is suspended.")
    # A deadline passed that the expiry job has not written yet: shown as it is in force.
    return user, settle_due_change(user.subscription)


def _find_by_subject(subject: str) -> User | None:
    return db.session.execute(
        select(User).options(joinedload(User.subscription)).where(User.oidc_sub == subject)
    ).scalar_one_or_none()


def _create_user(subject: str, view: dict, role: str) -> User:
    user = User(oidc_sub=subject, email=view["email"], email_verified=view["email_verified"],
                display_name=view["name"], oidc_name=view["name"], role=role,
                claims_issued_at=view["issued_at"],
                preferences=dict(DEFAULT_PREFERENCES), timezone="UTC", day_start_hour=0,
                is_active=True)
    try:
        with unit_of_work():
            db.session.add(user)
            db.session.flush()
            sub = lock_or_create_subscription(user.id)
            # A person who erased an earlier account after a trial is shown it as used.
            sub.trial_used = erasure.trial_used_before(subject, view["email"])
            if user.email_verified:
                note_verified_email(user.id, user.email)
            adopt_erased_emails(user.id, subject)
            erasure_keys.adopt_erasure_keys(user.id, subject)
            db.session.add(SubscriptionEvent(user_id=user.id, type="signed_up", from_tier=None,
                                             to_tier="starter", amount_cents=0,
                                             at=clock.now()))
    except IntegrityError:  # a concurrent first request created it
        pass
    return _find_by_subject(subject)


def _differs(user: User, view: dict, role: str) -> bool:
    return (user.email != view["email"] or user.email_verified != view["email_verified"]
            or user.oidc_name != view["name"] or user.role != role)


def _apply_claims(user: User, view: dict, role: str) -> None:
    user.email, user.email_verified, user.role = view["email"], view["email_verified"], role
    if user.email_verified:  # it counts for the account from now on, whatever it becomes
        note_verified_email(user.id, user.email)
    if view["issued_at"] is not None:
        user.claims_issued_at = view["issued_at"]
    if view["name"] != user.oidc_name:
        # a new name in the token overwrites an edit made in the profile
        user.oidc_name = user.display_name = view["name"]


def _lock_user(user_id: int) -> User:
    """The user's row, locked against other changes of it until the transaction ends. ``FOR
    NO KEY UPDATE``, as the change (no delete, no new id) needs: rows that merely name the user
    (a session, a subscription, an idempotency key's claim) are inserted meanwhile instead of
    waiting behind it (README: "Retry-safe writes")."""
    user = db.session.execute(
        select(User).where(User.id == user_id).options(selectinload(User.subscription))
        .execution_options(populate_existing=True)
        .with_for_update(key_share=True)).scalar_one_or_none()
    if user is None:
        not_found("User")
    return user


def update_profile(user_id: int, changes: dict, now: datetime | None = None) -> User:
    """Change display name, time zone, day start hour or preferences (merged).

    New day settings show at once and take effect at the next boundary of the user's day as
    it is now (``User.change_day_settings``): changing the day never gives quota back."""
    now = now or clock.now()
    version = None
    with unit_of_work() as work:
        user = _lock_user(user_id)
        before = settings_stamp(user)
        if "display_name" in changes:
            user.display_name = changes["display_name"]
        if "timezone" in changes or "day_start_hour" in changes:
            user.change_day_settings(changes.get("timezone", user.timezone),
                                     changes.get("day_start_hour", user.day_start_hour), now)
        if "preferences" in changes:
            user.preferences = merge_preferences(user.preferences, changes["preferences"])
        if settings_stamp(user) != before:
            # a new settings version, later than any before even if clocks differ
            user.updated_at = max(datetime.now(UTC),
                                  user.updated_at + timedelta(microseconds=1))
            version = settings_version(user)
        work.changed_user(user.id)
    invalidate_user_analytics(user_id)
    if version is not None:  # live figures computed under the old settings are dropped
        publish_settings_change(user_id, version)
    return user


def export_user_data(user_id: int) -> UserExport:
    """Everything stored about the user, as one document (``ExportSchema``), as it stood at
    one moment (``read_one_moment``; the caller ends that transaction once the document is
    written out: ``end_reads``)."""
    def rows(model, order):
        return list(db.session.execute(
            select(model).where(model.user_id == user_id).order_by(order)).scalars())

    read_one_moment()  # not half erased by an erasure that commits meanwhile
    user = db.session.get(User, user_id)
    if user is None:
        not_found("User")
    analytics = db.session.get(UserAnalytics, user_id)
    return UserExport(
        user=user, preferences=user.merged_preferences,
        subscription=db.session.execute(select(UserSubscription).where(
            UserSubscription.user_id == user_id)).scalar_one_or_none(),
        subscription_events=rows(SubscriptionEvent, SubscriptionEvent.at),
        library=rows(UserSoundPackage, UserSoundPackage.assigned_at),
        sessions=rows(ListeningSession, ListeningSession.started_at),
        downloads=rows(OfflineLicence, OfflineLicence.granted_at),
        assignments=rows(PackageAssignment, PackageAssignment.assigned_at),
        earlier_day_settings=_replaced_day_settings(user),
        analytics=analytics.data if analytics else None,
        reminder_preferences=get_reminder_preferences(user_id),
        push_subscriptions=rows(PushSubscription, PushSubscription.id),
        reminders_sent=rows(ReminderDelivery, ReminderDelivery.local_day),
        earlier_erasures=_earlier_erasures(user),
        after_erasure=AfterErasure(erasure.ERASURE_STATEMENT, erasure.KEPT_AFTER_ERASURE))


def end_reads() -> None:
    """End a transaction that only read (an export's one moment)."""
    db.session.rollback()


def _replaced_day_settings(user: User) -> list[dict]:
    """The day settings the user replaced, as remembered (``earlier_day_settings``), oldest
    first, then the prior ones (``until``: when they stop or stopped counting)."""
    replaced = [dict(earlier) for earlier in user.earlier_day_settings or ()]
    if (user.day_settings_effective_at is not None and user.prior_timezone is not None
            and user.prior_day_start_hour is not None):
        replaced.append({"until": user.day_settings_effective_at.astimezone(UTC).isoformat(),
                         "timezone": user.prior_timezone,
                         "day_start_hour": user.prior_day_start_hour})
    return replaced


def _earlier_erasures(user: User) -> list[EarlierErasure]:
    """One entry per erasure (its tombstones, one per address, taken together)."""
    subject = erasure.subject_hash(user.oidc_sub)
    emails = set(erasure.tombstone_email_hashes(user.email))
    erasures: dict = {}
    for t in erasure.tombstones_of(user.oidc_sub, user.email):
        at, used, matched = erasures.get((t.subject_hash, t.erased_at), (t.erased_at, False, []))
        matched += [name for name, match in (("subject", t.subject_hash == subject),
                                             ("email", t.email_hash in emails))
                    if match and name not in matched]
        erasures[(t.subject_hash, t.erased_at)] = (at, used or bool(t.trial_used), matched)
    return [EarlierErasure(at, used, sorted(matched, key=("subject", "email").index))
            for at, used, matched in erasures.values()]


def erase_user(user_id: int, claim: int | None = None) -> None:
    """Erase the account and personal data, in one transaction: listening sessions are kept
    anonymised; a tombstone of the identity keeps the trial one per person; a provider
    subscription is owed a cancellation (an outbox row), tried right after the commit and
    retried by ``erasure.process_owed_cancellations`` until the provider confirms. The
    subscription row is locked first, as every change of a user's money does. ``claim``: the
    request's ``Idempotency-Key`` row, kept past the account for its retries
    (``erasure_keys``)."""
    now = clock.now()
    owed_id = None
    with unit_of_work() as work:
        sub = db.session.execute(
            select(UserSubscription).where(UserSubscription.user_id == user_id)
            .with_for_update().execution_options(populate_existing=True)).scalar_one_or_none()
        # FOR NO KEY UPDATE, as every change of a user: a request holding one of the
        # sessions anonymised below (a session ending) may still insert a row naming the
        # user (its first analytics row) and commit, instead of waiting for this transaction
        # while it waits for that request (a deadlock, one of them failed).
        user = db.session.execute(
            select(User).where(User.id == user_id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)).scalar_one_or_none()
        if user is None:
            raise account_gone()  # erased already (a second request, or another process)
        checkout = (sub.provider, sub.checkout_session_id) if sub is not None else (None, None)
        erasure.add_tombstone(user, sub, now)
        erasure.scrub_billing_events(sub, user.email if user.email_verified else None)
        owed = erasure.owe_cancellation(sub, now,
                                        ended=sub is not None and ended_by_a_grant(sub))
        if owed is not None:
            owed_id = owed.id
        db.session.execute(
            update(ListeningSession).where(ListeningSession.user_id == user_id)
            .values(user_id=None, note=None, mood_before=None, mood_after=None,
                    client_id=None))
        # Now FOR UPDATE: what named the user meanwhile has committed, and nothing more will
        # (an admin's audit entry made from another tab is anonymised below, not left with
        # the email once the account is gone).
        db.session.execute(select(User.id).where(User.id == user_id).with_for_update())
        erasure.forget_grants_by(user_id)  # the grants they made as an administrator
        db.session.execute(update(AuditLog).where(AuditLog.actor_id == user_id)
                           .values(actor_id=None, actor_label=erasure.ERASED_ACTOR))
        # Their per-package rows are what the model's group figures were built from.
        in_outcomes = db.session.execute(select(exists().where(
            UserPackageOutcome.user_id == user_id))).scalar_one()
        for model in (UserSoundPackage, PackageAssignment, OfflineLicence, SubscriptionEvent,
                      UserSubscription, UserAnalytics, PushSubscription, ReminderDelivery,
                      ReminderPreferences, UserPackageOutcome, UserOutcomeProfile):
            db.session.execute(delete(model).where(model.user_id == user_id))
        erasure_keys.keep_past_erasure(user_id, claim, user.oidc_sub)
        db.session.execute(delete(User).where(User.id == user_id))
        work.changed_user(user_id)
    invalidate_user_analytics(user_id)
    if in_outcomes:  # their moods leave everyone else's recommendations too
        request_rebuild_after_erasure()
    # Its open sockets belong to no account now: closed everywhere, as a sign-in that ended.
    close_user_sockets(user_id, CLOSE_INVALID_TOKEN, "account erased")
    erasure.expire_open_checkout(*checkout)
    if owed_id is not None:
        erasure.attempt_owed_cancellation(owed_id)
