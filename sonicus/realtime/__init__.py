"""Live updates: the broker (publish, one subscriber per process) and the /ws routes."""

from __future__ import annotations


def register_realtime(app) -> None:
    """Attach the WebSocket routes; nothing connects until the first socket arrives."""
