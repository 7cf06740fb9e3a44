"""Commands of the analytics domain."""

from __future__ import annotations

from . import sonicus_cli  # noqa: F401
