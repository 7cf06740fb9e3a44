"""Routes of the admin area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("admin", __name__, url_prefix="/api", description="Admin.")
