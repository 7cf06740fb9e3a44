"""Container health checks: ``python -m sonicus.healthcheck web|ws|worker``; exit 0 when healthy.

- ``web``: ``GET /api/health`` on ``SONICUS_BIND`` answers 200 (the process serves); ``ws``:
  the same on ``SONICUS_WS_BIND`` (the socket process, ``SONICUS_PROCESS=ws``).
- ``worker``: an RQ worker of this host (container or pod) has refreshed its heartbeat in
  Redis recently. RQ refreshes it while waiting for jobs and while running one; a worker that
  hangs or died stops refreshing and the check fails.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from datetime import UTC, datetime

import redis
from rq import Worker

from config import load_config

# RQ refreshes an idle worker's heartbeat every ``worker_ttl - 15`` s (420 s by default) and
# lets the key expire 60 s after ``worker_ttl``: older than this means stuck or gone.
HEARTBEAT_MAX_AGE_SECONDS = 480


def web_is_healthy(bind: str | None = None, timeout: float = 3.0) -> bool:
    host, _, port = (bind or os.environ.get("SONICUS_BIND", "127.0.0.1:18100")).rpartition(":")
    host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/api/health", timeout=timeout) as res:
            return res.status == 200
    except OSError:
        return False


def worker_is_healthy(redis_url: str, hostname: str | None = None,
                      max_age: float = HEARTBEAT_MAX_AGE_SECONDS) -> bool:
    hostname = hostname or socket.gethostname()
    connection = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        workers = Worker.all(connection=connection)
    except redis.RedisError:
        return False
    now = datetime.now(UTC)
    for worker in workers:
        beat = worker.last_heartbeat
        if worker.hostname != hostname or beat is None:
            continue
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=UTC)
        if (now - beat).total_seconds() <= max_age:
            return True
    return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    what = argv[0] if argv else "web"
    if what == "web":
        return 0 if web_is_healthy() else 1
    if what == "ws":
        return 0 if web_is_healthy(os.environ.get("SONICUS_WS_BIND", "127.0.0.1:18101")) else 1
    if what == "worker":
        url = load_config().get("REDIS_URL")
        return 0 if url and worker_is_healthy(url) else 1
    print("usage: python -m sonicus.healthcheck web|ws|worker", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
