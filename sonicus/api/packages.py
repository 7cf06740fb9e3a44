"""Routes of the packages area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("packages", __name__, url_prefix="/api", description="Packages.")
