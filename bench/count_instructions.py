"""Instructions per request of one route, in process, through gunicorn's own request path.

    .venv/bin/python -m bench.count_instructions [--app wsgi:app] [--path /api/user/profile]
        [--requests 200] [--database NAME]      (runs itself under valgrind --tool=callgrind)
    ... --start [--idempotency-key]   a session start (POST /api/user/sessions by a pro user,
                                      the demo catalog's first package), with a new key each
    ... --calls          the Python functions called per request (no valgrind)
    ... --cprofile FILE  a cProfile of the requests (no valgrind)

The app is served as ``gunicorn -c gunicorn.conf.py`` serves it (its settings, its logger
class and log configuration, lines to /dev/null), one keep-alive connection (a socket pair)
through gthread's ``ThreadWorker.handle``: the HTTP parser, the WSGI environ, the app, the
response and the access hook, with no thread hand-offs. Only the measured requests are
counted (after ``--warm`` requests, a client request turns callgrind's instrumentation on and
off), on the thread that serves them: the figure is the instructions that thread ran divided
by ``--requests``. Under valgrind a request takes some fifty times longer than it does
natively, so work done every so many seconds (the rate limits' reconciliation with Redis,
the caller cache's expiry) would be counted many times more often per request than a
server does it; it is put off past the measurement instead.

The Sonicus app gets the settings of ``bench.bench_rest`` (development token issuer, rate
limits counted in Redis, JSON access log at INFO; BENCH_PG, BENCH_REDIS); a route of another
app (``bench.bare_app:app``) is asked without a token.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import itertools
import json
import os
import runpy
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

from bench.common import ROOT

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
PERIODIC_SECONDS = "3600"  # past the measurement (see the docstring)

_CG_SOURCE = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS_AT("measured"); }
"""


def _callgrind_switch(folder: str):
    """(start, stop) as client requests to callgrind (no-ops outside valgrind)."""
    source, library = os.path.join(folder, "cg.c"), os.path.join(folder, "libcg.so")
    with open(source, "w") as f:
        f.write(_CG_SOURCE)
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", library, source], check=True)
    lib = ctypes.CDLL(library)
    return lib.cg_start, lib.cg_stop


