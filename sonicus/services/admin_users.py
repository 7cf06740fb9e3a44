"""Operator actions on users, shared by the admin API and the CLI.

Every change locks the user's rows (``SELECT ... FOR UPDATE``; the user's own row ``FOR NO KEY
UPDATE``, which rows naming the user do not wait for; the subscription row, when a tier is
granted, before the user's, as the erasure does), writes its audit entry in the same
transaction and commits once. Suspension closes the user's live sockets after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from .. import clock
from ..api_errors import ApiError, not_found
from ..extensions import db
from ..models import AuditLog, ListeningSession, User, UserSubscription
from ..models.subscription import ACTIVE, TRIALING
from ..models.user import email_key, email_search_key
from ..pagination import Page, paginate
from ..realtime.publish import close_user_sockets
from ..tiers import STARTER, TIERS
from . import audit
from .subscriptions import (
    due_change,
    get_subscription,
    grant_tier,
    lock_or_create_subscription,
    overview,
    settle_due_change,
    tier_in_force,
)
from .subscriptions.expiry import apply_due_deadlines, deadline_passed, in_force_columns
from .transaction import unit_of_work

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


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _search_condition(q: str):
    """The email or the display name as written (lowercased), or the email as it is compared
    (``email_key``: another case, Unicode form or IDN spelling of the address finds it)."""
    typed, key = _like_literal(q.lower()), _like_literal(email_search_key(q))
    if len(q) >= SUBSTRING_MIN_LENGTH:
        return or_(search_text().like(f"%{typed}%", escape="\\"),
                   User.email_key.like(f"%{key}%", escape="\\"))
    return or_(func.lower(User.email).like(f"{typed}%", escape="\\"),
               func.lower(User.display_name).like(f"{typed}%", escape="\\"),
               User.email_key.like(f"{key}%", escape="\\"))


def _filtered(statement, q: str | None, tier: str | None, status: str | None,
              now: datetime):
    """``tier`` and ``status`` are the ones in force at ``now``, as the rows show them
    (``in_force``): a row is a candidate when it stores them or when a deadline of it has
    passed (indexed columns), and is listed when what is in force matches."""
    if q and q.strip():
        statement = statement.where(_search_condition(q.strip()))
    tier_shown, status_shown = in_force_columns(now)
    # (stored column, shown, wanted, what a user without a subscription row counts as)
    wanted = []
    if tier is not None:
        wanted.append((UserSubscription.tier, tier_shown, tier, STARTER))
    if status is not None and status != SUSPENDED:
        wanted.append((UserSubscription.status, status_shown, status, ACTIVE))
    if wanted:
        condition = and_(*(and_(or_(stored == value, deadline_passed(now)), shown == value)
                           for stored, shown, value, _ in wanted))
        if all(value == default for _, _, value, default in wanted):
            statement = statement.outerjoin(
                UserSubscription, UserSubscription.user_id == User.id
            ).where(or_(UserSubscription.id.is_(None), condition))
        else:  # a missing row cannot match: an inner join lets the planner start from it
            statement = statement.join(
                UserSubscription, UserSubscription.user_id == User.id).where(condition)
    if status == SUSPENDED:
        statement = statement.where(User.is_active.is_(False))
    return statement


@dataclass(frozen=True)
class AdminUserView:
    """A user as an operator sees them (``AdminUserSummarySchema``, ``...DetailSchema``)."""

    user: User
    tier: str
    subscription_status: str
    subscription: object = None
    usage: object = None
    sessions_total: int = 0
    last_activity_at: datetime | None = None

    def __getattr__(self, name):
        return getattr(self.user, name)

    @classmethod
    def of(cls, user: User, sub: UserSubscription | None, now: datetime | None = None,
           **detail) -> AdminUserView:
        """``user`` with the tier and status in force at ``now`` (``in_force``)."""
        tier, status = in_force(sub, now or clock.now())
        return cls(user, tier, status, **detail)


def in_force(sub: UserSubscription | None, now: datetime) -> tuple[str, str]:
    """The tier and status in force at ``now``, read from the row without writing: where a
    deadline has passed that the expiry job has not written yet (a trial's or grace's end, a
    cancel or downgrade at a period's end), ``tier_in_force`` (what sessions are judged by) and
    the status the job will write (``active``; a downgrade keeps the row's)."""
    if sub is None:
        return STARTER, ACTIVE
    if due_change(sub, now) is None:
        return sub.tier, sub.status
    tier = tier_in_force(sub, now)
    if tier == STARTER or sub.status == TRIALING:
        return tier, ACTIVE
    return tier, sub.status


def list_users(args: dict) -> Page:
    """One page of users, newest first, with their tier and subscription status.

    ``args``: ``q`` (email or name), ``tier``, ``status``, ``page``, ``per_page``."""
    q, tier, status = args.get("q"), args.get("tier"), args.get("status")
    page, per_page = args["page"], args["per_page"]
    now = clock.now()  # one instant for the page: its filter and its rows agree
    total = db.session.execute(
        _filtered(select(func.count(User.id)), q, tier, status, now)).scalar_one()
    users = db.session.execute(
        _filtered(select(User), q, tier, status, now)
        .order_by(User.id.desc()).limit(per_page).offset((page - 1) * per_page)
    ).scalars().all()
    subs = {}
    if users:
        subs = {s.user_id: s for s in db.session.execute(select(UserSubscription).where(
            UserSubscription.user_id.in_([u.id for u in users]))).scalars()}
    # nothing written, no query per user
    return Page([AdminUserView.of(user, subs.get(user.id), now) for user in users], total,
                page, per_page)


def find_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        not_found("User")
    return user


def find_users_by_email(email: str) -> list[User]:
    return list(db.session.execute(
        select(User).where(User.email_key == email_key(email)).order_by(User.id)
    ).scalars())


def user_detail(user_id: int, *, settle: bool = True) -> AdminUserView:
    """Everything an operator needs about one user: subscription, usage today, activity.

    The subscription as it is in force, as the user's own view shows it: a deadline passed
    that the expiry job has not written yet is applied first (``settle_due_change``, what a
    sign-in runs). ``settle=False``: inside a unit of work that has applied them already."""
    user = find_user(user_id)
    sub = get_subscription(user)
    if settle:
        sub = settle_due_change(sub)
    sessions_total, last_activity = db.session.execute(
        select(func.count(ListeningSession.id), func.max(ListeningSession.started_at))
        .where(ListeningSession.user_id == user.id)).one()
    subscription = overview(user, sub)  # what the user sees, usage included
    return AdminUserView.of(user, sub, subscription=subscription,
                            usage=subscription.usage, sessions_total=sessions_total,
                            last_activity_at=last_activity)


# ---- changing ----------------------------------------------------------------------------

def _subscription_state(sub: UserSubscription) -> dict:
    return {"tier": sub.tier, "status": sub.status, "complimentary": bool(sub.complimentary)}


def _grant_tier(actor, actor_label: str | None, user: User, tier: str,
                reason: str | None) -> bool:
    """Put ``user`` on ``tier`` now, free of charge (``subscriptions.grant_tier``: what it does
    to the user's own billing). False when already there (no change)."""
    if tier not in TIERS:
        raise ApiError(422, "validation_error", "The request is not valid.",
                       errors=[f"tier: Must be one of: {', '.join(TIERS)}."])
    sub = lock_or_create_subscription(user.id)  # locked already, unless it was missing
    before = _subscription_state(sub)
    label = actor_label or (actor.email if actor is not None else "system")
    if not grant_tier(sub, tier, clock.now(), by=label, reason=reason):
        return False
    after = {**_subscription_state(sub), **({"reason": reason} if reason else {})}
    audit.record(actor, "user.tier_grant", "user", user.id, before, after,
                 actor_label=actor_label)
    return True


def _set_active(actor, actor_label: str | None, user: User, active: bool,
                reason: str | None) -> bool:
    if user.is_active == active:
        return False
    after = {"is_active": active, **({"reason": reason} if reason else {})}
    before = {"is_active": user.is_active}
    user.is_active = active
    audit.record(actor, "user.activate" if active else "user.suspend", "user", user.id,
                 before, after, actor_label=actor_label)
    return True


def _check_status_change(actor, user: User, changes: dict) -> None:
    """Refuse (409 ``conflict``) what the admin API (``actor`` given) may not do to an account's
    status: suspend the caller's own account, or suspend or reactivate another
    administrator's. Administrators' accounts are the operator's (``sonicus users
    suspend|activate``): otherwise two administrators could suspend each other and leave the
    platform with none, and one taken over could lock every other one out. ``user`` is locked
    (its role read under the lock, so a concurrent sign-in changing it waits)."""
    if actor is None or "is_active" not in changes:
        return
    if actor.id == user.id:
        if changes["is_active"] is False:
            raise ApiError(409, "conflict", "You cannot suspend your own account.")
        return
    if user.is_admin and bool(changes["is_active"]) != user.is_active:
        raise ApiError(409, "conflict",
                       "An administrator's account is suspended or reactivated by an operator "
                       "(sonicus users suspend|activate), not through the admin API.")


def update_user(actor, user_id: int, changes: dict, *, actor_label: str | None = None) -> bool:
    """Apply ``tier`` and/or ``is_active`` in one transaction; True when anything changed.

    Through the admin API (``actor`` given) an administrator may not suspend their own account
    nor suspend or reactivate another administrator's (409 ``conflict``,
    ``_check_status_change``): the operator's CLI (``actor`` None) does. A suspension closes
    the user's sockets after the commit.
    """
    return _update_user(actor, user_id, changes, actor_label)[0]


def update_user_with_detail(actor, user_id: int, changes: dict) -> tuple[bool, AdminUserView]:
    """``update_user``, and the user's detail as the change left it, read inside the same
    transaction: the answer needs nothing from the database after the commit."""
    return _update_user(actor, user_id, changes, None, with_detail=True)


def _update_user(actor, user_id: int, changes: dict, actor_label: str | None, *,
                 with_detail: bool = False) -> tuple[bool, AdminUserView | None]:
    reason = changes.get("reason")
    changed = suspended = False
    detail = None
    with unit_of_work() as work:
        if "tier" in changes or with_detail:
            # The subscription row before the user's, as the erasure takes them (the other
            # way round, a grant and an erasure at once deadlocked and one failed).
            db.session.execute(select(UserSubscription.id)
                               .where(UserSubscription.user_id == user_id).with_for_update())
        # FOR NO KEY UPDATE: locked against other changes of the user, not against rows that
        # name the user (a session start holding the subscription row inserts one, and would
        # wait for this transaction while this one waits for its subscription row).
        user = db.session.execute(
            select(User).where(User.id == user_id).with_for_update(key_share=True)
            .execution_options(populate_existing=True)).scalar_one_or_none()
        if user is None:
            not_found("User")
        _check_status_change(actor, user, changes)
        if "is_active" in changes and _set_active(
                actor, actor_label, user, bool(changes["is_active"]), reason):
            changed, suspended = True, not user.is_active
        if "tier" in changes:
            changed = _grant_tier(actor, actor_label, user, changes["tier"], reason) or changed
        work.changed_user(user_id)
        if with_detail:
            db.session.flush()
            _apply_due_deadlines(user_id, work)
            detail = user_detail(user_id, settle=False)
    if suspended:
        close_user_sockets(user_id)
    return changed, detail


def _apply_due_deadlines(user_id: int, work) -> None:
    """The deadlines of the user's subscription (locked) that have passed, applied, as a
    sign-in applies them, so that the detail answered shows what is in force."""
    now = clock.now()
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == user_id)
        .execution_options(populate_existing=True)).scalar_one_or_none()
    if sub is not None and due_change(sub, now) is not None and apply_due_deadlines(sub, now):
        work.changed_user(user_id)


def grant_tier_from_cli(user_id: int, tier: str, actor_label: str = "cli") -> None:
    """A complimentary tier from an operator tool (CLI, development tokens)."""
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}")
    update_user(None, user_id, {"tier": tier}, actor_label=actor_label)


# ---- audit log ---------------------------------------------------------------------------

def list_audit(args: dict) -> Page:
    """The audit log, newest first; ``args`` filter by ``action``, ``target_type``,
    ``target_id`` or ``actor_id`` and give ``page`` and ``per_page``."""
    statement = select(AuditLog)
    for name in ("action", "target_type", "target_id", "actor_id"):
        if args.get(name) is not None:
            statement = statement.where(getattr(AuditLog, name) == args[name])
    return paginate(db, statement.order_by(AuditLog.at.desc(), AuditLog.id.desc()), args)
