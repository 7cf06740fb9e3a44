"""Admin routes for the catalog and library assignment (see API.md, Admin)."""

from __future__ import annotations

from ..envelope import Blueprint

blp = Blueprint("admin_catalog", __name__, url_prefix="/api/admin",
                description="Catalog management (administrators).")
