"""The money one ``charge.refunded`` notice gave back, read from what the notice carries.

Stripe's notice holds the charge as it stood when the refund was made: ``amount_refunded``,
its running total for the charge, and (recent API versions) ``refunds.data``, its refunds
newest first, each with its own ``id`` and ``amount``. The event's
``data.previous_attributes.amount_refunded`` is the running total before this refund. This
refund's own amount is the difference of the two totals; without ``previous_attributes``,
the amount of the newest refund listed; with neither, it is not known (None: the history
then counts it from the refunds of the charge recorded before, ``refunds._given_back``).

Amounts are read with the event's own checks (``events._int``, ``events._str``): a value
that is not a whole number of cents refuses the event as a whole. Totals that do not make
a refund (the total before it not below the total after it) are not used.
"""

from __future__ import annotations

from collections.abc import Callable


def dig(mapping, *path):
    """The value at ``path`` in nested mappings of a provider's notice, or None where a step
    is missing or not a mapping."""
    for key in path:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def own_refund(event: dict, cents: Callable, text: Callable) -> dict:
    """``{"refund_cents": this refund's own amount or None, "refund_id": its id or None}``;
    ``cents`` and ``text`` read an amount and an id (refusing the event if they cannot). A
    notice of anything but a refund (a dispute) says nothing of one."""
    if event.get("type") != "charge.refunded":
        return {}
    total = cents(dig(event, "data", "object", "amount_refunded"), "amount_refunded")
    before = cents(dig(event, "data", "previous_attributes", "amount_refunded"),
                   "previous_attributes.amount_refunded")
    listed = dig(event, "data", "object", "refunds", "data")
    refunds = [(text(r.get("id"), "refunds.id"), cents(r.get("amount"), "refunds.amount"))
               for r in (listed if isinstance(listed, list) else []) if isinstance(r, dict)]
    if total is not None and before is not None and before < total:
        given = total - before
        # this refund's id: the newest listed refund of that amount
        return {"refund_cents": given,
                "refund_id": next((id_ for id_, amount in refunds if amount == given), None)}
    if refunds and refunds[0][1] and (total is None or refunds[0][1] <= total):
        return {"refund_cents": refunds[0][1], "refund_id": refunds[0][0]}
    return {"refund_cents": None, "refund_id": None}
