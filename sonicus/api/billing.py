"""Routes of the billing area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("billing", __name__, url_prefix="/api", description="Billing.")
