"""Operator actions on users, shared by the admin API and the CLI.

Every change locks the user's rows (``SELECT ... FOR UPDATE``), writes its audit entry in the
same transaction and commits once. Suspension closes the user's live sockets after the commit.
"""

from __future__ import annotations

import logging

from sqlalchemy import and_, func, or_, select

from ..envelope import ApiError, not_found
from ..extensions import db
from ..models import ListeningSession, SubscriptionEvent, User, UserSubscription
from ..models.base import utcnow
from ..models.subscription import ACTIVE, TRIALING
from ..tiers import STARTER, TIERS
from . import audit
from .subscriptions import describe as describe_subscription

log = logging.getLogger(__name__)

COMPLIMENTARY_GRANT = "complimentary_grant"
SUSPENDED = "suspended"
SEARCH_SEPARATOR = "\n"


# ---- reading -----------------------------------------------------------------------------

def search_text():
    """Email and display name in one lowercased text, joined by a newline (a search text has
    none, so a match never spans both): the expression the trigram index is built on
    (migration 0003_admin_user_search); keep the two identical."""
    return func.lower(User.email.concat(SEARCH_SEPARATOR)
                      .concat(func.coalesce(User.display_name, "")))


# Trigram indexes serve substrings of 3 characters or more; a shorter query is a prefix of
# the email or of the display name (btree indexes, migration 0004_admin_short_search).
SUBSTRING_MIN_LENGTH = 3


def _escape_like(text: str) -> str:
    return text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search_condition(q: str):
    if len(q) >= SUBSTRING_MIN_LENGTH:
        return search_text().like(f"%{_escape_like(q)}%", escape="\\")
    prefix = f"{_escape_like(q)}%"
    return or_(func.lower(User.email).like(prefix, escape="\\"),
               func.lower(User.display_name).like(prefix, escape="\\"))


def _filtered(statement, q: str | None, tier: str | None, status: str | None):
    if q and q.strip():
        statement = statement.where(_search_condition(q.strip()))
    # (column, wanted, what a user without a subscription row counts as)
    wanted = []
    if tier is not None:
        wanted.append((UserSubscription.tier, tier, STARTER))
    if status is not None and status != SUSPENDED:
        wanted.append((UserSubscription.status, status, ACTIVE))
    if wanted:
        condition = and_(*(column == value for column, value, _ in wanted))
        if all(value == default for _, value, default in wanted):
            statement = statement.outerjoin(
                UserSubscription, UserSubscription.user_id == User.id
            ).where(or_(UserSubscription.id.is_(None), condition))
        else:  # a missing row cannot match: an inner join lets the planner start from it
            statement = statement.join(
                UserSubscription, UserSubscription.user_id == User.id).where(condition)
    if status == SUSPENDED:
        statement = statement.where(User.is_active.is_(False))
    return statement


def list_users(*, q: str | None = None, tier: str | None = None, status: str | None = None,
               page: int = 1, per_page: int = 20) -> tuple[list[dict], int]:
    """One page of users, newest first, with their tier and subscription status; and the total."""
    total = db.session.execute(
        _filtered(select(func.count(User.id)), q, tier, status)).scalar_one()
    users = db.session.execute(
        _filtered(select(User), q, tier, status)
        .order_by(User.id.desc()).limit(per_page).offset((page - 1) * per_page)
    ).scalars().all()
    subs = {}
    if users:
        subs = {s.user_id: s for s in db.session.execute(select(UserSubscription).where(
            UserSubscription.user_id.in_([u.id for u in users]))).scalars()}
    return [_summary(user, subs.get(user.id)) for user in users], total


def _summary(user: User, sub: UserSubscription | None) -> dict:
    return {
        "id": user.id, "email": user.email, "display_name": user.display_name,
        "role": user.role, "is_active": user.is_active,
        "tier": sub.tier if sub is not None else STARTER,
        "subscription_status": sub.status if sub is not None else ACTIVE,
        "created_at": user.created_at,
    }


def find_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        not_found("User")
    return user


def find_users_by_email(email: str) -> list[User]:
    return list(db.session.execute(
        select(User).where(func.lower(User.email) == email.strip().lower()).order_by(User.id)
    ).scalars())


def _subscription_row(user_id: int, *, lock: bool = False) -> UserSubscription | None:
    statement = select(UserSubscription).where(UserSubscription.user_id == user_id)
    if lock:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    return db.session.execute(statement).scalar_one_or_none()


def user_detail(user_id: int) -> dict:
    """Everything an operator needs about one user: subscription, usage today, activity."""
    user = find_user(user_id)
    sub = _subscription_row(user.id) or UserSubscription(
        user_id=user.id, tier=STARTER, status=ACTIVE, complimentary=False, trial_used=False,
        cancel_at_period_end=False, payment_method_on_file=False)
    sessions_total, last_activity = db.session.execute(
        select(func.count(ListeningSession.id), func.max(ListeningSession.started_at))
        .where(ListeningSession.user_id == user.id)).one()
    detail = _summary(user, sub)
    subscription = describe_subscription(user, sub)  # what the user sees, usage included
    detail.update({
        "email_verified": user.email_verified, "timezone": user.timezone,
        "day_start_hour": user.day_start_hour, "updated_at": user.updated_at,
        "subscription": subscription,
        "usage": subscription["usage"],
        "sessions_total": sessions_total,
        "last_activity_at": last_activity,
    })
    return detail


