"""Routes of the subscription area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("subscription", __name__, url_prefix="/api", description="Subscription.")
