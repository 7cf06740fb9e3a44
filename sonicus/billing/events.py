"""Webhook verification and the Stripe event format, turned into ``BillingNotice`` objects.

Signature: header ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`` with
``BILLING_WEBHOOK_SECRET``, checked by ``stripe.Webhook.construct_event`` (no network), with a
5-minute tolerance; a timestamp more than 5 minutes in the future is refused too.

Handled event types (anything else is stored and acknowledged):
- ``checkout.session.completed`` (paid or no payment required) → payment succeeded
- ``invoice.paid`` / ``invoice.payment_succeeded`` → payment succeeded (a renewal when the
  invoice's period starts where ours ends)
- ``invoice.payment_failed`` → payment failed
- ``customer.subscription.deleted`` → subscription ended
- ``customer.subscription.updated`` → subscription updated (a plan changed in the billing
  portal, ``cancel_at_period_end`` set or cleared there)
- ``charge.refunded`` → a charge refunded (in full or in part: ``amount_refunded``)
- ``charge.dispute.created`` / ``.funds_withdrawn`` → a charge disputed (its ``charge``: an id
  or expanded), in a ``warning_`` status an inquiry only; ``.closed`` won: ``dispute_events``

The tier paid for is read from the prices first (``STRIPE_PRICE_IDS``; a credit line of a
proration is not the tier), then from our ``sonicus_tier`` metadata: a plan changed in the
portal leaves the metadata behind.

An authentic event that does not fit what we store is refused as a whole (400, nothing
changed): an id over 255 characters, a type over 96, NUL or an unpaired surrogate in any
string, a timestamp that is not a whole number of seconds before 2100, an amount that is not
a whole number of cents within an ``integer`` column, a user id that is not ASCII digits.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import stripe

from ..tiers import PAID_TIERS
from ..validation import INT32_MAX, hostile_text_errors
from .dispute_events import DISPUTE_KIND_BY_TYPE, DISPUTE_WON, dispute_kind
from .refund_amounts import dig, own_refund

TOLERANCE_SECONDS = 300
MAX_ID_LENGTH = 255        # the columns a provider's id or our reference is stored in
MAX_TYPE_LENGTH = 96       # billing_events.type
MAX_TIMESTAMP = 4102444800  # 2100-01-01T00:00:00Z: no billing date lies beyond it
_USER_ID = re.compile(r"[0-9]{1,10}")

PAYMENT_SUCCEEDED = "payment_succeeded"
PAYMENT_FAILED = "payment_failed"
SUBSCRIPTION_ENDED = "subscription_ended"
SUBSCRIPTION_UPDATED = "subscription_updated"
CHARGE_REFUNDED = "charge_refunded"
CHARGE_DISPUTED = "charge_disputed"
IGNORED = "ignored"

KIND_BY_TYPE = {
    "checkout.session.completed": PAYMENT_SUCCEEDED,
    "invoice.paid": PAYMENT_SUCCEEDED,
    "invoice.payment_succeeded": PAYMENT_SUCCEEDED,
    "invoice.payment_failed": PAYMENT_FAILED,
    "customer.subscription.deleted": SUBSCRIPTION_ENDED,
    "customer.subscription.updated": SUBSCRIPTION_UPDATED,
    "charge.refunded": CHARGE_REFUNDED,
    "charge.dispute.created": CHARGE_DISPUTED,
    "charge.dispute.funds_withdrawn": CHARGE_DISPUTED, **DISPUTE_KIND_BY_TYPE,
}


class WebhookRejected(Exception):
    """The webhook is not authentic, too old, or not an event at all."""

    code = "invalid_signature"


class WebhookInvalid(WebhookRejected):
    """Authentic, but holding a value we cannot take (see the module docstring)."""

    code = "validation_error"


@dataclass(frozen=True)
class BillingNotice:
    """What a provider event means for a subscription, in our terms."""

    event_id: str
    event_type: str
    kind: str
    created: datetime
    user_id: int | None = None
    reference: str | None = None
    customer_id: str | None = None
    subscription_id: str | None = None
    tier: str | None = None
    amount_cents: int | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    document_id: str | None = None  # the invoice or checkout session id
    # customer.subscription.updated: the flag as it is now, and the fields the event changed
    # (the keys of ``previous_attributes``; None when the event does not say)
    cancel_at_period_end: bool | None = None
    changed: frozenset[str] | None = None
    # the payment's own ids (a charge, its payment intent, the invoice it paid), by which a
    # refund or a dispute of it is matched; a refund's total so far, own amount and id
    charge_id: str | None = None
    payment_intent_id: str | None = None
    invoice_id: str | None = None
    refunded_cents: int | None = None
    refund_cents: int | None = None
    refund_id: str | None = None
    charged_at: datetime | None = None
    # a dispute that is an inquiry only (a ``warning_`` status: no money taken yet)
    inquiry: bool = False


def verify_webhook(payload: bytes, signature_header: str | None, secret: str | None,
                   now: float | None = None) -> dict:
    """The verified event as a dict, or ``WebhookRejected``."""
    if not secret:
        raise WebhookRejected("Webhooks are not configured (BILLING_WEBHOOK_SECRET is unset).")
    try:
        stripe.Webhook.construct_event(payload, signature_header, secret,
                                       tolerance=TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise WebhookRejected("The webhook signature is not valid.") from exc
    except Exception as exc:  # authentic, but not a JSON event object
        raise WebhookRejected("The webhook body is not a JSON event.") from exc
    stamp = _signature_timestamp(signature_header or "")
    if stamp > (now or time.time()) + TOLERANCE_SECONDS:
        raise WebhookRejected("The webhook timestamp is in the future.")
    try:
        event = json.loads(payload)
    except ValueError as exc:
        raise WebhookRejected("The webhook body is not a JSON event.") from exc
    if not isinstance(event, dict) or not isinstance(event.get("id"), str) \
            or not isinstance(event.get("type"), str):
        raise WebhookRejected("The webhook body is not an event (id and type are required).")
    _check_event(event)
    return event


def _check_event(event: dict) -> None:
    if not 0 < len(event["id"]) <= MAX_ID_LENGTH:
        raise WebhookInvalid(f"id: must be 1 to {MAX_ID_LENGTH} characters.")
    if not 0 < len(event["type"]) <= MAX_TYPE_LENGTH:
        raise WebhookInvalid(f"type: must be 1 to {MAX_TYPE_LENGTH} characters.")
    hostile = hostile_text_errors(event)
    if hostile:
        field, messages = next(iter(_flat(hostile)))
        raise WebhookInvalid(f"{field}: {messages[0]}")


def _flat(errors, prefix=""):
    for key, value in errors.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            yield from _flat(value, path)
        else:
            yield path, value


def _signature_timestamp(header: str) -> int:
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key.strip() == "t":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _when(value, field: str) -> datetime | None:
    """A Unix timestamp (whole seconds, 0: none); anything else refuses the event."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMESTAMP:
        raise WebhookInvalid(f"{field}: not a Unix timestamp in seconds before 2100.")
    return datetime.fromtimestamp(value, UTC) if value else None


