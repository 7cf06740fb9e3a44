"""The billing-provider interface.

A provider creates checkouts and keeps the provider's own subscription in step with the
changes a user makes here (cancel at period end, resume, change of plan), cancels a
subscription at once when its account is erased, and opens its billing portal for a
customer. Payments arrive as webhooks and are turned into ``BillingNotice`` objects
(``events.py``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from ..api_errors import ApiError

# What a 502 ``billing_unavailable`` tells a client to wait before it tries again.
BILLING_RETRY_AFTER_SECONDS = 5


class BillingUnavailable(ApiError):
    """The provider could not be reached or refused the request; nothing was changed. The
    answer carries ``Retry-After`` (API.md: 502/503)."""

    def __init__(self, message: str = "The payment provider is unavailable; try again shortly."):
        super().__init__(502, "billing_unavailable", message,
                         headers={"Retry-After": str(BILLING_RETRY_AFTER_SECONDS)})


# What ``cancel_now`` answers when the provider confirms there is nothing left to charge.
CANCELED = "canceled"                    # canceled by this call
ALREADY_CANCELED = "already_canceled"    # it had ended before (or was never created there)
NOTHING_TO_CANCEL = "nothing_to_cancel"  # no provider subscription is known


@dataclass(frozen=True)
class Checkout:
    provider: str
    reference: str
    url: str
    session_id: str | None = None  # the provider's id of its checkout page, if it has one


def new_reference() -> str:
    """Our own checkout reference: unguessable, and the key a payment is matched by."""
    return "chk_" + secrets.token_hex(16)


class BillingProvider:
    name = "base"

    def __init__(self, config):
        self.config = config

    def create_checkout(self, *, user, sub, tier: str, reference: str,
                        trial_end: datetime | None = None, success_url: str | None = None,
                        cancel_url: str | None = None) -> Checkout:
        """A checkout for ``tier``; with ``trial_end`` the first charge is due then. Its
        ``url`` is a page the browser is sent to (a GET); after paying it goes on to
        ``success_url``, after abandoning to ``cancel_url`` (None: the provider's default)."""
        raise NotImplementedError

    def expire_checkout(self, session_id: str | None) -> None:
        """The checkout page can no longer be paid (a checkout replaced or given up). One that
        is no longer open (paid meanwhile, or expired) counts as done: a payment of it that
        arrives is refused then (``refund_and_cancel``). ``BillingUnavailable`` if the
        provider cannot be reached."""

    def refund_and_cancel(self, customer_id: str | None, subscription_id: str | None) -> str:
        """A provider subscription nobody here asked for any more (a checkout replaced or
        given up, paid anyway): end it at once and refund what it charged. What
        ``cancel_now`` answers; ``BillingUnavailable`` when the provider cannot be reached."""
        return self.cancel_now(customer_id, subscription_id)

    def set_cancel_at_period_end(self, sub, cancel: bool) -> None:
        """Tell the provider to stop (or keep) renewing at the end of the period."""

    def cancel_at_period_end_now(self, subscription_id: str | None) -> bool | None:
        """Whether the provider's subscription is set to end at its period's end, as it is
        now (None: not known here). ``BillingUnavailable`` if the provider cannot be
        reached."""
        return None

    def change_tier(self, sub, tier: str, *, prorate: bool) -> None:
        """Switch the provider's plan: now with proration, or from the next renewal."""

    def cancel_now(self, customer_id: str | None, subscription_id: str | None) -> str:
        """End the provider's subscription at once: no further charge, no proration.

        Returns ``CANCELED``, ``ALREADY_CANCELED`` or ``NOTHING_TO_CANCEL`` once the provider
        confirms; ``BillingUnavailable`` when it cannot be reached or refuses (try again).
        """
        raise NotImplementedError

    def portal_url(self, *, customer_id: str, return_url: str) -> str:
        """Where the customer manages their billing (card, invoices, plan, cancel); the
        browser comes back to ``return_url``. ``BillingUnavailable`` if it cannot be made."""
        raise NotImplementedError
