"""The Stripe provider, with the official ``stripe`` package.

- Checkout: a Checkout Session in ``subscription`` mode for the tier's price
  (``STRIPE_PRICE_IDS=premium=price_...,pro=price_...``); our reference travels as
  ``client_reference_id`` and in the metadata of the session and of the subscription, so every
  later webhook can be matched to the user. The browser returns to the ``success_url`` and
  ``cancel_url`` the SPA gave (else pages under ``PUBLIC_BASE_URL``).
- Cancel / resume: ``cancel_at_period_end`` on the Stripe subscription.
- Change of plan: the subscription item's price; an upgrade is prorated and invoiced now, a
  downgrade takes effect from the next renewal (no proration).
- Cancel at once (an erased account): ``DELETE /v1/subscriptions/<id>``; a subscription Stripe
  no longer has, or has already canceled, counts as done.
- A checkout replaced or given up: its Checkout Session is expired
  (``POST /v1/checkout/sessions/<id>/expire``); one paid anyway is canceled at once and its
  paid invoices' payments refunded (``GET /v1/invoices``, ``GET /v1/invoice_payments``,
  ``POST /v1/refunds``).
- Billing portal: a ``billing_portal.sessions`` session for the customer.
- Webhooks: verified with ``stripe.Webhook.construct_event`` (``events.py``).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import stripe

from config import parse_price_ids

from .. import clock
from ..api_errors import ApiError
from .base import (
    ALREADY_CANCELED,
    CANCELED,
    NOTHING_TO_CANCEL,
    BillingProvider,
    BillingUnavailable,
    Checkout,
)

log = logging.getLogger(__name__)

# Stripe's subscription states after which nothing is charged any more.
ENDED_STATUSES = ("canceled", "incomplete_expired")
# Checkout Sessions refuse a trial_end less than 48 hours away.
MIN_STRIPE_TRIAL_LEFT = timedelta(hours=49)
STRIPE_TIMEOUT_SECONDS = 10


def price_ids(config) -> dict[str, str]:
    """``STRIPE_PRICE_IDS`` (``tier=price_id`` items) as a mapping tier → price id."""
    return parse_price_ids(config.get("STRIPE_PRICE_IDS"))


class StripeProvider(BillingProvider):
    name = "stripe"

    def __init__(self, config):
        super().__init__(config)
        options = {}
        if config.get("STRIPE_API_BASE"):  # stripe-mock or a stand-in for api.stripe.com
            options["base_addresses"] = {"api": config["STRIPE_API_BASE"]}
        # calls run while the user's subscription row is locked: keep them short
        http_client = stripe.new_default_http_client(timeout=STRIPE_TIMEOUT_SECONDS)
        self.client = stripe.StripeClient(config.get("STRIPE_API_KEY") or "",
                                          max_network_retries=1, http_client=http_client,
                                          **options)
        self.prices = price_ids(config)

    def _price(self, tier: str) -> str:
        try:
            return self.prices[tier]
        except KeyError:
            raise BillingUnavailable(f"No Stripe price is configured for the {tier} tier.") \
                from None

    def create_checkout(self, *, user, sub, tier, reference, trial_end=None, success_url=None,
                        cancel_url=None) -> Checkout:
        base = (self.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
        metadata = {"sonicus_reference": reference, "sonicus_user_id": str(user.id),
                    "sonicus_tier": tier}
        subscription_data: dict = {"metadata": metadata}
        if trial_end is not None and trial_end - clock.now() > MIN_STRIPE_TRIAL_LEFT:
            # Stripe charges at the end of our trial; with less left than it accepts, it
            # charges now and the paid period starts at once (the trial ends early)
            subscription_data["trial_end"] = int(trial_end.timestamp())
        params = {
            "mode": "subscription",
            "line_items": [{"price": self._price(tier), "quantity": 1}],
            "client_reference_id": reference,
            "metadata": metadata,
            "subscription_data": subscription_data,
            # the SPA's own addresses when it gave them, else pages under PUBLIC_BASE_URL
            "success_url": success_url
            or f"{base}/subscription?checkout=success&reference={reference}",
            "cancel_url": cancel_url
            or f"{base}/subscription?checkout=canceled&reference={reference}",
        }
        if sub.provider_customer_id:
            params["customer"] = sub.provider_customer_id
        elif user.email:
            params["customer_email"] = user.email
        try:
            session = self.client.v1.checkout.sessions.create(params=params)
        except stripe.StripeError as exc:
            log.warning("stripe checkout creation failed: %s", type(exc).__name__)
            raise BillingUnavailable() from exc
        return Checkout(provider=self.name, reference=reference, url=session.url,
                        session_id=session.id)

    def expire_checkout(self, session_id) -> None:
        if not session_id:
            return
        try:
            self.client.v1.checkout.sessions.expire(session_id)
        except stripe.InvalidRequestError as exc:
            # not open any more (paid meanwhile, or expired) or unknown: nothing to expire;
            # a payment of it is refused when it arrives
            log.info("stripe checkout session not expired: %s", type(exc).__name__)
        except stripe.StripeError as exc:
            raise _unavailable("checkout expiry", exc) from exc

    def refund_and_cancel(self, customer_id, subscription_id) -> str:
        outcome = self.cancel_now(customer_id, subscription_id)
        if not subscription_id:
            return outcome
        try:
            invoices = self.client.v1.invoices.list(
                params={"subscription": subscription_id, "status": "paid"})
            for invoice in invoices.auto_paging_iter():
                payments = self.client.v1.invoice_payments.list(
                    params={"invoice": invoice.id, "status": "paid"})
                for payment in payments.auto_paging_iter():
                    self._refund(payment["payment"])
        except stripe.StripeError as exc:
            raise _unavailable("refund", exc) from exc
        return outcome

    def _refund(self, paid_by) -> None:
        """Refund one payment of an invoice in full (once: a refunded one counts as done)."""
        intent = paid_by["payment_intent"] if paid_by and "payment_intent" in paid_by else None
        if not intent:
            return  # paid otherwise (out of band, a charge of an older API): nothing to refund
        intent = intent if isinstance(intent, str) else intent["id"]
        try:
            self.client.v1.refunds.create(params={"payment_intent": intent},
                                          options={"idempotency_key": f"refund_{intent}"})
        except stripe.InvalidRequestError as exc:
            if exc.code != "charge_already_refunded":
                raise

    def set_cancel_at_period_end(self, sub, cancel: bool) -> None:
        if not sub.provider_subscription_id:
            return
        try:
            self.client.v1.subscriptions.update(sub.provider_subscription_id,
                                                params={"cancel_at_period_end": cancel})
        except stripe.StripeError as exc:
            log.warning("stripe cancel_at_period_end failed: %s", type(exc).__name__)
            raise BillingUnavailable() from exc

    def cancel_at_period_end_now(self, subscription_id) -> bool | None:
        if not subscription_id:
            return None
        try:
            current = self.client.v1.subscriptions.retrieve(subscription_id)
        except stripe.StripeError as exc:
            raise _unavailable("subscription lookup", exc) from exc
        flag = current["cancel_at_period_end"] if "cancel_at_period_end" in current else None
        return flag if isinstance(flag, bool) else None

    def change_tier(self, sub, tier, *, prorate) -> None:
        if not sub.provider_subscription_id:
            return
        try:
            current = self.client.v1.subscriptions.retrieve(sub.provider_subscription_id)
            item_id = current["items"]["data"][0]["id"]
            params = {
                "items": [{"id": item_id, "price": self._price(tier)}],
                "proration_behavior": "always_invoice" if prorate else "none",
                # later invoices carry the subscription's metadata: keep the tier in step
                "metadata": {"sonicus_tier": tier},
            }
            if prorate:
                # the upgrade happens only if its prorated charge succeeds right now
                params["payment_behavior"] = "error_if_incomplete"
            self.client.v1.subscriptions.update(sub.provider_subscription_id, params=params)
        except stripe.CardError as exc:
            raise ApiError(402, "payment_required",
                           "The payment for the upgrade was declined; nothing changed.") from exc
        except stripe.StripeError as exc:
            log.warning("stripe plan change failed: %s", type(exc).__name__)
            raise BillingUnavailable() from exc

    def cancel_now(self, customer_id, subscription_id) -> str:
        if not subscription_id:
            return NOTHING_TO_CANCEL
        try:
            self.client.v1.subscriptions.cancel(subscription_id)
            return CANCELED
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return ALREADY_CANCELED
            if self._has_ended(subscription_id):  # e.g. canceled before: Stripe refuses again
                return ALREADY_CANCELED
            raise _unavailable("cancel", exc) from exc
        except stripe.StripeError as exc:
            raise _unavailable("cancel", exc) from exc

    def _has_ended(self, subscription_id: str) -> bool:
        try:
            current = self.client.v1.subscriptions.retrieve(subscription_id)
        except stripe.InvalidRequestError as exc:
            if exc.code == "resource_missing":
                return True
            raise _unavailable("subscription lookup", exc) from exc
        except stripe.StripeError as exc:
            raise _unavailable("subscription lookup", exc) from exc
        return ("status" in current and current["status"] in ENDED_STATUSES)

    def portal_url(self, *, customer_id, return_url) -> str:
        try:
            session = self.client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url})
        except stripe.StripeError as exc:
            raise _unavailable("billing portal", exc) from exc
        return session.url


def _unavailable(what: str, exc: stripe.StripeError) -> BillingUnavailable:
    """``BillingUnavailable`` naming the Stripe error (its class and code, no customer data)."""
    log.warning("stripe %s failed: %s", what, type(exc).__name__)
    detail = type(exc).__name__ + (f" {exc.code}" if getattr(exc, "code", None) else "")
    return BillingUnavailable(f"The payment provider is unavailable ({what}: {detail}); "
                              "try again shortly.")
