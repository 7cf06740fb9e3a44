"""The sandbox provider (development and testing): no network, no money.

A checkout is a reference and a page of this API, ``GET /api/billing/sandbox/<reference>``,
standing in for the provider's payment page: Pay confirms and sends the browser to the
checkout's ``success_url``, Cancel abandons it and sends it to ``cancel_url`` (303; without
them, a small page saying what happened). ``POST /api/billing/sandbox/<reference>/confirm``
confirms without a browser. Confirming goes through the same service function as a
payment-succeeded webhook. At the end of a period the expiry job renews a sandbox
subscription that has a payment method on file (a real provider would send a webhook).
Cancelling at once always succeeds. The billing portal is a small page of this API
(``GET /api/billing/sandbox/portal/<token>``), the token signed with the app's secret key.
"""

from __future__ import annotations

from dataclasses import dataclass

from itsdangerous import BadData, URLSafeTimedSerializer

from .base import CANCELED, BillingProvider, Checkout

PORTAL_TOKEN_SALT = "sonicus-sandbox-portal"
PORTAL_TOKEN_SECONDS = 3600  # a portal link works for an hour, like a provider's session


@dataclass(frozen=True)
class PortalVisit:
    customer_id: str
    return_url: str


def _portal_serializer(config) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(config["SECRET_KEY"], salt=PORTAL_TOKEN_SALT)


def read_portal_token(config, token: str) -> PortalVisit | None:
    """The visit a sandbox portal token stands for; None when forged, altered or expired."""
    try:
        data = _portal_serializer(config).loads(token, max_age=PORTAL_TOKEN_SECONDS)
    except BadData:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str) \
            or not isinstance(data.get("r"), str):
        return None
    return PortalVisit(data["c"], data["r"])


class SandboxProvider(BillingProvider):
    name = "sandbox"

    def create_checkout(self, *, user, sub, tier, reference, trial_end=None, success_url=None,
                        cancel_url=None) -> Checkout:
        # The checkout page (GET, ``api/billing.py``) reads the return addresses from the
        # subscription row, where the service keeps them.
        base = (self.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
        return Checkout(provider=self.name, reference=reference,
                        url=f"{base}/api/billing/sandbox/{reference}")

    def cancel_now(self, customer_id, subscription_id) -> str:
        return CANCELED

    def portal_url(self, *, customer_id, return_url) -> str:
        base = (self.config.get("PUBLIC_BASE_URL") or "").rstrip("/")
        token = _portal_serializer(self.config).dumps({"c": customer_id, "r": return_url})
        return f"{base}/api/billing/sandbox/portal/{token}"
