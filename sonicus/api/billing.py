"""Billing: the provider's webhook and, in development and testing, the sandbox's pages
(checkout confirmation, billing portal)."""

from __future__ import annotations

import re
from html import escape

from flask import Response, current_app, request
from flask.views import MethodView

from ..billing import WebhookRejected, notice_from_webhook, read_portal_token, sandbox_enabled
from ..envelope import ApiError, Blueprint, not_found
from ..metrics import record_webhook
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
            record_webhook("rejected")
            raise ApiError(400, exc.code, str(exc)) from exc
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
        if not sandbox_enabled() or not SANDBOX_REFERENCE.fullmatch(reference):
            not_found()
        return subscriptions.confirm_sandbox_checkout(reference)


_PORTAL_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Billing portal (sandbox)</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;
line-height:1.5}}code{{background:#eee;padding:0 .25rem}}</style></head>
<body><h1>Billing portal (sandbox)</h1>
<p>This page stands in for the payment provider's billing portal, where a customer updates the
card, reads invoices, changes the plan or cancels. The sandbox keeps no cards and sends no
invoices.</p>
<p>Customer <code>{customer}</code></p>
<p><a href="{return_url}">Back to Sonicus</a></p></body></html>
"""
# The page's own policy: its inline style, nothing else (no script, no external asset).
_PORTAL_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


@blp.route("/sandbox/portal/<string:token>")
class SandboxPortal(MethodView):
    @blp.doc(responses={"200": {
        "description": "A small HTML page standing in for the provider's billing portal.",
        "content": {"text/html": {"schema": {"type": "string"}}}}})
    @blp.errors(404)
    def get(self, token):
        """Sandbox provider only (development and testing): the billing portal's page.

        The address comes from `POST /api/user/subscription/portal` (a signed token, valid
        for an hour). 404 for a forged or expired token, and everywhere outside development
        and testing.
        """
        if not sandbox_enabled():
            not_found()
        visit = read_portal_token(current_app.config, token)
        if visit is None:
            not_found()
        page = _PORTAL_PAGE.format(customer=escape(visit.customer_id),
                                   return_url=escape(visit.return_url, quote=True))
        return Response(page, mimetype="text/html",
                        headers={"Content-Security-Policy": _PORTAL_CSP})
