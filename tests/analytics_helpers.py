"""Arranging listening data for the analytics tests (rows written straight to the database)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sign_in(client, auth, email) -> int:
    """The user's id (created from the token's claims on first use)."""
    res = client.get("/api/user/profile", headers=auth(email))
    assert res.status_code == 200, res.json
    return res.json["data"]["id"]


def add_package(db_session, slug, *, category="sleep", minimum_tier="public", popularity=0,
                published=True, title=None):
    from sonicus.models import SoundPackage

    package = SoundPackage(slug=slug, title=title or slug.replace("-", " ").title(),
                           description=f"About {slug}", category=category,
                           minimum_tier=minimum_tier, published=published,
                           duration_seconds=600, track_count=1, popularity=popularity)
    db_session.add(package)
    db_session.commit()
    return package.id


def add_session(db_session, user_id, package_id, day: date, *, minutes=10, completed=True,
                mood_before=None, mood_after=None, status="ended", started_at=None):
    from sonicus.models import ListeningSession

    started = started_at or datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    row = ListeningSession(
        user_id=user_id, package_id=package_id, tier="starter", status=status,
        started_at=started, local_day=day,
        ended_at=None if status == "open" else started + timedelta(minutes=minutes),
        listened_seconds=int(minutes * 60), completed=completed,
        mood_before=mood_before, mood_after=mood_after)
    db_session.add(row)
    db_session.commit()
    return row.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway redis-server of our own, to stop and start at will."""

    def __init__(self):
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class LiveServer:
    """One web process (``python -m tests.live_server``) on a free port it picks itself."""

    def __init__(self, env: dict):
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.live_server"], cwd=ROOT,
                                     env=full_env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"live server did not start: {line!r}")
        self.port = int(line.split()[1])

    def ws_url(self, path="/ws/analytics") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http_url(self, path) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
