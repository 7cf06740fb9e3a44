"""Billing: the provider's webhook and, in development and testing, the sandbox confirmation."""

from __future__ import annotations

from flask import current_app, request
from flask.views import MethodView

from ..billing import WebhookRejected, notice_from_webhook, sandbox_enabled
from ..envelope import ApiError, Blueprint, not_found
from ..metrics import record_webhook
from ..schemas.subscription import SandboxConfirmResultSchema, WebhookResultSchema
from ..services import subscriptions

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
                      "minutes, or a body that is not an event; nothing is changed."))
    def post(self):
        """Receive a billing event; a replayed event id answers 200 and changes nothing."""
        try:
            event, notice = notice_from_webhook(request.get_data(cache=False),
                                                request.headers.get("Stripe-Signature"))
        except WebhookRejected as exc:
            record_webhook("rejected")
            raise ApiError(400, "invalid_signature", str(exc)) from exc
        result = subscriptions.handle_billing_event(current_app.config["BILLING_PROVIDER"],
                                                    event, notice)
        record_webhook(result.get("outcome") if isinstance(result, dict) else None)
        return result


@blp.route("/sandbox/<string:reference>/confirm")
class SandboxConfirm(MethodView):
    @blp.response(200, SandboxConfirmResultSchema)
    @blp.errors(404)
    def post(self, reference):
        """Sandbox provider only (development and testing): the checkout is paid.

        Goes through the same service function as a payment-succeeded webhook. 404 for an
        unknown reference, and everywhere outside development and testing.
        """
        if not sandbox_enabled():
            not_found()
        return subscriptions.confirm_sandbox_checkout(reference)
