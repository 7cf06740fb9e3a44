"""Reminders: the caller's preferences and push subscriptions, and the public VAPID key."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..schemas.common import EmptySchema
from ..schemas.reminders import (
    PushSubscriptionCreatedSchema,
    PushSubscriptionInputSchema,
    ReminderPreferencesSchema,
    ReminderPreferencesUpdateSchema,
    VapidPublicKeySchema,
)
from ..services import reminder_settings, webpush

blp = Blueprint("reminders", __name__, url_prefix="/api",
                description="Reminders by Web Push.")


@blp.route("/push/vapid-public-key")
class VapidPublicKey(MethodView):
    @blp.response(200, VapidPublicKeySchema)
    def get(self):
        """The application server key for ``pushManager.subscribe`` (public)."""
        return {"public_key": webpush.vapid_public_key()}


@blp.route("/user/reminders")
class ReminderPreferences(MethodView):
    @require_user
    @blp.response(200, ReminderPreferencesSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """The caller's reminder preferences (disabled until set)."""
        return reminder_settings.get_reminder_preferences(caller.id)

    @require_user
    @blp.arguments(ReminderPreferencesUpdateSchema)
    @blp.response(200, ReminderPreferencesSchema)
    @blp.errors(401, 403, 422)
    def put(self, body, caller):
        """Change the caller's reminder preferences; fields not given keep their value."""
        return reminder_settings.update_reminder_preferences(caller.id, body)


@blp.route("/user/push-subscriptions")
class PushSubscriptions(MethodView):
    @require_user
    @blp.arguments(PushSubscriptionInputSchema)
    @blp.response(201, PushSubscriptionCreatedSchema, description="Subscribed.")
    @blp.alt_response(200, schema=PushSubscriptionCreatedSchema,
                      description="This endpoint was the caller's already: keys updated.")
    @blp.errors(401, 403, (422, "`endpoint` not a push service's address, bad keys."))
    def post(self, body, caller):
        """Store a browser's PushSubscription (one per device). An endpoint must start with
        one of WEBPUSH_ALLOWED_ENDPOINTS."""
        new_id, created = reminder_settings.save_push_subscription(
            caller.id, body["endpoint"], body["keys"]["p256dh"], body["keys"]["auth"],
            body["expires_at"])
        set_message("Subscribed to reminders." if created else "Subscription updated.")
        return {"id": new_id}, 201 if created else 200


@blp.route("/user/push-subscriptions/<int:subscription_id>")
class PushSubscriptionItem(MethodView):
    @require_user
    @blp.response(200, EmptySchema)
    @blp.errors(401, 403, 404)
    def delete(self, subscription_id, caller):
        """Forget one of the caller's push subscriptions (this device gets no reminders)."""
        reminder_settings.delete_push_subscription(caller.id, subscription_id)
        set_message("Unsubscribed.")
        return {}
