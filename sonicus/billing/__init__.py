"""Billing providers: the interface, the ``sandbox`` and ``stripe`` providers, webhook events.

The provider is chosen by ``BILLING_PROVIDER``. Both read webhooks in the Stripe event format,
signed in the Stripe scheme with ``BILLING_WEBHOOK_SECRET`` (see ``events.py``); the services
never see a provider's payload, only the ``BillingNotice`` it is turned into.
"""

from __future__ import annotations

from flask import current_app

from .base import BillingProvider, BillingUnavailable, Checkout
from .events import BillingNotice, WebhookRejected, parse_event, verify_webhook
from .sandbox import PortalVisit, SandboxProvider, read_portal_token
from .stripe_provider import StripeProvider, price_ids

__all__ = ["BillingNotice", "BillingProvider", "BillingUnavailable", "Checkout", "PortalVisit",
           "WebhookRejected", "get_provider", "notice_from_webhook", "parse_event",
           "read_portal_token", "sandbox_enabled", "verify_webhook"]


def get_provider(name: str | None = None) -> BillingProvider:
    """The configured provider (or the one named), bound to the app's settings."""
    config = current_app.config
    name = name or config["BILLING_PROVIDER"]
    if name == "stripe":
        return StripeProvider(config)
    return SandboxProvider(config)


def sandbox_enabled() -> bool:
    """Sandbox pages (checkout confirmation, billing portal) exist only in development and
    testing, with the sandbox provider."""
    cfg = current_app.config
    return cfg["SONICUS_ENV"] in ("development", "testing") and cfg["BILLING_PROVIDER"] == "sandbox"


def notice_from_webhook(payload: bytes, signature_header: str | None) -> tuple[dict, BillingNotice]:
    """Verify a webhook with the app's secret and read it; ``WebhookRejected`` if not genuine."""
    cfg = current_app.config
    event = verify_webhook(payload, signature_header, cfg.get("BILLING_WEBHOOK_SECRET"))
    price_to_tier = {price: tier for tier, price in price_ids(cfg).items()}
    return event, parse_event(event, price_to_tier)
