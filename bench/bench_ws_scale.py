"""Idle analytics sockets held by ONE socket process (``SONICUS_PROCESS=ws``: gevent), its
memory, one update to every socket, and /api/health meanwhile.

    .venv/bin/python bench/bench_ws_scale.py [--sockets 10000] [--users 1000] [--cycles 2]
        [--client-python PY]

Starts one process the production way (``gunicorn -c gunicorn.conf.py``, ``SONICUS_PROCESS=ws``,
one worker) and runs ``--cycles`` cycles of: /api/health alone; asyncio client processes
(``bench/ws_client.py``) open ``--sockets`` sockets, ``sockets/users`` per listener (each gets
its snapshot; ``WS_MAX_SOCKETS_PER_USER`` is that number); the worker's RSS; then
``--fan-outs`` times /api/health with the sockets open, and one update to every socket: the
product has no broadcast, so one ``analytics.updated`` per listener, published through Redis
at once (one pipeline), timed from the first publish until the last socket has its own, with
/api/health probed meanwhile; the sockets close. A last round of /api/health alone ends the
run: the rounds alone and with the sockets alternate. The clients need the ``websockets``
package (bench/requirements.txt), in ``--client-python``'s environment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.client import HTTPConnection, HTTPException
from pathlib import Path

from bench_analytics_common import (
    ROOT,
    bench_env,
    ensure_database,
    make_bench_app,
    percentile,
    reset_schema,
    spawn_gunicorn,
    stop_process,
    wait_http,
)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_ms(pid: int) -> float:
    """CPU time the process has used (user + system), in ms: what a step cost it, however
    busy the shared cores were."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def worker_pid(master_pid: int) -> int:
    return int(Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()[0])


def start_ws_process(extra_env: dict) -> tuple[subprocess.Popen, int]:
    log = open(os.environ.get("BENCH_WS_LOG", os.devnull), "w")  # noqa: SIM115
    return spawn_gunicorn(["-c", "gunicorn.conf.py", "wsgi:app"],
                          {**bench_env(), "SONICUS_PROCESS": "ws", **extra_env}, log=log)


class HealthProbe:
    """Sequential GET /api/health on one keep-alive connection; latencies in ms."""

    def __init__(self, port: int):
        self.port = port
        self.conn = HTTPConnection("127.0.0.1", port, timeout=30)

    def once(self) -> float:
        started = time.perf_counter()
        try:
            self.conn.request("GET", "/api/health")
            response = self.conn.getresponse()
        except (OSError, HTTPException):  # the server closed an idle keep-alive connection
            self.conn.close()
            self.conn = HTTPConnection("127.0.0.1", self.port, timeout=30)
            started = time.perf_counter()
            self.conn.request("GET", "/api/health")
            response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/api/health answered {response.status}")
        return (time.perf_counter() - started) * 1000

    def run(self, count: int, pause: float = 0.002) -> list[float]:
        out = []
        for _ in range(count):
            out.append(self.once())
            time.sleep(pause)
        return out

    def until(self, stop: threading.Event, out: list[float]) -> None:
        while not stop.is_set():
            out.append(self.once())
            time.sleep(0.002)

def summary(values: list[float]) -> str:
    return (f"p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms "
            f"({len(values)} requests)")


def leases_left(app) -> int:
    """Sockets still counted against their users' caps (in Redis)."""
    from sonicus.extensions import channel_prefix, get_redis

    with app.app_context():
        client = get_redis()
        return sum(client.zcard(key) for key in
                   client.scan_iter(match=channel_prefix(app.config) + "ws-sockets:*"))


