"""The ``flask --app wsgi sonicus ...`` command group: one module per domain, all thin."""

from __future__ import annotations

from . import analytics, billing, catalog, dev, users  # noqa: F401  (each adds its commands)
from .base import fail, sonicus_cli

__all__ = ["fail", "sonicus_cli"]
