"""Routes of the library area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("library", __name__, url_prefix="/api", description="Library.")
