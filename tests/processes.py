"""Helpers for tests that start real server processes."""

from __future__ import annotations

import time

import requests


def wait_until_up(url: str, proc, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 2xx; fail when ``proc`` exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered")
