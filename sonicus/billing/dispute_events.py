"""The end of a dispute in Stripe's event format (``events`` reads the rest).

- ``charge.dispute.closed`` with ``status: "won"``, or ``charge.dispute.funds_reinstated`` →
  a dispute won (``DISPUTE_WON``): the money is ours again, the charge paid what it paid for.
  Stripe sends both for one win; each names the disputed ``charge`` (an id, or expanded).
- ``charge.dispute.closed`` in any other status (``lost``: the money stays with the bank;
  ``warning_closed``: an inquiry closed, no money was taken) changes nothing more: ignored.
"""

from __future__ import annotations

DISPUTE_WON = "charge_dispute_won"
IGNORED = "ignored"  # as ``events.IGNORED``

DISPUTE_KIND_BY_TYPE = {
    "charge.dispute.closed": DISPUTE_WON,
    "charge.dispute.funds_reinstated": DISPUTE_WON,
}


def dispute_kind(event_type: str, obj: dict, kind: str) -> str:
    """``kind`` as ``events`` read it, except for a dispute closed other than won."""
    if event_type == "charge.dispute.closed" and obj.get("status") != "won":
        return IGNORED
    return kind
