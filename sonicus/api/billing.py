"""Billing: the provider's webhook and, in development and testing, the sandbox's pages
(checkout confirmation, billing portal)."""

from __future__ import annotations

import re
from html import escape

from flask import Response, current_app, redirect, request, url_for
from flask.views import MethodView

from ..api_errors import ApiError, not_found
from ..billing import WebhookRejected, notice_from_webhook, read_portal_token, sandbox_enabled
from ..envelope import Blueprint
from ..metrics import record_webhook
from ..schemas.subscription import SandboxConfirmResultSchema, WebhookResultSchema
from ..services import subscriptions
from ..services.subscriptions import cents_to_decimal
from ..tiers import get_tier

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
        _sandbox_reference(reference)
        return subscriptions.confirm_sandbox_checkout(reference)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;
line-height:1.5}}code{{background:#eee;padding:0 .25rem}}form{{display:inline}}
button{{font:inherit;padding:.5rem 1.25rem;margin-right:.75rem;cursor:pointer}}</style></head>
<body><h1>{title}</h1>
{body}</body></html>
"""
_CHECKOUT_BODY = """<p>This page stands in for the payment provider's checkout (development and
testing only: no card, no money).</p>
<p><strong>{tier}</strong>: {price}</p>
<p>Reference <code>{reference}</code></p>
<form method="post" action="{pay}"><button type="submit">Pay</button></form>
<form method="post" action="{cancel}"><button type="submit">Cancel</button></form>
"""
_DONE_PAGE = {  # by what became of the checkout (``sandbox_checkout_state``)
    "paid": ("Payment confirmed",
             "<p>Payment confirmed: the tier is yours. You can close this page.</p>"),
    "canceled": ("Checkout canceled",
                 "<p>The checkout was canceled; nothing was charged. You can close this "
                 "page.</p>"),
    "pending": ("Checkout not paid",
                "<p>This checkout is still waiting for payment; nothing was charged.</p>"),
    "closed": ("Checkout closed",
               "<p>The checkout is closed; its payment changed nothing in the tier.</p>"),
}
# The pages' own policy: their inline style, nothing else (no script, no external asset).
_PAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
_HTML_PAGE = {"description": "A small HTML page (no script, no external asset).",
              "content": {"text/html": {"schema": {"type": "string"}}}}
_REDIRECT = {"description": "To the checkout's `success_url` / `cancel_url`, or to the "
                            "sandbox's page saying what happened.",
             "headers": {"Location": {"schema": {"type": "string"}}}}


def _page(title: str, body: str, status: int = 200) -> Response:
    return Response(_PAGE.format(title=escape(title), body=body), status=status,
                    mimetype="text/html", headers={"Content-Security-Policy": _PAGE_CSP})


def _return_to(url: str | None, reference: str) -> Response:
    """303 to the checkout's return address (``{CHECKOUT_SESSION_ID}`` filled in with the
    reference, as Stripe fills in its session id), else to the sandbox's own result page."""
    target = (url.replace("{CHECKOUT_SESSION_ID}", reference) if url
              else url_for("billing.SandboxCheckoutDone", reference=reference))
    return redirect(target, 303)


def _sandbox_reference(reference: str) -> None:
    if not sandbox_enabled() or not SANDBOX_REFERENCE.fullmatch(reference):
        not_found()


@blp.route("/sandbox/<string:reference>")
class SandboxCheckoutPage(MethodView):
    @blp.doc(responses={"200": _HTML_PAGE})
    @blp.errors(404)
    def get(self, reference):
        """Sandbox provider only (development and testing): the checkout page, `checkout.url`.

        Pay confirms the checkout (as the provider's payment webhook would) and sends the
        browser on to the checkout's `success_url`; Cancel abandons it and sends the browser to
        `cancel_url` (both 303; without them, a sandbox page saying what happened). 404 for a
        checkout that is not pending, and everywhere outside development and testing.
        """
        _sandbox_reference(reference)
        checkout = subscriptions.sandbox_checkout(reference)
        if checkout is None:
            not_found("Checkout")
        tier = get_tier(checkout.tier)
        price = (f"free until {checkout.trial_ends_at:%Y-%m-%d} (end of the trial), then "
                 f"{tier.price} USD a month" if checkout.trial_ends_at is not None
                 else f"{cents_to_decimal(checkout.amount_cents)} USD a month")
        body = _CHECKOUT_BODY.format(
            tier=escape(tier.title), price=escape(price), reference=escape(reference),
            pay=escape(url_for("billing.SandboxCheckoutPay", reference=reference), quote=True),
            cancel=escape(url_for("billing.SandboxCheckoutCancel", reference=reference),
                          quote=True))
        return _page("Checkout (sandbox)", body)


@blp.route("/sandbox/<string:reference>/pay")
class SandboxCheckoutPay(MethodView):
    @blp.doc(responses={"303": _REDIRECT})
    @blp.errors(404)
    def post(self, reference):
        """Sandbox only: the checkout page's Pay button. Confirms (a second press changes
        nothing) and redirects (303) to the checkout's `success_url`."""
        _sandbox_reference(reference)
        checkout = subscriptions.sandbox_checkout(reference)
        subscriptions.confirm_sandbox_checkout(reference)  # 404 unless pending or paid
        return _return_to(checkout.success_url if checkout else None, reference)


@blp.route("/sandbox/<string:reference>/cancel")
class SandboxCheckoutCancel(MethodView):
    @blp.doc(responses={"303": _REDIRECT})
    @blp.errors(404)
    def post(self, reference):
        """Sandbox only: the checkout page's Cancel button. Abandons the checkout (nothing is
        charged; the tier stays as it was) and redirects (303) to its `cancel_url`."""
        _sandbox_reference(reference)
        return _return_to(subscriptions.abandon_sandbox_checkout(reference), reference)


@blp.route("/sandbox/<string:reference>/done")
class SandboxCheckoutDone(MethodView):
    @blp.doc(responses={"200": _HTML_PAGE})
    @blp.errors(404)
    def get(self, reference):
        """Sandbox only: where Pay and Cancel end when the checkout has no return address; it
        says what became of the checkout, as recorded (paid, canceled, still waiting)."""
        _sandbox_reference(reference)
        state = subscriptions.sandbox_checkout_state(reference)
        if state is None:
            not_found("Checkout")
        return _page(*_DONE_PAGE[state])


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
                        headers={"Content-Security-Policy": _PAGE_CSP})
