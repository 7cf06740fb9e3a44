"""Clients that never finish their request headers, against /api/health.

    .venv/bin/python -m bench.bench_slow_headers [--slow 500] [--probes 200]

Starts the web process type as production does (``gunicorn -c gunicorn.conf.py``: 2 gthread
processes), the socket process type (``SONICUS_PROCESS=ws``: gevent) and nginx with
``deploy/nginx/sonicus.conf`` in front of both (needs nginx). For each target (gthread
directly, gevent directly, through nginx) it opens ``--slow`` connections that send half a
request and stop, then times ``GET /api/health`` on fresh connections (a probe that gets no
answer within 5 s counts as failed).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, free_port, percentile


def start(env: dict, port: int, ws: bool = False) -> subprocess.Popen:
    extra = {"SONICUS_PROCESS": "ws", "SONICUS_WS_BIND": f"127.0.0.1:{port}"} if ws else {
        "SONICUS_BIND": f"127.0.0.1:{port}"}
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--no-control-socket",
         "wsgi:app"], cwd=ROOT, env={**os.environ, **env, **extra},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_nginx(web_port: int, ws_port: int, port: int) -> tuple[subprocess.Popen, Path]:
    folder = Path(tempfile.mkdtemp(prefix="sonicus-nginx-"))
    site = (ROOT / "deploy/nginx/sonicus.conf").read_text()
    site = (site.replace("server web:18100", f"server 127.0.0.1:{web_port}")
            .replace("server ws:18101", f"server 127.0.0.1:{ws_port}")
            .replace("listen 8080", f"listen 127.0.0.1:{port}")
            .replace("access_log /dev/stdout sonicus_json", "access_log off"))
    (folder / "site.conf").write_text(site)
    (folder / "nginx.conf").write_text(
        f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\nworker_processes 1;\n"
        f"worker_rlimit_nofile 20000;\nevents {{ worker_connections 8192; }}\n"
        f"http {{ client_body_temp_path {folder}; proxy_temp_path {folder}; "
        f"include {folder}/site.conf; }}\n")
    proc = subprocess.Popen(["nginx", "-p", str(folder), "-c", str(folder / "nginx.conf"),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    return proc, folder


def health_once(port: int, timeout: float = 5.0) -> float | None:
    started = time.perf_counter()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return None
                data += chunk
            if b" 200 " not in data.split(b"\r\n", 1)[0]:
                return None
    except OSError:
        return None
    return (time.perf_counter() - started) * 1000


def wait_up(port: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if health_once(port, 2) is not None:
            return
        time.sleep(0.3)
    raise RuntimeError(f"nothing answered on {port}")


def probe(port: int, count: int) -> tuple[list[float], int]:
    times, failed = [], 0
    for _ in range(count):
        took = health_once(port)
        if took is None:
            failed += 1
        else:
            times.append(took)
        time.sleep(0.005)
    return times, failed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--probes", type=int, default=200)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    env = {"SONICUS_ENV": "development", "DEV_TOKEN_ISSUER": "1", "LOG_LEVEL": "WARNING",
           "SONICUS_INSTANCE_PATH": tempfile.mkdtemp(prefix="sonicus-bench-"),
           "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="sonicus-bench-metrics-")}
    web_port, ws_port, nginx_port = free_port(), free_port(), free_port()
    procs = [start(env, web_port), start(env, ws_port, ws=True)]
    targets = {"gthread web processes (2 x 256 threads), direct": web_port,
               "gevent socket process, direct": ws_port}
    if shutil.which("nginx"):
        nginx, _folder = start_nginx(web_port, ws_port, nginx_port)
        procs.append(nginx)
        targets["nginx in front (deploy/nginx/sonicus.conf)"] = nginx_port
    results = []
    try:
        for port in targets.values():
            wait_up(port)
        for name, port in targets.items():
            idle, idle_failed = probe(port, args.probes)
            slow = []
            for _ in range(args.slow):
                conn = socket.create_connection(("127.0.0.1", port))
                conn.sendall(b"GET /api/health HTTP/1.1\r\nHost: bench\r\nX-Slow: ")
                slow.append(conn)
            time.sleep(1)
            loaded, failed = probe(port, args.probes)
            for conn in slow:
                conn.close()
            time.sleep(1)
            results.append((name, idle, idle_failed, loaded, failed))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(f"GET /api/health with {args.slow} connections holding unfinished headers "
          f"({args.probes} probes each, new connection per probe):")
    for name, idle, idle_failed, loaded, failed in results:
        shown = (f"p50 {percentile(loaded, 50):.1f} ms, p99 {percentile(loaded, 99):.1f} ms"
                 if loaded else "no answer")
        print(f"  {name}: idle p99 {percentile(idle, 99):.1f} ms ({idle_failed} failed); "
              f"with the slow clients {shown}, {failed}/{args.probes} probes failed")


if __name__ == "__main__":
    main()