def _list(obj: dict, *path: str) -> list:
    """A Stripe list's items (``lines.data``): absent is none; not an array refuses the event."""
    value = dig(obj, *path)
    if value is None:
        return []
    if not isinstance(value, list):
        raise WebhookInvalid(f"{'.'.join(path)}: not a list.")
    return value


def _str(value, field: str) -> str | None:
    if isinstance(value, dict):  # an expanded object
        value = value.get("id")
    if not isinstance(value, str) or not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        raise WebhookInvalid(f"{field}: longer than {MAX_ID_LENGTH} characters.")
    return value


def _int(value, field: str) -> int | None:
    """An amount in cents: a JSON integer within an ``integer`` column, else refused."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT32_MAX:
        raise WebhookInvalid(f"{field}: not an amount in cents.")
    return value


def _metadata_sources(obj: dict) -> list[dict]:
    sources = [obj.get("metadata"), dig(obj, "subscription_details", "metadata"),
               dig(obj, "parent", "subscription_details", "metadata")]
    for line in _list(obj, "lines", "data"):
        if isinstance(line, dict):
            sources.append(line.get("metadata"))
    return [s for s in sources if isinstance(s, dict)]


def _from_metadata(obj: dict, key: str) -> str | None:
    for source in _metadata_sources(obj):
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _line_amount(value) -> int | None:
    """An invoice line's amount in cents: signed (a credit, such as a proration's for the
    unused time of the plan left behind, is negative), within an ``integer`` column."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) \
            or not -INT32_MAX <= value <= INT32_MAX:
        raise WebhookInvalid("lines.amount: not an amount in cents.")
    return value


