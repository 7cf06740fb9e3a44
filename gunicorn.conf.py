"""gunicorn settings for the API (read by `gunicorn wsgi:app` from this folder).

Two process types from the same code and settings:
- web (the default): gthread, for the REST API. A socket that reaches it still works but
  holds a thread, so it keeps a small cap (WS_MAX_SOCKETS_PER_PROCESS, default 192 here).
- ws (`SONICUS_PROCESS=ws`): gevent, for `/ws/` (the front proxy routes it there). A socket
  costs one greenlet, not a thread; one process holds ten thousand. The app is the
  same create_app; psycopg2 waits cooperatively (psycogreen) and the file descriptor limit is
  raised to the hard limit. Figures: the README's Figures table; what had to change for
  that: bench/README.md, "The socket process type: what bit".
Database connections: both types read the same pool settings (DATABASE_POOL_SIZE, ...), each
process its own pools; WEB_CONCURRENCY and WS_CONCURRENCY multiply them (README, "Database
connections": the processes together stay under PostgreSQL's max_connections).
Access logs carry the path only: query strings (a socket's ?access_token=) never reach them.
Metrics: every worker writes to PROMETHEUS_MULTIPROC_DIR (a master starting drops what this
host's dead processes left there); a worker that exits is marked dead so its open-socket
gauge stops counting.
"""

import glob
import importlib
import logging
import os
import resource
import signal
import socket
import tempfile
import threading

process_type = os.environ.get("SONICUS_PROCESS", "web").strip().lower()
if process_type not in ("web", "ws"):
    raise SystemExit(f"SONICUS_PROCESS must be web or ws, got {process_type!r}")

if process_type == "ws":
    bind = os.environ.get("SONICUS_WS_BIND", "127.0.0.1:18101")
    workers = int(os.environ.get("WS_CONCURRENCY", "1"))
    worker_class = "gevent"
    os.environ.setdefault("WS_MAX_SOCKETS_PER_PROCESS", "10000")
    # every socket, plus room for health probes and handshakes refused with 1013
    worker_connections = int(os.environ["WS_MAX_SOCKETS_PER_PROCESS"]) + 1000
    _soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _wanted = worker_connections + 1000
    if _hard == resource.RLIM_INFINITY or _hard >= _wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(_soft, _wanted), _hard))
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))
else:
    bind = os.environ.get("SONICUS_BIND", "127.0.0.1:18100")
    workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
    worker_class = "gthread"
    # A socket that reaches a web process holds a thread: keep SONICUS_THREADS above
    # WS_MAX_SOCKETS_PER_PROCESS so HTTP requests always find a free thread.
    os.environ.setdefault("WS_MAX_SOCKETS_PER_PROCESS", "192")
    threads = int(os.environ.get("SONICUS_THREADS", "256"))
timeout = 60
# A header field may be twice the API's longest token (sonicus.auth.MAX_TOKEN_BYTES, 16 KiB):
# tokens over gunicorn's default 8 KiB sign in, and a longer one gets the API's 431 envelope
# naming the Authorization header instead of gunicorn's own plain-text error. (The request
# line stays at 8 KiB: a socket's token that long goes in the bearer subprotocol header.)
limit_request_field_size = 32 * 1024
graceful_timeout = 30
keepalive = 5
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%({x-request-id}o)s"'

# Before anything imports prometheus_client (the app is loaded in each worker, after the fork).
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR",
                      os.path.join(tempfile.gettempdir(), "sonicus-metrics"))

# One log format: gunicorn's error and access logs and everything the app logs, as JSON lines
# on stderr (sonicus/logs.py). The app writes one access line per request (with the client
# behind the proxies, the user and the request id); gunicorn's own access line says less
# (its client is the proxy) and is off unless SONICUS_GUNICORN_ACCESS_LOG=1.
# The threaded web processes write their lines in batches (at most 0.1 s late; WARNING and
# above at once): a write per access line was a system call per request under the handler's
# lock, which the request threads queued behind (bench/README.md, "The profile GET under
# gunicorn, third cut").
logconfig_dict = importlib.import_module("sonicus.logs").gunicorn_logconfig(
    access=os.environ.get("SONICUS_GUNICORN_ACCESS_LOG", "").lower() in ("1", "true", "yes"),
    level=os.environ.get("LOG_LEVEL", "INFO").upper(), batched=process_type == "web")


class AccessLineWhenLogged(importlib.import_module("gunicorn.glogging").Logger):
    """gunicorn's logger, minus the work of an access line nobody reads: gunicorn gathers the
    line's atoms (every request and response header and every environ entry, lowercased and
    escaped) whenever any log configuration is given, and only then finds ``gunicorn.access``
    disabled (the default here: the app writes its own access line)."""

    def access(self, resp, req, environ, request_time):
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


logger_class = AccessLineWhenLogged


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def on_starting(server):
    # Counts of this host's previous run would be added to this one's; files of other hosts
    # (workers sharing the directory in compose) are theirs, and so are those of this host's
    # processes still running (the other process type, an RQ worker: one directory per host).
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, f"*_{socket.gethostname()}-*.db")):
        pid = stale[:-len(".db")].rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _running(int(pid)):
            continue
        os.remove(stale)


def when_ready(server):
    bind_metrics = os.environ.get("METRICS_BIND")
    if bind_metrics:
        # Imported here, not above: the environment must be set before prometheus_client loads.
        metrics = importlib.import_module("sonicus.metrics")
        metrics.serve_metrics(bind_metrics, os.environ.get("REDIS_URL"))
        server.log.info("metrics on http://%s/metrics", bind_metrics)


def child_exit(server, worker):
    importlib.import_module("sonicus.metrics").mark_process_dead(worker.pid)


CLOSE_GOING_AWAY = 1001


def post_worker_init(worker):
    """Each web process subscribes to live updates and caller invalidations from its start
    (after the fork: the subscriber thread belongs to this process). On SIGTERM, it closes its
    sockets with 1001 at once (clients reconnect to another process) instead of holding them
    until the graceful timeout; then gunicorn's own handler stops accepting and lets in-flight
    requests finish."""
    if process_type == "ws":
        # psycopg2 waits for the database through gevent (before any connection is made)
        importlib.import_module("psycogreen.gevent").patch_psycopg()
        worker.log.info("socket process: gevent worker, psycopg2 waits through gevent")
    broker = getattr(worker.wsgi, "extensions", {}).get("sonicus_broker")
    if broker is not None:
        broker.start()
    stop = signal.getsignal(signal.SIGTERM)

    def close_sockets_then_stop(signum, frame):
        broker = getattr(worker.wsgi, "extensions", {}).get("sonicus_broker")
        if broker is None:
            pass
        elif process_type == "ws":
            # Under gevent the handler may run inside the event loop, where nothing may block
            # (starting a thread waits for it to start): a greenlet of its own.
            importlib.import_module("gevent").spawn(broker.close_all, CLOSE_GOING_AWAY,
                                                    "server shutting down")
        else:
            # off the signal handler: a close waits for each socket's send lock
            threading.Thread(target=broker.close_all, name="sonicus-close-sockets", daemon=True,
                             args=(CLOSE_GOING_AWAY, "server shutting down")).start()
        if callable(stop):
            stop(signum, frame)

    signal.signal(signal.SIGTERM, close_sockets_then_stop)