def wait_quiet(pid: int, limit: float = 60.0) -> None:
    """Until the process spends under 5% of a core (its sockets' ends are handled)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = cpu_ms(pid)
        time.sleep(0.5)
        if cpu_ms(pid) - before < 25:
            return


def open_clients(args, python: str, port: int, shares: list[Path], per_user: int):
    """The client processes, once every socket is open: (clients, opened, seconds, failed)."""
    clients = [subprocess.Popen(
        [python, str(ROOT / "bench/ws_client.py"), f"ws://127.0.0.1:{port}/ws/analytics",
         str(path), str(per_user)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for path in shares]
    opened = failed = 0
    seconds = 0.0
    for client in clients:
        line = client.stdout.readline().split()
        opened += int(line[1])
        seconds = max(seconds, float(line[2]))
        failed += int(line[3])
    return clients, opened, seconds, failed


def close_clients(clients) -> None:
    for client in clients:
        try:
            client.stdin.write("close\n")
            client.stdin.flush()
        except Exception:
            pass
    for client in clients:
        try:
            client.wait(60)
        except Exception:
            client.kill()


def fan_out(app, ids: list[int], clients, pid: int, port: int, round_no: int) -> dict:
    """One update per listener, published at once; when the last socket had its own."""
    from sonicus.extensions import get_redis
    from sonicus.realtime.publish import user_events_channel

    during: list[float] = []
    stop = threading.Event()
    side = HealthProbe(port)
    prober = threading.Thread(target=side.until, args=(stop, during))
    for client in clients:
        client.stdin.write("updates\n")
        client.stdin.flush()
    time.sleep(0.5)  # the clients are reading
    prober.start()
    # what publish_to_user sends, one PUBLISH per listener, in one pipeline (the fan-out in
    # the socket process is measured, not this process's round trips)
    channel, pipe = user_events_channel(app.config), get_redis().pipeline(False)
    for uid in ids:
        text = json.dumps({"type": "analytics.updated",
                           "data": {"user_id": uid, "round": round_no}}, separators=(",", ":"))
        pipe.publish(channel, json.dumps({"user_id": uid, "text": text}, separators=(",", ":")))
    cpu_before = cpu_ms(pid)
    started = time.monotonic()
    pipe.execute()
    published = time.monotonic() - started
    lines = [client.stdout.readline().split() for client in clients]
    cpu = cpu_ms(pid) - cpu_before
    stop.set()
    prober.join()
    return {"delivered": sum(int(line[1]) for line in lines),
            "last_ms": (max(float(line[2]) for line in lines) - started) * 1000,
            "first_ms": (min(float(line[3]) for line in lines) - started) * 1000,
            "published_ms": published * 1000, "cpu_ms": cpu, "health": during}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=300, help="health probes per round")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--cycles", type=int, default=2,
                        help="rounds of: health alone, open the sockets, health with them "
                             "open and fan-outs, close them")
    parser.add_argument("--fan-outs", type=int, default=2, help="fan-outs per cycle")
    parser.add_argument("--client-python", default=os.environ.get("BENCH_WS_CLIENT_PYTHON",
                                                                  sys.executable),
                        help="an interpreter with the websockets package (bench/requirements.txt)")
    args = parser.parse_args()
    per_user = max(1, args.sockets // args.users)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    from sonicus import devtokens
    from sonicus.extensions import db
    from sonicus.models import User

    tokens = [devtokens.mint(app, email=f"ws-{i}@example.com") for i in range(args.users)]
    token_file = Path(tempfile.mkstemp(suffix=".tokens")[1])
    # several client processes: one asyncio loop reading 10,000 sockets is slower than
    # the server writing them
    shares = []
    for n in range(args.clients):
        path = token_file.with_name(f"{token_file.name}.{n}")
        path.write_text("\n".join(tokens[n::args.clients]))
        shares.append(path)
    web, port = start_ws_process({"WS_MAX_SOCKETS_PER_PROCESS": str(args.sockets + 100),
                                  "WS_MAX_SOCKETS_PER_USER": str(per_user)})
    idle: list[list[float]] = []
    loaded: list[list[float]] = []
    cycles, fan_outs = [], []
    clients = []
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        pid = worker_pid(web.pid)
        probe = HealthProbe(port)
        probe.run(50)  # warm
        ids: list[int] = []
        for cycle in range(args.cycles):
            idle.append(probe.run(args.probes))
            rss_idle = rss_kib(pid)
            clients, opened, seconds, failed = open_clients(args, args.client_python, port,
                                                            shares, per_user)
            wait_quiet(pid)
            rss_open = rss_kib(pid)
            if not ids:  # the listeners' rows exist once they have signed in
                with app.app_context():
                    ids = [uid for (uid,) in db.session.query(User.id).all()]
            cycles.append({"opened": opened, "seconds": seconds, "failed": failed,
                           "rss_idle": rss_idle, "rss_open": rss_open,
                           "per_socket": (rss_open - rss_idle) / max(1, opened)})
            for n in range(args.fan_outs):
                loaded.append(probe.run(args.probes))
                with app.app_context():
                    fan_outs.append(fan_out(app, ids, clients, pid, port,
                                            cycle * args.fan_outs + n))
                fan_outs[-1]["opened"] = opened
            close_clients(clients)
            clients = []
            wait_quiet(pid)
            cycles[-1]["leases_left"] = leases_left(app)
        idle.append(probe.run(args.probes))
        rss_end = rss_kib(pid)
    finally:
        close_clients(clients)
        stop_process(web)
        for path in token_file.parent.glob(token_file.name + "*"):
            path.unlink(missing_ok=True)

    print(f"one socket process (gunicorn -c gunicorn.conf.py, SONICUS_PROCESS=ws, gevent), "
          f"{args.users} listeners x {per_user} sockets, {args.cycles} cycles:")
    for n, c in enumerate(cycles):
        print(f"  cycle {n + 1}: opened {c['opened']} sockets in {c['seconds']:.1f} s "
              f"({c['failed']} failed), each got its snapshot; RSS {c['rss_idle'] / 1024:.0f} -> "
              f"{c['rss_open'] / 1024:.0f} MiB: {c['per_socket']:.1f} KiB per socket; "
              f"closed: {c.get('leases_left')} still counted against their users")
    print(f"  RSS after the last cycle's sockets closed: {rss_end / 1024:.0f} MiB")
    for n, f in enumerate(fan_outs):
        print(f"  fan-out {n + 1}: {len(ids)} publishes (one per listener, one pipeline, "
              f"{f['published_ms']:.0f} ms): {f['delivered']}/{f['opened']} sockets had their "
              f"update {f['last_ms']:.0f} ms after the first publish (first after "
              f"{f['first_ms']:.0f} ms); the socket process's CPU: {f['cpu_ms']:.0f} ms; "
              f"/api/health meanwhile: " + (summary(f["health"]) if f["health"] else "none done"))
    all_idle = [v for r in idle for v in r]
    all_loaded = [v for r in loaded for v in r]
    print("  /api/health p99 by round, alternating (alone | sockets open): "
          + " | ".join(f"{percentile(r, 99):.2f}" for r in idle) + " || "
          + " | ".join(f"{percentile(r, 99):.2f}" for r in loaded))
    print(f"  /api/health alone:         {summary(all_idle)}")
    print(f"  /api/health, sockets open: {summary(all_loaded)} "
          f"(p99 {percentile(all_loaded, 99) / percentile(all_idle, 99):.2f}x alone)")


if __name__ == "__main__":
    main()