def _tier_from_prices(obj: dict, price_to_tier: dict[str, str]) -> str | None:
    lines = [line for line in _list(obj, "lines", "data") or _list(obj, "items", "data")
             if isinstance(line, dict)]
    # the plan's own line before a proration's (``_invoice_period``)
    for line in sorted(lines, key=_proration):
        amount = _line_amount(dig(line, "amount"))
        if amount is not None and amount < 0:
            continue  # the credit for the unused time of the plan left behind
        price = (_str(dig(line, "price"), "price")
                 or _str(dig(line, "pricing", "price_details", "price"), "price")
                 or _str(dig(line, "plan"), "plan"))
        if price and price in price_to_tier:
            return price_to_tier[price]
    return None


def _proration(line) -> bool:
    """The line prorates a plan change over a period already begun (Stripe's ``proration``
    flag, on the line or, since API 2025-03, under its parent's details)."""
    return any(flag is True for flag in (
        dig(line, "proration"), dig(line, "parent", "subscription_item_details", "proration"),
        dig(line, "parent", "invoice_item_details", "proration")))


def _invoice_period(obj: dict) -> tuple[datetime | None, datetime | None]:
    """The service period an invoice pays for: its lines' period, else the invoice's own. A
    renewal that carries a plan change's proration (the billing portal prorates onto the
    next invoice) pays for the new period: the proration lines' dates, the rest of the old
    period, are left out unless the invoice holds nothing else (an upgrade's own invoice)."""
    periods = []
    for line in _list(obj, "lines", "data"):
        start = _when(dig(line, "period", "start"), "lines.period.start")
        end = _when(dig(line, "period", "end"), "lines.period.end")
        if start and end:
            periods.append((start, end, _proration(line)))
    periods = [p for p in periods if not p[2]] or periods
    if periods:
        return min(p[0] for p in periods), max(p[1] for p in periods)
    return _when(obj.get("period_start"), "period_start"), _when(obj.get("period_end"),
                                                                 "period_end")


def _event_kind(event_type: str, obj: dict) -> str:
    kind = KIND_BY_TYPE.get(event_type, IGNORED)
    if event_type == "checkout.session.completed" \
            and obj.get("payment_status") not in ("paid", "no_payment_required"):
        kind = IGNORED  # paid later: the invoice events carry the outcome
    return dispute_kind(event_type, obj, kind)


def _paid_tier(obj: dict, price_to_tier: dict[str, str]) -> str | None:
    tier = _tier_from_prices(obj, price_to_tier) or _from_metadata(obj, "sonicus_tier")
    return tier if tier in PAID_TIERS else None


def _common_fields(event: dict, obj: dict, kind: str, price_to_tier: dict[str, str]) -> dict:
    """The ``BillingNotice`` fields every event type fills the same way."""
    return {
        "event_id": event["id"], "event_type": event["type"], "kind": kind,
        "created": _when(event.get("created"), "created") or datetime.now(UTC),
        "user_id": _user_id(_from_metadata(obj, "sonicus_user_id")),
        "reference": _str(_from_metadata(obj, "sonicus_reference"), "sonicus_reference")
        or _str(obj.get("client_reference_id"), "client_reference_id"),
        "customer_id": _str(obj.get("customer"), "customer"),
        "tier": _paid_tier(obj, price_to_tier),
        "document_id": _str(obj.get("id"), "data.object.id"),
    }


def _user_id(value: str | None) -> int | None:
    """Our user id: ASCII digits of an ``integer`` (``"١٢"`` is not user 12), else refused."""
    if value is None:
        return None
    if not _USER_ID.fullmatch(value) or int(value) > INT32_MAX:
        raise WebhookInvalid("metadata.sonicus_user_id: not a user id.")
    return int(value)


