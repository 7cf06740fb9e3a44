"""Authenticated GET /api/user/profile under the shipped production configuration, against a
bare Flask JSON route and the FastAPI peer, in alternating rounds of one run.

    .venv/bin/python -m bench.bench_rest [--rounds 3] [--duration 8] [--peer-venv PATH]
        [--database NAME] [--peer-database NAME]   (BENCH_PG: the server, BENCH_REDIS: Redis)

Sonicus and the bare route both run as production runs them: ``gunicorn -c gunicorn.conf.py``
(2 gthread processes, 256 threads, JSON logs at INFO, sent to /dev/null), rate limits on and
counted in Redis with limits the benchmark token never reaches. The peer
(``shared/bench/peer/fastapi_profile.py``: FastAPI, uvicorn, asyncpg, PyJWT) runs with
``uvicorn --workers 2`` against the same issuer's JWKS when ``--peer-venv`` names a
virtualenv that has it (see its README). Load: ``wrk -t2 -c32 -d<duration>s`` when installed,
else bench.common.run_load. Each round runs bare, peer, Sonicus, in an order that alternates.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench.common import ROOT, ensure_database, free_port, run_load

PG = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/13")
PEER_DIR = ROOT.parent / "shared/bench/peer"
if not PEER_DIR.is_dir():
    PEER_DIR = Path("/work/shared/bench/peer")


def wait_up(port: int, path: str, timeout: float = 60) -> None:
    import http.client

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing answered on port {port}")


def start_gunicorn(app: str, env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind",
         f"127.0.0.1:{port}", "--no-control-socket", app],
        cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)


def load(port: int, path: str, token: str | None, duration: float, connections: int) -> float:
    """Requests per second (non-2xx answers are reported)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if shutil.which("wrk"):
        cmd = ["wrk", "-t2", f"-c{connections}", f"-d{round(duration)}s", "--latency"]
        if token:
            cmd += ["-H", f"Authorization: Bearer {token}"]
        out = subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True,
                             text=True, check=True).stdout
        failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        if failed:
            print(f"  ({failed.group(1)} non-2xx answers on {path} at port {port})",
                  file=sys.stderr)
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    result = run_load(port, "GET", path, headers=headers, concurrency=connections,
                      duration=duration)
    if result["non_2xx"]:
        print(f"  (non-2xx answers on port {port}: {result['non_2xx']})", file=sys.stderr)
    return result["rps"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--peer-venv", default=os.environ.get("PEER_VENV", "/tmp/peervenv"))
    parser.add_argument("--database", default="bench_auth",
                        help="PostgreSQL database of Sonicus (created when missing)")
    parser.add_argument("--peer-database", default="peer_bench",
                        help="PostgreSQL database of the peer (created when missing)")
    parser.add_argument("--log-level", default="INFO",
                        help="the app's LOG_LEVEL (production: INFO)")
    args = parser.parse_args()

    port_api, port_bare, port_peer = free_port(), free_port(), free_port()
    base_url = f"http://127.0.0.1:{port_api}"
    instance = tempfile.mkdtemp(prefix="sonicus-bench-")
    env = {"SONICUS_ENV": "development", "DATABASE_URL": ensure_database(f"{PG}/{args.database}"),
           "REDIS_URL": REDIS, "DEV_TOKEN_ISSUER": "1", "SONICUS_INSTANCE_PATH": instance,
           "PUBLIC_BASE_URL": base_url, "LOG_LEVEL": args.log_level,
           "RATELIMIT_ENABLED": "1", "RATELIMIT_PER_USER": "100000/second;10000000/minute",
           "RATELIMIT_PER_IP": "100000/second;10000000/minute",
           "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="sonicus-bench-metrics-")}
    redis.Redis.from_url(REDIS).flushdb()
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    full_env = {**os.environ, **env}
    subprocess.run([*flask, "db", "upgrade"], cwd=ROOT, env=full_env, check=True,
                   capture_output=True)
    token = subprocess.run([*flask, "sonicus", "dev-token", "--email", "bench@example.com"],
                           cwd=ROOT, env=full_env, check=True, capture_output=True,
                           text=True).stdout.strip()

    procs = {"sonicus": start_gunicorn("wsgi:app", env, port_api),
             "bare": start_gunicorn("bench.bare_app:app", env, port_bare)}
    targets = {"sonicus": (port_api, "/api/user/profile", token),
               "bare": (port_bare, "/bare", None)}
    peer_python = Path(args.peer_venv) / "bin/python"
    try:
        wait_up(port_api, "/api/health")
        wait_up(port_bare, "/bare")
        if peer_python.exists():
            peer_db = ensure_database(f"{PG}/{args.peer_database}")
            subprocess.run(["psql", peer_db, "-qc",
                            "CREATE TABLE IF NOT EXISTS peer_users (id serial primary key, "
                            "sub text unique not null, email text, display_name text, "
                            "timezone text default 'UTC', tier text default 'starter', "
                            "role text default 'user')"], check=True, capture_output=True)
            procs["peer"] = subprocess.Popen(
                [str(peer_python), "-m", "uvicorn", "--workers", "2", "--port", str(port_peer),
                 "--log-level", "warning", "--app-dir", str(PEER_DIR), "fastapi_profile:app"],
                env={**os.environ, "PEER_DSN": peer_db, "PEER_ISSUER": f"{base_url}/api/dev/",
                     "PEER_JWKS": f"{base_url}/api/dev/jwks/", "PEER_AUD": "sonicus-dev"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            targets["peer"] = (port_peer, "/api/user/profile", token)
            wait_up(port_peer, "/docs")
        for port, path, tok in targets.values():  # warm: caches, pools, connections
            load(port, path, tok, 2, args.connections)

        runs: dict[str, list[float]] = {name: [] for name in targets}
        names = list(targets)
        for round_no in range(args.rounds):
            order = names if round_no % 2 == 0 else names[::-1]
            for name in order:
                port, path, tok = targets[name]
                runs[name].append(load(port, path, tok, args.duration, args.connections))
            shown = ", ".join(f"{n} {runs[n][-1]:.0f}" for n in names)
            print(f"round {round_no + 1}: {shown} req/s", file=sys.stderr)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    vs_bare = [s / b for s, b in zip(runs["sonicus"], runs["bare"], strict=True)]
    print(f"GET /api/user/profile, production configuration (gunicorn.conf.py: 2 processes x "
          f"gthread, LOG_LEVEL={args.log_level}, rate limits in Redis), wrk -c{args.connections}, "
          f"{args.rounds} rounds of {args.duration:.0f} s:")
    for name in names:
        print(f"  {name:8s} median {statistics.median(runs[name]):7.0f} req/s  rounds "
              + ", ".join(f"{r:.0f}" for r in runs[name]))
    print(f"  Sonicus / bare Flask: median {statistics.median(vs_bare):.2f} "
          f"(rounds {', '.join(f'{r:.2f}' for r in vs_bare)})")
    if "peer" in runs:
        vs_peer = [s / p for s, p in zip(runs["sonicus"], runs["peer"], strict=True)]
        print(f"  Sonicus / FastAPI peer: median {statistics.median(vs_peer):.2f} "
              f"(rounds {', '.join(f'{r:.2f}' for r in vs_peer)})")


if __name__ == "__main__":
    main()
