"""The provider's billing portal: where a customer updates the card, reads invoices, changes
the plan or cancels. Changes made there come back as ``customer.subscription.updated``
(``provider_updates.py``)."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from ...api_errors import fail
from ...billing import get_provider
from ...extensions import db
from ...models import UserSubscription


def portal_for(sub: UserSubscription, return_url: str | None = None) -> str:
    """The portal of the row's provider customer (the row has one); ``return_url`` (checked
    by the caller) or ``PUBLIC_BASE_URL`` is where the browser comes back to."""
    return get_provider(sub.provider).portal_url(
        customer_id=sub.provider_customer_id,
        return_url=return_url or current_app.config["PUBLIC_BASE_URL"])


def billing_portal_url(user_id: int, return_url: str | None = None) -> str:
    """``POST /api/user/subscription/portal``: 409 ``conflict`` while the user is nobody's
    customer at a provider yet (nothing was ever paid or put on file: nothing to manage)."""
    sub = db.session.execute(
        select(UserSubscription).where(UserSubscription.user_id == user_id)
    ).scalar_one_or_none()
    if sub is None or not sub.provider_customer_id:
        fail(409, "conflict", "There is no billing account to manage yet.")
    return portal_for(sub, return_url)