def _payment_ids(obj: dict) -> dict:
    """An invoice's (or a checkout session's) charge and payment intent, where it says."""
    charge = _str(obj.get("charge"), "charge")
    intent = _str(obj.get("payment_intent"), "payment_intent")
    for paid in dig(obj, "payments", "data") or []:
        charge = charge or _str(dig(paid, "payment", "charge"), "payments.charge")
        intent = intent or _str(dig(paid, "payment", "payment_intent"), "payments.intent")
    return {"charge_id": charge, "payment_intent_id": intent}


def _charge_notice(common: dict, obj: dict, event_type: str) -> BillingNotice:
    """A refund (the charge itself) or a dispute (its ``charge``: an id, or expanded)."""
    charge = obj
    inquiry = False
    if event_type.startswith("charge.dispute."):
        status = obj.get("status")
        inquiry = event_type == "charge.dispute.created" and isinstance(status, str) \
            and status.startswith("warning_")
        charge = obj.get("charge") if isinstance(obj.get("charge"), dict) else {}
        common = {**common, "customer_id": common["customer_id"]
                  or _str(charge.get("customer"), "charge.customer")}
    charge_id = _str(obj.get("id"), "data.object.id") if charge is obj \
        else _str(obj.get("charge"), "charge")
    amount = _int(charge.get("amount") if charge else obj.get("amount"), "amount")
    refunded = _int(obj.get("amount_refunded"), "amount_refunded") if charge is obj else None
    if charge is obj and obj.get("refunded") is True and amount is not None:
        refunded = max(refunded or 0, amount)
    return BillingNotice(**{**common, "document_id": charge_id}, charge_id=charge_id,
                         payment_intent_id=_str(obj.get("payment_intent"), "payment_intent")
                         or _str(charge.get("payment_intent"), "charge.payment_intent"),
                         invoice_id=_str(charge.get("invoice"), "charge.invoice"),
                         amount_cents=amount, refunded_cents=refunded, inquiry=inquiry,
                         charged_at=_when(charge.get("created"), "charge.created"))


def _invoice_notice(common: dict, obj: dict) -> BillingNotice:
    start, end = _invoice_period(obj)
    subscription_id = _str(obj.get("subscription"), "subscription") or _str(
        dig(obj, "parent", "subscription_details", "subscription"), "subscription")
    amount = _int(obj.get("amount_paid"), "amount_paid") \
        if common["kind"] == PAYMENT_SUCCEEDED else _int(obj.get("amount_due"), "amount_due")
    return BillingNotice(**common, subscription_id=subscription_id, amount_cents=amount,
                         period_start=start, period_end=end, invoice_id=common["document_id"],
                         **_payment_ids(obj))


def parse_event(event: dict, price_to_tier: dict[str, str] | None = None) -> BillingNotice:
    """Read a Stripe-format event into a ``BillingNotice`` (kind ``ignored`` if not ours)."""
    event_type = event["type"]
    obj = dig(event, "data", "object")
    obj = obj if isinstance(obj, dict) else {}
    common = _common_fields(event, obj, _event_kind(event_type, obj), price_to_tier or {})
    if event_type == "checkout.session.completed":
        return BillingNotice(**common,
                             subscription_id=_str(obj.get("subscription"), "subscription"),
                             amount_cents=_int(obj.get("amount_total"), "amount_total"),
                             invoice_id=_str(obj.get("invoice"), "invoice"),
                             **_payment_ids({**obj, "charge": None}))
    if event_type.startswith("invoice."):
        return _invoice_notice(common, obj)
    if common["kind"] in (CHARGE_REFUNDED, CHARGE_DISPUTED, DISPUTE_WON):
        return replace(_charge_notice(common, obj, event_type), **own_refund(event, _int, _str))
    if event_type == "customer.subscription.updated":
        previous = dig(event, "data", "previous_attributes")
        cancel = obj.get("cancel_at_period_end")
        return BillingNotice(**{**common, "document_id": None},
                             subscription_id=_str(obj.get("id"), "data.object.id"),
                             cancel_at_period_end=cancel if isinstance(cancel, bool) else None,
                             changed=frozenset(previous) if isinstance(previous, dict) else None)
    if event_type.startswith("customer.subscription."):
        return BillingNotice(**{**common, "document_id": None},
                             subscription_id=_str(obj.get("id"), "data.object.id"),
                             period_end=_when(obj.get("ended_at"), "ended_at"))
    return BillingNotice(**common)
