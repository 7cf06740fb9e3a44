"""The caller's subscription: read, choose/buy/upgrade/downgrade, cancel, resume, history.

A change answers with the subscription as it committed; today's session count (the one thing
of the answer not in the changed row) is read before the change, so nothing touches the
database after the commit.
"""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..schemas.subscription import (
    CancelSchema,
    HistoryArgsSchema,
    PortalRequestSchema,
    PortalSchema,
    SubscriptionChangeSchema,
    SubscriptionEventSchema,
    SubscriptionSchema,
)
from ..services import subscriptions

blp = Blueprint("subscription", __name__, url_prefix="/api/user",
                description="The caller's subscription.")


@blp.route("/subscription")
class Subscription(MethodView):
    @require_user
    @blp.response(200, SubscriptionSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """The tier in force, its status, limits and today's usage."""
        return subscriptions.overview(caller)

    @require_user
    @blp.arguments(SubscriptionChangeSchema)
    @blp.response(200, SubscriptionSchema)
    @blp.errors(401, (402, "`payment_required`: the provider declined an upgrade's charge."),
                (403, "`email_not_verified`: paid tiers and trials need a verified email."),
                (409, "`trial_already_used`; `conflict`: a trial starts from starter, or a "
                      "paid tier below the one granted free (the one paid for under the "
                      "grant included) is not sold; `use_billing_portal` (with "
                      "`portal_url`): a past-due subscription is fixed in the billing "
                      "portal, not bought again."),
                422, 502)
    def post(self, body, caller):
        """Choose a tier: starter, a checkout for a paid tier, a trial, an upgrade or a downgrade.

        Paid tier without a trial: `incomplete` with a `checkout`; the tier takes effect when
        the payment arrives. Send the browser to `checkout.url` (a GET, as with Stripe
        Checkout); it comes back to `success_url` or `cancel_url` (422 naming the field unless
        each starts with `PUBLIC_BASE_URL` or a `CORS_ORIGINS` origin). An upgrade from a paid
        tier is immediate and prorated; a downgrade (or starter) takes effect at the end of the
        period. A `past_due` user asking for a paid tier gets 409 `use_billing_portal` with
        `portal_url`: never a second subscription. Under a complimentary grant the tier
        granted opens nothing (free of charge) and a paid tier below it is 409 `conflict`:
        nothing is charged again for days given or already paid for.
        """
        view, message = subscriptions.change_tier(
            caller.id, body["tier"], body["start_trial"], success_url=body.get("success_url"),
            cancel_url=body.get("cancel_url"))
        set_message(message)
        return view

    @require_user
    @blp.arguments(CancelSchema, required=False)
    @blp.response(200, SubscriptionSchema)
    @blp.errors(401, 403, (409, "`conflict`: there is nothing to cancel."), 422, 502)
    def delete(self, body, caller):
        """Cancel at the end of the period (or trial); a pending checkout is dropped."""
        view, message = subscriptions.cancel(caller.id, body.get("reason"), body.get("comment"))
        set_message(message)
        return view


@blp.route("/subscription/resume")
class Resume(MethodView):
    @require_user
    @blp.response(200, SubscriptionSchema)
    @blp.errors(401, 403, (409, "`conflict`: nothing is scheduled, or the period is over."), 502)
    def post(self, caller):
        """Undo a scheduled cancellation or downgrade before the period ends."""
        view, message = subscriptions.resume(caller.id)
        set_message(message)
        return view


@blp.route("/subscription/portal")
class Portal(MethodView):
    @require_user
    @blp.arguments(PortalRequestSchema, required=False)
    @blp.response(200, PortalSchema)
    @blp.errors(401, 403, (409, "`conflict`: no billing account at the provider yet."), 422,
                502)
    def post(self, body, caller):
        """The provider's billing portal: update the card, read invoices, change or cancel.

        `return_url` (default `PUBLIC_BASE_URL`) must start with `PUBLIC_BASE_URL` or a
        `CORS_ORIGINS` origin. Plan changes made there are applied when the provider reports
        them.
        """
        return {"url": subscriptions.billing_portal_url(caller.id, body.get("return_url"))}


@blp.route("/subscription/history")
class History(MethodView):
    @require_user
    @blp.arguments(HistoryArgsSchema, location="query")
    @blp.response(200, SubscriptionEventSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """The subscription's events, newest first."""
        return subscriptions.history(caller.id, args)
