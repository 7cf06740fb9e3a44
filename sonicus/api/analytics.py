"""Routes of the analytics area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("analytics", __name__, url_prefix="/api", description="Analytics.")