# ---- changing ----------------------------------------------------------------------------

def _subscription_state(sub: UserSubscription) -> dict:
    return {"tier": sub.tier, "status": sub.status, "complimentary": bool(sub.complimentary)}


def _grant_tier(actor: User | None, actor_label: str | None, user: User, tier: str,
                reason: str | None) -> bool:
    """Put ``user`` on ``tier`` now, free of charge. False when already there (no change)."""
    if tier not in TIERS:
        raise ApiError(422, "validation_error", "The request is not valid.",
                       errors=[f"tier: Must be one of: {', '.join(TIERS)}."])
    sub = _subscription_row(user.id, lock=True)
    if sub is None:
        sub = UserSubscription(user_id=user.id, tier=STARTER, status=ACTIVE)
        db.session.add(sub)
        db.session.flush()
    if sub.tier == tier and sub.status == ACTIVE:
        return False
    before = _subscription_state(sub)
    from_tier = sub.tier
    if sub.status == TRIALING:
        sub.trial_ends_at = None
    sub.tier, sub.status = tier, ACTIVE
    sub.complimentary = TIERS[tier].is_paid
    sub.tier_chosen_at = sub.tier_chosen_at or utcnow()
    sub.cancel_at_period_end, sub.pending_tier, sub.past_due_since = False, None, None
    label = actor_label or (actor.email if actor is not None else "system")
    details = {"by": label}
    if reason:
        details["reason"] = reason
    db.session.add(SubscriptionEvent(user_id=user.id, type=COMPLIMENTARY_GRANT,
                                     from_tier=from_tier, to_tier=tier, amount_cents=0,
                                     details=details))
    after = _subscription_state(sub)
    if reason:
        after["reason"] = reason
    audit.record(actor, "user.tier_grant", "user", user.id, before, after,
                 actor_label=actor_label)
    return True


def _set_active(actor: User | None, actor_label: str | None, user: User, active: bool,
                reason: str | None) -> bool:
    if user.is_active == active:
        return False
    after = {"is_active": active}
    if reason:
        after["reason"] = reason
    before = {"is_active": user.is_active}
    user.is_active = active
    audit.record(actor, "user.activate" if active else "user.suspend", "user", user.id,
                 before, after, actor_label=actor_label)
    return True


def update_user(actor: User | None, user_id: int, changes: dict, *,
                actor_label: str | None = None) -> bool:
    """Apply ``tier`` and/or ``is_active`` in one transaction; True when anything changed.

    An administrator may not suspend their own account (409 ``conflict``): nobody would be
    left to undo it through the API.
    """
    user = db.session.execute(
        select(User).where(User.id == user_id).with_for_update()
        .execution_options(populate_existing=True)).scalar_one_or_none()
    if user is None:
        db.session.rollback()
        not_found("User")
    if (actor is not None and actor.id == user.id and changes.get("is_active") is False):
        db.session.rollback()
        raise ApiError(409, "conflict", "You cannot suspend your own account.")
    reason = changes.get("reason")
    changed = False
    suspended = False
    try:
        if "is_active" in changes:
            if _set_active(actor, actor_label, user, bool(changes["is_active"]), reason):
                changed = True
                suspended = not user.is_active
        if "tier" in changes:
            changed = _grant_tier(actor, actor_label, user, changes["tier"], reason) or changed
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    if suspended:
        close_user_sockets(user.id)
    return changed


def close_user_sockets(user_id: int) -> None:
    """After a suspension: ask the live-updates layer to close the user's sockets, if present."""
    try:
        from .. import realtime
    except ImportError:  # pragma: no cover
        return
    hook = getattr(realtime, "disconnect_user", None)
    if hook is None:
        return
    try:
        hook(user_id)
    except Exception as exc:  # sockets are best effort; the suspension is committed
        log.warning("closing sockets of user %s failed: %s", user_id, type(exc).__name__)


def grant_tier_from_cli(user: User, tier: str, actor_label: str = "cli") -> None:
    """A complimentary tier from an operator tool (CLI, development tokens)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")
    update_user(None, user.id, {"tier": tier}, actor_label=actor_label)


# ---- audit log ---------------------------------------------------------------------------

def list_audit(*, action: str | None = None, target_type: str | None = None,
               target_id: str | None = None, actor_id: int | None = None,
               page: int = 1, per_page: int = 20):
    from ..models import AuditLog

    statement = select(AuditLog)
    count = select(func.count(AuditLog.id))
    for column, value in ((AuditLog.action, action), (AuditLog.target_type, target_type),
                          (AuditLog.target_id, target_id), (AuditLog.actor_id, actor_id)):
        if value is not None:
            statement, count = statement.where(column == value), count.where(column == value)
    total = db.session.execute(count).scalar_one()
    entries = db.session.execute(
        statement.order_by(AuditLog.at.desc(), AuditLog.id.desc())
        .limit(per_page).offset((page - 1) * per_page)).scalars().all()
    return entries, total
