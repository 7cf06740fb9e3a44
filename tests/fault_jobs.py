"""Job functions used by the fault tests (run by a real worker process)."""

from __future__ import annotations

import os
import time

import redis
from flask import current_app


def slow_audited_write(marker: str, hold_seconds: float) -> str:
    """Write one audit row in a transaction held open for ``hold_seconds``.

    The first attempt announces its process id so the test can kill it mid-transaction.
    """
    from sonicus.extensions import db
    from sonicus.services import audit

    client = redis.Redis.from_url(current_app.config["REDIS_URL"])
    attempt = client.incr(f"fault-test:{marker}:attempts")
    audit.record(None, "fault.test", "job", marker, after={"attempt": attempt},
                 actor_label="fault-test")
    db.session.flush()  # the row is written, not committed
    client.set(f"fault-test:{marker}:pid", os.getpid())
    if attempt == 1:
        time.sleep(hold_seconds)
    db.session.commit()
    return marker


def announce_and_wait(marker: str, seconds: float) -> str:
    """Announce this process id, then take ``seconds`` (a job running when Redis goes away)."""
    client = redis.Redis.from_url(current_app.config["REDIS_URL"])
    client.set(f"fault-test:{marker}:pid", os.getpid())
    time.sleep(seconds)
    return marker


def fails_once(marker: str) -> str:
    """Fail the first attempt, succeed the next (a job retried by RQ's scheduler)."""
    client = redis.Redis.from_url(current_app.config["REDIS_URL"])
    if client.incr(f"fault-test:{marker}:attempts") == 1:
        raise RuntimeError("the first attempt fails")
    return marker
