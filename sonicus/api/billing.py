"""Billing: the provider's webhook and, in development and testing, the sandbox confirmation."""

from __future__ import annotations

import re

from flask import current_app, request
from flask.views import MethodView

from ..billing import WebhookRejected, notice_from_webhook, sandbox_enabled
from ..envelope import ApiError, Blueprint, not_found
from ..schemas.subscription import SandboxConfirmResultSchema, WebhookResultSchema
from ..services import subscriptions

# Our checkout references (``billing.base.new_reference``): anything else is no checkout.
SANDBOX_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,200}")

blp = Blueprint("billing", __name__, url_prefix="/api/billing", description="Billing.")

_WEBHOOK_BODY = {
    "required": True,
    "description": "A Stripe-format event, signed in the `Stripe-Signature` header "
                   "(`t=<unix>,v1=<hex HMAC-SHA256 of \"t.payload\">`).",
    "content": {"application/json": {"schema": {"type": "object"}}},
}


@blp.route("/webhook")
class Webhook(MethodView):
    @blp.doc(requestBody=_WEBHOOK_BODY, parameters=[{
        "in": "header", "name": "Stripe-Signature", "required": True,
        "schema": {"type": "string"}}])
    @blp.response(200, WebhookResultSchema)
    @blp.errors((400, "`invalid_signature`: bad or missing signature, timestamp outside 5 "
                      "minutes, or a body that is not an event; `validation_error`: an "
                      "authentic event with a value we cannot take (an id over 255 or a type "
                      "over 96 characters, NUL or an unpaired surrogate, a timestamp past "
                      "2100, an amount past an integer's range, a user id not in ASCII "
                      "digits). Nothing is changed."))
    def post(self):
        """Receive a billing event; a replayed event id answers 200 and changes nothing."""
        try:
            event, notice = notice_from_webhook(request.get_data(cache=False),
                                                request.headers.get("Stripe-Signature"))
        except WebhookRejected as exc:
            raise ApiError(400, exc.code, str(exc)) from exc
        return subscriptions.handle_billing_event(current_app.config["BILLING_PROVIDER"],
                                                  event, notice)


@blp.route("/sandbox/<string:reference>/confirm")
class SandboxConfirm(MethodView):
    @blp.response(200, SandboxConfirmResultSchema)
    @blp.errors(404)
    def post(self, reference):
        """Sandbox provider only (development and testing): the checkout is paid.

        Goes through the same service function as a payment-succeeded webhook. 404 for an
        unknown reference, and everywhere outside development and testing.
        """
        if not sandbox_enabled() or not SANDBOX_REFERENCE.fullmatch(reference):
            not_found()
        return subscriptions.confirm_sandbox_checkout(reference)
