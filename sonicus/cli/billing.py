"""Commands of the billing domain."""

from __future__ import annotations

from . import sonicus_cli  # noqa: F401
