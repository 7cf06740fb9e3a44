"""Where an idle socket's memory goes: the socket process against two baselines, in
alternating rounds.

    .venv/bin/python bench/bench_ws_memory.py [--sockets 2000] [--rounds 2] [--breakdown]
        [--client-python PY]

Each round opens ``--sockets`` idle sockets (one asyncio client process, permessage-deflate
offered like a browser) against, in turn:

- ``sonicus``: the socket process the production way (``gunicorn -c gunicorn.conf.py``,
  ``SONICUS_PROCESS=ws``, one gevent worker), 10 sockets per listener, each with its snapshot;
- ``flask-sock``: a bare flask-sock route under ``gunicorn -k gevent`` (``bench/bare_ws.py``),
  with permessage-deflate accepted (simple-websocket's default) and refused (as the API does);
- ``asyncio``: the ``websockets`` asyncio server, deflate accepted and refused;

and reports the serving process's RSS added per socket. With ``--breakdown`` the socket
process is also asked (``bench/ws_probe.py``) what the sockets added: objects by type, the
greenlets' saved stacks and, with tracemalloc on (a separate start: tracing inflates RSS),
the allocations still alive by source line. The client and the asyncio server need the
``websockets`` package (bench/requirements.txt): ``--client-python`` names an interpreter
that has it (default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

from bench_analytics_common import (
    ROOT,
    bench_env,
    ensure_database,
    make_bench_app,
    reset_schema,
    spawn_gunicorn,
    stop_process,
    wait_http,
)
from bench_ws_scale import rss_kib, worker_pid

PER_USER = 10


def start_gunicorn(argv: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    proc, port = spawn_gunicorn(argv, env)
    wait_http(f"http://127.0.0.1:{port}/api/health")
    return proc, port


def start_asyncio(python: str, deflate: bool) -> tuple[subprocess.Popen, int, int]:
    from bench.common import free_port

    port = free_port()
    proc = subprocess.Popen([python, str(ROOT / "bench/bare_ws.py"), str(port),
                             *([] if deflate else ["--no-deflate"])],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "READY":
        raise RuntimeError("the asyncio server did not start")
    return proc, port, proc.pid


def open_sockets(python: str, port: int, tokens: Path, per_token: int):
    client = subprocess.Popen([python, str(ROOT / "bench/ws_client.py"),
                               f"ws://127.0.0.1:{port}/ws/analytics", str(tokens),
                               str(per_token)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    fields = client.stdout.readline().split()
    return client, int(fields[1]), float(fields[2]), int(fields[3])


def close_sockets(client) -> None:
    try:
        client.stdin.write("close\n")
        client.stdin.flush()
        client.wait(60)
    except Exception:
        client.kill()


def probe(port: int, query: str) -> dict:
    with urlopen(f"http://127.0.0.1:{port}/__bench/memory?{query}", timeout=120) as response:
        return json.loads(response.read())


def measure(name: str, start, python: str, tokens: Path, per_token: int,
            query: str | None = None) -> dict:
    # the previous server's socket leases (per-user cap, 90 s) must not refuse this one's
    import redis
    from bench_analytics_common import BENCH_REDIS_URL

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    proc, port, pid = start()
    client = None
    try:
        if query is not None:
            probe(port, f"start{query}")
        time.sleep(1)
        before = rss_kib(pid)
        client, opened, seconds, failed = open_sockets(python, port, tokens, per_token)
        time.sleep(2)
        after = rss_kib(pid)
        report = probe(port, "report") if query is not None else None
    finally:
        if client is not None:
            close_sockets(client)
        stop_process(proc)
    per_socket = (after - before) / max(1, opened)
    print(f"  {name:<28} {opened:>6} sockets ({failed} failed, {seconds:.1f} s): RSS "
          f"{before / 1024:.0f} -> {after / 1024:.0f} MiB, {per_socket:.1f} KiB per socket",
          flush=True)
    return {"name": name, "per_socket": per_socket, "opened": opened, "report": report}


def print_breakdown(result: dict) -> None:
    report, n = result["report"], max(1, result["opened"])
    if "error" in report:
        print(report["error"])
        return
    print(f"\n{result['name']}: what {n} sockets added, per socket")
    for kind, info in report["greenlets"].items():
        before = report["greenlets_before"].get(kind, {"count": 0, "stack_bytes": 0})
        count = info["count"] - before["count"]
        stack = info["stack_bytes"] - before["stack_bytes"]
        print(f"  greenlets {kind}: {count / n:.2f} per socket, saved C stacks "
              f"{stack / n / 1024:.1f} KiB per socket")
    print("  objects (gc-tracked) per socket:")
    for kind, count in report["objects"].items():
        if count >= n // 2:
            print(f"    {count / n:6.2f}  {kind}")
    if "by_line" in report:
        print(f"  traced by tracemalloc: {report['traced_bytes'] / n / 1024:.1f} KiB per socket;"
              f" by line:")
        for row in report["by_line"][:30]:
            print(f"    {row['bytes'] / n:8.0f} B {row['blocks'] / n:6.1f} blocks  {row['where']}")
        print("  by stack (innermost last):")
        for row in report["by_stack"][:12]:
            print(f"    {row['bytes'] / n:8.0f} B  " + " <- ".join(reversed(row["where"][-4:])))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--trace-sockets", type=int, default=500,
                        help="sockets of the tracemalloc run (tracing is slow)")
    parser.add_argument("--only", default="", help="comma-separated targets to run")
    parser.add_argument("--client-python", default=os.environ.get("BENCH_WS_CLIENT_PYTHON",
                                                                  sys.executable))
    args = parser.parse_args()
    python = args.client_python
    users = max(1, args.sockets // PER_USER)

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    from sonicus import devtokens

    tokens = Path(tempfile.mkstemp(suffix=".tokens")[1])
    tokens.write_text("\n".join(devtokens.mint(app, email=f"ws-{i}@example.com")
                                for i in range(users)))
    ws_env = {**bench_env(), "SONICUS_PROCESS": "ws",
              "WS_MAX_SOCKETS_PER_PROCESS": str(args.sockets + 100),
              "WS_MAX_SOCKETS_PER_USER": str(PER_USER)}
    bare_argv = ["-c", "bench/no_config.py", "-k", "gevent", "-w", "1",
                 "--worker-connections", str(args.sockets + 1000), "bench.bare_ws:app"]

    def sonicus(app_module="wsgi:app"):
        def start():
            # a probe's answer blocks the worker's loop (and its heartbeat) for a while
            proc, port = start_gunicorn(["-c", "gunicorn.conf.py", "--timeout", "600",
                                         app_module], ws_env)
            return proc, port, worker_pid(proc.pid)
        return start

    def bare_flask_sock(deflate: bool):
        def start():
            proc, port = start_gunicorn(bare_argv, {"BARE_WS_DEFLATE": "1" if deflate else "0"})
            return proc, port, worker_pid(proc.pid)
        return start

    targets = [
        ("sonicus", sonicus(), PER_USER),
        ("flask-sock, deflate", bare_flask_sock(True), PER_USER),
        ("flask-sock, no deflate", bare_flask_sock(False), PER_USER),
        ("asyncio, deflate", lambda: start_asyncio(python, True), PER_USER),
        ("asyncio, no deflate", lambda: start_asyncio(python, False), PER_USER),
    ]
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        targets = [t for t in targets if t[0] in wanted]
    results: dict[str, list[float]] = {}
    try:
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}:", flush=True)
            for name, start, per_token in targets:
                result = measure(name, start, python, tokens, per_token)
                results.setdefault(name, []).append(result["per_socket"])
        if args.breakdown:
            print("breakdown runs:", flush=True)
            result = measure("sonicus (probe)", sonicus("bench.ws_probe:app"), python, tokens,
                             PER_USER, "")
            print_breakdown(result)
            small = Path(f"{tokens}.small")
            small.write_text("\n".join(tokens.read_text().split()[:args.trace_sockets // PER_USER]))
            try:
                result = measure("sonicus (probe, tracemalloc)", sonicus("bench.ws_probe:app"),
                                 python, small, PER_USER, "&trace")
            finally:
                small.unlink(missing_ok=True)
            print_breakdown(result)
    finally:
        tokens.unlink(missing_ok=True)
    print(f"\nRSS per idle socket, {args.sockets} sockets, {args.rounds} alternating rounds "
          f"(median of rounds; the rounds):")
    for name, values in results.items():
        ordered = sorted(values)
        print(f"  {name:<24} {ordered[len(ordered) // 2]:6.1f} KiB  "
              f"({', '.join(f'{v:.1f}' for v in values)})")


if __name__ == "__main__":
    main()
