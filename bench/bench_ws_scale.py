"""Idle analytics sockets held by ONE socket process (``SONICUS_PROCESS=ws``: gevent), its
memory, one update to every socket, and /api/health meanwhile.

    .venv/bin/python bench/bench_ws_scale.py [--sockets 10000] [--users 1000]

Starts one process the production way (``gunicorn -c gunicorn.conf.py``, ``SONICUS_PROCESS=ws``,
one worker), measures /api/health alone (idle p99), then has a separate asyncio process
(``bench/ws_client.py``) open ``--sockets`` sockets, ``sockets/users`` per listener (each gets
its snapshot; the per-user cap is raised to fit), measures the worker's RSS and /api/health
again, then publishes one update per listener through Redis and times until every socket has
it, with /api/health probed during the fan-out too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
    env = {**os.environ, **bench_env(), "SONICUS_PROCESS": "ws", **extra_env}
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "-c", "gunicorn.conf.py", "--bind", "127.0.0.1:0",
         "--no-control-socket", "--graceful-timeout", "3", "wsgi:app"],
        cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
        if found:
            port = int(found.group(1))
        if "Booting worker" in line:
            break
    if port is None:
        proc.kill()
        raise RuntimeError("gunicorn did not start")
    log = open(os.environ.get("BENCH_WS_LOG", os.devnull), "w")  # noqa: SIM115
    threading.Thread(target=lambda: [log.write(line) for line in proc.stderr], daemon=True).start()
    return proc, port


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sockets", type=int, default=10000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--probes", type=int, default=400)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    args = parser.parse_args()
    per_user = max(1, args.sockets // args.users)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ensure_database()
    app = make_bench_app()
    reset_schema(app)
    from sonicus import devtokens
    from sonicus.extensions import db, get_redis
    from sonicus.models import User
    from sonicus.realtime.publish import user_events_channel

    tokens = [devtokens.mint(app, email=f"ws-{i}@example.com") for i in range(args.users)]
    token_file = Path(tempfile.mkstemp(suffix=".tokens")[1])
    token_file.write_text("\n".join(tokens))
    web, port = start_ws_process({"WS_MAX_SOCKETS_PER_PROCESS": str(args.sockets + 100),
                                  "WS_MAX_SOCKETS_PER_USER": str(per_user)})
    clients = []
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        pid = worker_pid(web.pid)
        probe = HealthProbe(port)
        probe.run(50)  # warm
        idle = probe.run(args.probes)
        rss_idle = rss_kib(pid)

        # several client processes: one asyncio loop reading 10,000 sockets is slower than
        # the server writing them
        shares = [tokens[n::args.clients] for n in range(args.clients)]
        files = []
        for n, share in enumerate(shares):
            path = token_file.with_name(f"{token_file.name}.{n}")
            path.write_text("\n".join(share))
            files.append(path)
        clients = [subprocess.Popen(
            [sys.executable, str(ROOT / "bench/ws_client.py"),
             f"ws://127.0.0.1:{port}/ws/analytics", str(path), str(per_user)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for path in files]
        opened = failed = 0
        open_seconds = 0.0
        for client in clients:
            line = client.stdout.readline().split()
            opened += int(line[1])
            open_seconds = max(open_seconds, float(line[2]))
            failed += int(line[3])
        time.sleep(3)
        rss_open = rss_kib(pid)
        loaded = probe.run(args.probes)

        with app.app_context():
            ids = [uid for (uid,) in db.session.query(User.id).all()]
            during: list[float] = []
            stop = threading.Event()
            side = HealthProbe(port)
            prober = threading.Thread(target=side.until, args=(stop, during))
            for client in clients:
                client.stdin.write("updates\n")
                client.stdin.flush()
            time.sleep(0.5)  # the client is reading
            prober.start()
            # what publish_to_user sends, one PUBLISH per listener, in one pipeline (the
            # fan-out in the socket process is measured, not this process's round trips)
            channel, pipe = user_events_channel(app.config), get_redis().pipeline(False)
            for uid in ids:
                text = json.dumps({"type": "analytics.updated", "data": {"user_id": uid}},
                                  separators=(",", ":"))
                pipe.publish(channel, json.dumps({"user_id": uid, "text": text},
                                                 separators=(",", ":")))
            cpu_before = cpu_ms(pid)
            started = time.monotonic()
            pipe.execute()
            published = time.monotonic() - started
            lines = [client.stdout.readline().split() for client in clients]
            cpu_fan_out = cpu_ms(pid) - cpu_before
            stop.set()
            prober.join()
        delivered = sum(int(line[1]) for line in lines)
        last = max(float(line[2]) for line in lines)
        first = min(float(line[3]) for line in lines)
        fan_out = last - started
        rss_after = rss_kib(pid)
    finally:
        for client in clients:
            try:
                client.stdin.write("close\n")
                client.stdin.flush()
            except Exception:
                pass
        for client in clients:
            try:
                client.wait(30)
            except Exception:
                client.kill()
        stop_process(web)
        for path in token_file.parent.glob(token_file.name + "*"):
            path.unlink(missing_ok=True)

    per_socket = (rss_open - rss_idle) / max(1, opened)
    print(f"one socket process (gunicorn -c gunicorn.conf.py, SONICUS_PROCESS=ws, gevent), "
          f"{args.users} listeners x {per_user} sockets:")
    print(f"  opened {opened} sockets in {open_seconds:.1f} s ({failed} failed), "
          f"each got its snapshot")
    print(f"  RSS {rss_idle / 1024:.0f} MiB idle -> {rss_open / 1024:.0f} MiB with the sockets: "
          f"{per_socket:.1f} KiB per socket (after the update: {rss_after / 1024:.0f} MiB)")
    print(f"  one update per listener through Redis ({len(ids)} publishes in "
          f"{published * 1000:.0f} ms): {delivered}/{opened} sockets had it "
          f"{fan_out * 1000:.0f} ms after the first publish (the first had it after "
          f"{(first - started) * 1000:.0f} ms); the socket process spent {cpu_fan_out:.0f} ms "
          f"of CPU on it (with the health probes)")
    print(f"  /api/health alone:          {summary(idle)}")
    print(f"  /api/health, sockets open:  {summary(loaded)} "
          f"(p99 {percentile(loaded, 99) / percentile(idle, 99):.2f}x idle)")
    print(f"  /api/health, during fan-out: {summary(during)}" if during else
          "  /api/health, during fan-out: no probe completed")


if __name__ == "__main__":
    main()
