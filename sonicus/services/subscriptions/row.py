"""The subscription row: read it (never writing), lock it (creating the starter default), and
show it as the API does.

One row per user in ``user_subscriptions``; every change locks it first (``SELECT ... FOR
UPDATE``), so API calls, webhooks and the expiry job serialise on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from flask import current_app
from sqlalchemy import select

from ...extensions import db
from ...models import SubscriptionEvent, UserSubscription
from ...models.subscription import ACTIVE, Onboarding
from ...pagination import Page, paginate
from ...tiers import STARTER, get_tier
from .. import quota
from ..person_emails import trial_used_by_the_person
from ..quota import Usage
from ..transaction import dialect_insert
from .common import GRACE_PERIOD, cents_to_decimal


def get_subscription(person) -> UserSubscription:
    """The subscription of ``person`` (a user or a caller) for reading; never writes. A user
    without a row (yet) is on the starter tier: a transient default, not added to the session."""
    joined = getattr(person, "subscription", None)
    if joined is not None:  # joined-loaded with the user
        return joined
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == person.id)
    ).scalar_one_or_none()
    return sub if sub is not None else _default_subscription(person.id)


def _default_subscription(user_id: int) -> UserSubscription:
    return UserSubscription(user_id=user_id, tier=STARTER, status=ACTIVE, trial_used=False,
                            cancel_at_period_end=False, payment_method_on_file=False,
                            complimentary=False)


def lock_or_create_subscription(user_id: int) -> UserSubscription:
    """The user's subscription row, locked until the transaction ends, freshly read.

    A missing row is inserted first as the starter default (a concurrent insert of the same
    row is a no-op), inside the caller's transaction: nothing is committed here.
    """
    stmt = (select(UserSubscription).where(UserSubscription.user_id == user_id)
            .with_for_update().execution_options(populate_existing=True))
    sub = db.session.execute(stmt).scalar_one_or_none()
    if sub is None:
        insert_default_subscription(user_id)
        sub = db.session.execute(stmt).scalar_one()
    return sub


def insert_default_subscription(user_id: int) -> None:
    """Insert the user's missing subscription row as the starter default, in the caller's
    transaction (a concurrent insert of the same row is a no-op). Callers that lock the row
    in a statement of their own (``SELECT ... FOR UPDATE OF user_subscriptions``) run it when
    that statement finds nothing, then run theirs again."""
    stmt = dialect_insert()(UserSubscription).values(user_id=user_id, tier=STARTER,
                                                     status=ACTIVE)
    db.session.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))


@dataclass(frozen=True)
class CheckoutView:
    """A checkout waiting for payment (``CheckoutSchema``)."""

    provider: str
    reference: str
    url: str | None
    tier: str
    amount: Decimal | None


@dataclass(frozen=True)
class SubscriptionOverview:
    """The subscription as the API shows it (``SubscriptionSchema``): the row, what its tier
    costs and allows, and today's usage."""

    row: UserSubscription
    usage: Usage
    onboarding: Onboarding
    checkout: CheckoutView | None

    trial_used: bool

    def __getattr__(self, name):
        return getattr(self.row, name)

    @property
    def price(self) -> Decimal:
        return get_tier(self.row.tier).price

    @property
    def limits(self) -> dict:
        return get_tier(self.row.tier).limits

    @property
    def grace_ends_at(self) -> datetime | None:
        since = self.row.past_due_since
        return since + GRACE_PERIOD if since else None


def _checkout(sub: UserSubscription) -> CheckoutView | None:
    if not sub.checkout_reference:
        return None
    return CheckoutView(sub.provider or current_app.config["BILLING_PROVIDER"],
                        sub.checkout_reference, sub.checkout_url, sub.checkout_tier,
                        cents_to_decimal(get_tier(sub.checkout_tier).price_cents))


def overview(person, sub: UserSubscription | None = None,
             now: datetime | None = None) -> SubscriptionOverview:
    """``person``: a user or a caller (``id``, ``email_verified`` and the day settings). A
    change builds it inside its transaction, so its answer reads nothing after the commit."""
    sub = sub if sub is not None else get_subscription(person)
    return SubscriptionOverview(sub, quota.usage_today(person, sub.tier, now),
                                Onboarding.of(person.email_verified, sub), _checkout(sub),
                                bool(sub.trial_used) or trial_used_elsewhere(person))


def trial_used_elsewhere(person) -> bool:
    """The person used the trial on another account, live or erased, that shares an address
    with this one (``person_emails``; its subject's tombstone was read when this account was
    made): a trial asked here would be 409 ``trial_already_used``, so it is shown used. One
    statement."""
    return trial_used_by_the_person(person.id, person.email)


def history(user_id: int, args: dict) -> Page:
    """The user's subscription events, newest first, one page."""
    return paginate(db, select(SubscriptionEvent).where(SubscriptionEvent.user_id == user_id)
                    .order_by(SubscriptionEvent.at.desc(), SubscriptionEvent.id.desc()), args)
