"""Routes of the sessions area (see API.md)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("sessions", __name__, url_prefix="/api", description="Sessions.")