def _settings(database: str) -> dict:
    return {"SONICUS_ENV": "development", "DATABASE_URL": f"{PG}/{database}",
            "REDIS_URL": REDIS, "DEV_TOKEN_ISSUER": "1",
            "SONICUS_INSTANCE_PATH": tempfile.mkdtemp(prefix="sonicus-cg-instance-"),
            "PUBLIC_BASE_URL": "http://127.0.0.1:18100", "LOG_LEVEL": "INFO",
            "RATELIMIT_ENABLED": "1", "RATELIMIT_PER_USER": "100000/second;10000000/minute",
            "RATELIMIT_PER_IP": "100000/second;10000000/minute",
            "AUTH_USER_CACHE_SECONDS": PERIODIC_SECONDS,
            "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="sonicus-cg-metrics-")}


def _first_package_id() -> int:
    """The first package of the seeded catalog (a start's package)."""
    import psycopg2

    with psycopg2.connect(os.environ["DATABASE_URL"]) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT min(id) FROM sonicus.sound_packages WHERE published")
        return cursor.fetchone()[0]


def _gunicorn(app_spec: str):
    """gunicorn's config from gunicorn.conf.py, its logger, and a gthread worker serving
    ``app_spec`` (loaded as gunicorn loads it)."""
    from gunicorn.config import Config
    from gunicorn.util import import_app
    from gunicorn.workers.gthread import ThreadWorker

    cfg = Config()
    for key, value in runpy.run_path(str(ROOT / "gunicorn.conf.py")).items():
        if key in cfg.settings:
            cfg.set(key.lower(), value)
    log = cfg.logger_class(cfg)
    app = import_app(app_spec)
    worker = ThreadWorker(0, os.getppid(), [], None, 60, cfg, log)
    worker.wsgi = app
    limiter = getattr(app, "extensions", {}).get("sonicus_rate_limiter")
    if limiter is not None:
        limiter.SYNC_SECONDS = float(PERIODIC_SECONDS)
    broker = getattr(app, "extensions", {}).get("sonicus_broker")
    if broker is not None:  # post_worker_init: the caller cache needs the invalidation feed
        broker.start()
        cache = app.extensions.get("sonicus_caller_cache")
        deadline = time.time() + 30
        while cache is not None and not cache.enabled and time.time() < deadline:
            time.sleep(0.05)
    return cfg, worker


def _under_valgrind(argv: list[str], requests: int) -> None:
    folder = tempfile.mkdtemp(prefix="sonicus-cg-")
    out = os.path.join(folder, "callgrind.out")
    subprocess.run(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    "--separate-threads=yes", f"--callgrind-out-file={out}",
                    f"--log-file={folder}/valgrind.log", sys.executable, "-m",
                    __spec__.name, "--measure", *argv], cwd=ROOT, check=True)
    totals = {}
    for path in glob.glob(out + ".*"):
        with open(path) as f:
            text = f.read()
        if "Client Request: measured" not in text:
            continue
        thread = int(text.split("\nthread: ", 1)[1].split()[0])
        totals[thread] = int(text.split("\ntotals: ", 1)[1].split()[0])
    print(f"  {totals[1] / requests:,.0f} instructions per request on the serving thread "
          f"(callgrind files: {out}.*)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", default="wsgi:app")
    parser.add_argument("--path", default="/api/user/profile")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warm", type=int, default=300)
    parser.add_argument("--database", default="bench_auth")
    parser.add_argument("--calls", action="store_true",
                        help="list the Python functions called per request instead")
    parser.add_argument("--cprofile", metavar="FILE",
                        help="write a cProfile of the measured requests to FILE instead")
    parser.add_argument("--native", action="store_true",
                        help="time the requests natively instead (best of 5 runs of --requests)")
    parser.add_argument("--start", action="store_true",
                        help="count session starts (POST /api/user/sessions) instead")
    parser.add_argument("--idempotency-key", action="store_true",
                        help="with --start: each start sends a new Idempotency-Key")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (args.measure or args.calls or args.cprofile or args.native):
        _under_valgrind(sys.argv[1:], args.requests)
        return

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    os.environ.update(_settings(args.database))
    token = None
    if args.app.startswith("wsgi:"):
        flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
        subprocess.run([*flask, "db", "upgrade"], check=True, capture_output=True)
        tier = ["--tier", "pro"] if args.start else []  # pro: no daily limit
        token = subprocess.run([*flask, "sonicus", "dev-token", "--email",
                                "bench@example.com", *tier], check=True, capture_output=True,
                               text=True).stdout.strip()
        if args.start:
            subprocess.run([*flask, "sonicus", "seed", str(ROOT / "sonicus" / "data" /
                                                          "demo_catalog.yaml")],
                           check=True, capture_output=True)
    out = os.fdopen(os.dup(1), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the JSON log lines, as the benchmark sends them

    from gunicorn.workers.gthread import TConn

    cfg, worker = _gunicorn(args.app)
    server, client = socket.socketpair()
    conn = TConn(cfg, server, ("127.0.0.1", 40000), ("127.0.0.1", 18100))
    # what wrk sends
    head = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:18100\r\n"
    body = b""
    if args.start:
        body = json.dumps({"package_id": _first_package_id()}).encode()
        head = (f"POST /api/user/sessions HTTP/1.1\r\nHost: 127.0.0.1:18100\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n")
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    keys = itertools.count()
    client.setblocking(False)

    def one() -> bytes:
        key = (f"Idempotency-Key: bench-{os.getpid()}-{next(keys)}\r\n"
               if args.idempotency_key else "")
        client.sendall((head + key + "\r\n").encode() + body)
        if not worker.handle(conn):
            raise SystemExit("the connection was not kept alive")
        answer = b""
        while True:
            try:
                answer += client.recv(65536)
            except BlockingIOError:
                return answer

    first = one()
    if first.split(b" ", 2)[1] != (b"201" if args.start else b"200"):
        raise SystemExit(f"{args.path} answered {first!r}")
    for _ in range(args.warm):
        one()

    if args.calls:
        calls: Counter = Counter()

        def profile(frame, event, arg):
            if event == "call":
                code = frame.f_code
                calls[f"{os.path.relpath(code.co_filename, ROOT)}:{code.co_name}"] += 1
            elif event == "c_call":
                calls[f"<c> {getattr(arg, '__qualname__', arg)}"] += 1

        sys.setprofile(profile)
        for _ in range(args.requests):
            one()
        sys.setprofile(None)
        total = sum(count for name, count in calls.items() if not name.startswith("<c>"))
        print(f"{args.path}: {total / args.requests:.0f} Python calls per request", file=out)
        for name, count in sorted(calls.items(), key=lambda item: -item[1]):
            print(f"{count / args.requests:8.2f}  {name}", file=out)
        return
    if args.native:
        runs = []
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(args.requests):
                one()
            runs.append((time.perf_counter() - began) / args.requests * 1e6)
        print(f"  {min(runs):.1f} us per request natively (best of 5 runs of {args.requests}: "
              f"{', '.join(f'{r:.1f}' for r in runs)})", file=out)
        out.flush()
        os._exit(0)
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            one()
        profiler.disable()
        profiler.dump_stats(args.cprofile)
        return

    start, stop = _callgrind_switch(tempfile.mkdtemp(prefix="sonicus-cg-lib-"))
    began = time.perf_counter()
    start()
    for _ in range(args.requests):
        one()
    stop()
    seconds = time.perf_counter() - began
    print(f"{args.app} {args.path}: {args.requests} requests, answers of {len(first)} bytes, "
          f"{seconds / args.requests * 1e6:.0f} us each under valgrind", file=out)
    out.flush()
    os._exit(0)  # the broker's and the log flusher's threads


if __name__ == "__main__":
    main()
