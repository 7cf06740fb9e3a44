"""The baseline for a write: a bare Flask route that does one INSERT and one COMMIT through
psycopg2 (the API's driver) on a pooled connection, served the same way as the API.

``POST /bare-insert`` with ``{"user_id": .., "package_id": ..}`` inserts one row shaped like a
started listening session into ``bench_bare.sessions`` (the columns of ``user_sessions``, with
its indexes or its primary key only, no foreign keys) and answers 201 with its id in the
envelope.
``BARE_INSERT_DSN`` (default: ``DATABASE_URL``) names the database; ``bench_start_vs_insert``
creates the table.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

from flask import Flask, jsonify, request
from psycopg2.pool import ThreadedConnectionPool

app = Flask(__name__)
TABLE = "bench_bare.sessions"
INSERT = (f"INSERT INTO {TABLE} (user_id, package_id, tier, status, started_at, local_day, "
          "max_duration_seconds, listened_seconds, completed, counts_toward_quota, mood_before) "
          "VALUES (%s, %s, 'premium', 'open', %s, %s, 3600, 0, false, true, %s) "
          "RETURNING id")

_pool: ThreadedConnectionPool | None = None
_pool_lock = threading.Lock()


def pool() -> ThreadedConnectionPool:
    """One pool per process (made after the fork), as large as the API's (10 + 20 overflow)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                dsn = os.environ.get("BARE_INSERT_DSN") or os.environ["DATABASE_URL"]
                _pool = ThreadedConnectionPool(1, 30, dsn)
    return _pool


@app.get("/api/health")
def health():
    return jsonify({"status": "ok"})


@app.post("/bare-insert")
def bare_insert():
    body = request.get_json()
    now = datetime.now(UTC)
    connections = pool()
    conn = connections.getconn()
    try:
        with conn.cursor() as cur:
            cur.execute(INSERT, (body["user_id"], body["package_id"], now, now.date(),
                                 body.get("mood_before")))
            row_id = cur.fetchone()[0]
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        connections.putconn(conn)
    return jsonify({"success": True, "data": {"id": row_id, "started_at": now.isoformat()},
                    "message": None, "errors": None, "pagination": None}), 201
