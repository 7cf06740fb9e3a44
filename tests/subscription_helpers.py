"""Helpers for the subscription and billing tests: signed webhooks, events, arranging rows."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import stripe
from sqlalchemy import func, select

SECRET = "whsec_test"


def now() -> datetime:
    return datetime.now(UTC)


def sign(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> str:
    """A ``Stripe-Signature`` header, computed by hand exactly as the scheme says."""
    import hashlib
    import hmac

    timestamp = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def post_webhook(client, event: dict, *, secret: str = SECRET, timestamp: int | None = None,
                 header: str | None = None, body: bytes | None = None):
    body = body if body is not None else json.dumps(event).encode()
    header = header if header is not None else sign(body, secret, timestamp)
    return client.post("/api/billing/webhook", data=body,
                       headers={"Stripe-Signature": header, "Content-Type": "application/json"})


def stamp(moment: datetime) -> int:
    return int(moment.timestamp())


def checkout_completed(event_id: str, *, user_id: int, tier: str, reference: str | None = None,
                       amount: int = 999, created: datetime | None = None,
                       customer: str = "cus_1", subscription: str = "sub_1") -> dict:
    meta = {"sonicus_user_id": str(user_id), "sonicus_tier": tier}
    if reference:
        meta["sonicus_reference"] = reference
    return {"id": event_id, "object": "event", "type": "checkout.session.completed",
            "created": stamp(created or now()),
            "data": {"object": {"id": f"cs_{event_id}", "object": "checkout.session",
                                "mode": "subscription", "payment_status": "paid",
                                "client_reference_id": reference, "customer": customer,
                                "subscription": subscription, "amount_total": amount,
                                "metadata": meta}}}


def invoice_event(event_id: str, type_: str, *, user_id: int | None, tier: str | None,
                  period_start: datetime, period_end: datetime, amount: int = 999,
                  created: datetime | None = None, customer: str = "cus_1",
                  subscription: str = "sub_1", price: str | None = None) -> dict:
    meta = {}
    if user_id is not None:
        meta["sonicus_user_id"] = str(user_id)
    if tier is not None:
        meta["sonicus_tier"] = tier
    line = {"id": "il_1", "object": "line_item", "amount": amount,
            "period": {"start": stamp(period_start), "end": stamp(period_end)},
            "metadata": meta}
    if price:
        line["pricing"] = {"price_details": {"price": price}}
    return {"id": event_id, "object": "event", "type": type_,
            "created": stamp(created or now()),
            "data": {"object": {"id": f"in_{event_id}", "object": "invoice",
                                "customer": customer, "billing_reason": "subscription_cycle",
                                "amount_paid": amount if type_ != "invoice.payment_failed" else 0,
                                "amount_due": amount,
                                "parent": {"subscription_details": {
                                    "subscription": subscription, "metadata": meta}},
                                "lines": {"object": "list", "data": [line]}}}}


def subscription_deleted(event_id: str, *, subscription: str = "sub_1", customer: str = "cus_1",
                         created: datetime | None = None) -> dict:
    return {"id": event_id, "object": "event", "type": "customer.subscription.deleted",
            "created": stamp(created or now()),
            "data": {"object": {"id": subscription, "object": "subscription",
                                "customer": customer, "status": "canceled",
                                "ended_at": stamp(created or now()), "metadata": {}}}}


def user_id(app, email: str) -> int:
    from sonicus.extensions import db
    from sonicus.models import User

    with app.app_context():
        return db.session.execute(select(User.id).where(User.email == email)).scalar_one()


def arrange(app, email: str, **fields) -> None:
    """Set subscription columns directly (e.g. move a deadline into the past)."""
    from sonicus.extensions import db
    from sonicus.models import User, UserSubscription

    with app.app_context():
        uid = db.session.execute(select(User.id).where(User.email == email)).scalar_one()
        sub = db.session.execute(
            select(UserSubscription).where(UserSubscription.user_id == uid)).scalar_one()
        for name, value in fields.items():
            setattr(sub, name, value)
        db.session.commit()
        db.session.remove()


def events_of(app, email: str, type_: str | None = None) -> list:
    from sonicus.extensions import db
    from sonicus.models import SubscriptionEvent, User

    with app.app_context():
        q = (select(SubscriptionEvent).join(User, User.id == SubscriptionEvent.user_id)
             .where(User.email == email).order_by(SubscriptionEvent.id))
        if type_:
            q = q.where(SubscriptionEvent.type == type_)
        rows = db.session.execute(q).scalars().all()
        out = [{"type": e.type, "from_tier": e.from_tier, "to_tier": e.to_tier,
                "amount_cents": e.amount_cents, "details": dict(e.details or {}), "at": e.at}
               for e in rows]
        db.session.remove()
        return out


def count_billing_events(app) -> int:
    from sonicus.extensions import db
    from sonicus.models import BillingEvent

    with app.app_context():
        n = db.session.execute(select(func.count(BillingEvent.id))).scalar_one()
        db.session.remove()
        return n


def subscription(client, headers) -> dict:
    resp = client.get("/api/user/subscription", headers=headers)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["data"]


def buy(client, headers, tier: str = "premium") -> dict:
    """Start a paid checkout and confirm it in the sandbox; the subscription afterwards."""
    resp = client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
    assert resp.status_code == 200, resp.get_json()
    reference = resp.get_json()["data"]["checkout"]["reference"]
    confirm = client.post(f"/api/billing/sandbox/{reference}/confirm")
    assert confirm.status_code == 200, confirm.get_json()
    return subscription(client, headers)


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


def stripe_header_matches_library(body: bytes) -> bool:
    """Our hand-made header is what the stripe library itself would produce."""
    ts = int(time.time())
    return sign(body, SECRET, ts) == stripe.WebhookSignature.generate_signature_header(
        body.decode(), SECRET, ts)


DAY = timedelta(days=1)
