"""gunicorn settings for the API (read by `gunicorn wsgi:app` from this folder).

gthread: each open WebSocket holds a thread, so threads are plentiful; see the README figures.
Access logs carry the path only: query strings (a socket's ?access_token=) never reach them.
"""

import os

bind = os.environ.get("SONICUS_BIND", "127.0.0.1:18100")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
# Each open socket holds a thread: keep SONICUS_THREADS above WS_MAX_SOCKETS_PER_PROCESS
# (default 192) so HTTP requests always find a free thread.
threads = int(os.environ.get("SONICUS_THREADS", "256"))
timeout = 60
graceful_timeout = 30
keepalive = 5
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms "%({x-request-id}o)s"'


def post_worker_init(worker):
    """Each web process subscribes to live updates and caller invalidations from its start
    (after the fork: the subscriber thread belongs to this process)."""
    broker = getattr(worker.wsgi, "extensions", {}).get("sonicus_broker")
    if broker is not None:
        broker.start()
