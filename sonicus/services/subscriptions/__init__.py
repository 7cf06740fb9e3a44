"""Subscriptions: the tier in force, its lifecycle, payments and onboarding.

- ``row``: the subscription row (read, lock-or-create) and how the API shows it.
- ``changes``: changes a user asks for (tier, cancel, resume).
- ``grants``: an administrator's grant over the user's own billing.
- ``payments``: payments and provider notices applied to a locked subscription.
- ``webhooks``: provider events, each applied exactly once.
- ``sandbox``: the sandbox provider's payment page (its checkout, pay and cancel).
- ``provider_updates``: changes made at the provider (``customer.subscription.updated``).
- ``portal``: the provider's billing portal.
- ``expiry``: the job that applies trial, grace and period ends.
"""

from __future__ import annotations

from ...models.subscription import CANCEL_REASONS
from .changes import cancel, change_tier, resume
from .common import (
    GRACE_PERIOD,
    SAME_PERIOD_SLACK,
    add_month,
    cents_to_decimal,
    ended_by_a_grant,
)
from .expiry import (
    due_change,
    next_change_at,
    process_due_subscriptions,
    scheduled_change,
    settle_due_change,
    tier_after_trial,
    tier_in_force,
)
from .grants import grant_tier
from .payments import (
    Payment,
    apply_payment_failed,
    apply_payment_succeeded,
    apply_subscription_ended,
)
from .portal import billing_portal_url
from .row import (
    SubscriptionOverview,
    get_subscription,
    history,
    insert_default_subscription,
    lock_or_create_subscription,
    overview,
)
from .sandbox import (
    SandboxCheckout,
    abandon_sandbox_checkout,
    confirm_sandbox_checkout,
    sandbox_checkout,
    sandbox_checkout_state,
)
from .webhooks import handle_billing_event

__all__ = [
    "CANCEL_REASONS", "GRACE_PERIOD", "SAME_PERIOD_SLACK", "Payment", "add_month",
    "apply_payment_failed", "apply_payment_succeeded", "apply_subscription_ended", "cancel",
    "SubscriptionOverview", "billing_portal_url", "cents_to_decimal", "change_tier", "due_change",
    "confirm_sandbox_checkout", "ended_by_a_grant", "SandboxCheckout", "abandon_sandbox_checkout",
    "sandbox_checkout", "sandbox_checkout_state",
    "get_subscription", "grant_tier", "handle_billing_event", "history",
    "insert_default_subscription", "lock_or_create_subscription", "next_change_at",
    "overview", "process_due_subscriptions", "resume", "scheduled_change", "settle_due_change",
    "tier_after_trial",
    "tier_in_force",
]
