"""The sandbox provider (development and testing): no network, no money.

A checkout is a reference; ``POST /api/billing/sandbox/<reference>/confirm`` plays the part
of the provider's payment page and goes through the same service function as a
payment-succeeded webhook. At the end of a period the expiry job renews a sandbox
subscription that has a payment method on file (a real provider would send a webhook).
"""

from __future__ import annotations

from .base import BillingProvider, Checkout


class SandboxProvider(BillingProvider):
    name = "sandbox"

    def create_checkout(self, *, user, sub, tier, reference, trial_end=None) -> Checkout:
        base = (self.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
        return Checkout(provider=self.name, reference=reference,
                        url=f"{base}/api/billing/sandbox/{reference}/confirm")
