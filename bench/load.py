"""Load test of the whole stack, run the production way, with a realistic listener mix.

    .venv/bin/python bench/load.py [--users 50] [--spawn-rate 10] [--duration 180]

What it does, in order (everything on 127.0.0.1, everything stopped at the end or on Ctrl-C):

1. empties the load database (``DROP SCHEMA sonicus CASCADE``) and its Redis db, then
   ``flask --app wsgi db upgrade`` and ``flask --app wsgi sonicus seed`` (the demo catalog);
2. starts gunicorn with the repository's ``gunicorn.conf.py`` (``WEB_CONCURRENCY`` processes,
   gthread) on a free port and ONE ``python worker.py`` RQ worker (forked work horses, the
   periodic schedule on), all sharing one instance folder (the development signing key),
   rate limits ON with their default figures;
3. mints one development token per simulated listener (a mix of starter, premium and pro),
   creating the user and granting the tier exactly as ``sonicus dev-token --tier`` does;
4. runs ``locust --headless`` with ``bench/locustfile.py`` for ``--duration`` seconds;
5. prints one JSON summary on stdout: per request type count, failures, requests/s and
   p50/p95/p99; the expected business answers (starter quota 429s); the socket figures
   (connect + snapshot time, ``analytics.updated`` latency after a completion); the job
   queues at the end; CPU seconds per component and the load average.

Settings: ``LOAD_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/bench_load``)
and ``LOAD_REDIS_URL`` (default ``redis://127.0.0.1:6379/10``); both are wiped. Logs of every
process stay in the run folder printed at the start (``--keep`` keeps it afterwards; it is
always kept when the run had failures).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = str(ROOT / ".venv/bin/python")
BIN = ROOT / ".venv/bin"

DATABASE_URL = os.environ.get("LOAD_DATABASE_URL",
                              "postgresql://postgres@127.0.0.1:5432/bench_load")
REDIS_URL = os.environ.get("LOAD_REDIS_URL", "redis://127.0.0.1:6379/10")
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402

TIER_MIX = (("starter", 0.5), ("premium", 0.3), ("pro", 0.2))


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Stack:
    """The child processes of one run; ``stop()`` ends them all (idempotent)."""

    def __init__(self, run_dir: Path, env: dict):
        self.run_dir = run_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = []

    def start(self, name: str, cmd: list[str], **kwargs) -> subprocess.Popen:
        out = open(self.run_dir / f"{name}.log", "w")  # noqa: SIM115 (closed in stop())
        self.logs.append(out)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        """Load generator first (its sockets close), then the worker and the web server."""
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                log(f"{name} did not stop in 40 s: killing it")
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(5)
        for out in self.logs:
            out.close()
        self.logs = []


def run_cli(env: dict, *args: str) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def reset_database(env: dict) -> None:
    import redis
    from sqlalchemy import create_engine, text

    from bench.common import ensure_database
    from config import normalise_database_url

    ensure_database(DATABASE_URL)
    engine = create_engine(normalise_database_url(DATABASE_URL))
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
    engine.dispose()
    redis.Redis.from_url(REDIS_URL).flushdb()
    run_cli(env, "db", "upgrade")
    out = run_cli(env, "sonicus", "seed", "sonicus/data/demo_catalog.yaml")
    log("migrated from empty; " + (out.strip().splitlines() or ["seeded"])[-1])


def mint_tokens(env: dict, users: int, seed: int) -> list[dict]:
    """One token per listener; the user is created and the tier granted as the
    ``sonicus dev-token --tier`` command does (same services, same instance folder)."""
    os.environ.update(env)
    from sonicus import create_app, devtokens
    from sonicus.auth import caller_from_token
    from sonicus.extensions import db
    from sonicus.services.admin_users import grant_tier_from_cli

    app = create_app()
    rng = random.Random(seed)
    tiers = []
    for name, share in TIER_MIX:
        tiers += [name] * round(users * share)
    tiers = (tiers + ["starter"] * users)[:users]
    rng.shuffle(tiers)
    listeners = []
    with app.app_context():
        for i, tier in enumerate(tiers):
            email = f"listener-{i:03d}@load.example.com"
            token = devtokens.mint(app, email=email, lifetime_seconds=6 * 3600)
            user = caller_from_token(token).id
            if tier != "starter":
                grant_tier_from_cli(user, tier, actor_label="cli:load")
            listeners.append({"email": email, "tier": tier, "token": token})
            db.session.remove()
    return listeners


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree, including reaped children (work horses)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class LoadSampler(threading.Thread):
    """The 1-minute load average every 5 s, and the machine's CPU use over the run."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.stopped = threading.Event()
        self.cpu_start = machine_cpu()
        self.cpu_end = self.cpu_start

    def run(self):
        self.cpu_start = machine_cpu()
        while not self.stopped.wait(5):
            self.samples.append(float(Path("/proc/loadavg").read_text().split()[0]))
            self.cpu_end = machine_cpu()

    def busy_percent(self) -> float:
        busy = self.cpu_end[0] - self.cpu_start[0]
        total = self.cpu_end[1] - self.cpu_start[1]
        return round(100 * busy / total, 1) if total else 0.0


def log_problems(run_dir: Path) -> dict:
    """Lines at ERROR/CRITICAL (JSON logs) or with a traceback, per process log."""
    counts = {}
    for path in sorted(run_dir.glob("*.log")):
        text = path.read_text(errors="replace")
        counts[path.stem] = sum(1 for line in text.splitlines()
                                if '"level":"ERROR"' in line or '"level":"CRITICAL"' in line
                                or line.startswith("Traceback"))
    return counts


def queue_figures() -> dict:
    import redis
    from rq import Queue
    from rq.registry import (
        FailedJobRegistry,
        ScheduledJobRegistry,
        StartedJobRegistry,
    )

    from sonicus.tasks.queue import QUEUES

    conn = redis.Redis.from_url(REDIS_URL)
    figures = {}
    for name in QUEUES:
        q = Queue(name, connection=conn)
        figures[name] = {
            "queued": q.count,
            "started": StartedJobRegistry(queue=q).count,
            "scheduled": ScheduledJobRegistry(queue=q).count,
            "failed": FailedJobRegistry(queue=q).count,
        }
    return figures


def read_stats(csv_prefix: Path) -> dict:
    rows = {}
    with open(f"{csv_prefix}_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            name = row["Name"].strip()
            key = name if name.startswith(row["Type"] + " ") else f"{row['Type']} {name}".strip()
            count = int(row["Request Count"])
            rows[key] = {
                "count": count, "failures": int(row["Failure Count"]),
                "rps": round(float(row["Requests/s"]), 2),
                "p50_ms": _num(row["50%"]), "p95_ms": _num(row["95%"]),
                "p99_ms": _num(row["99%"]), "max_ms": _num(row["Max Response Time"]),
            }
    return rows


def _num(value: str):
    try:
        return round(float(value), 1)
    except ValueError:
        return None


def read_failures(csv_prefix: Path) -> list[dict]:
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def markdown_table(summary: dict) -> str:
    lines = ["| request | count | failures | req/s | p50 ms | p95 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    rows = list(summary["requests"].items()) + [("all", summary["total"] or {})]
    for name, row in rows:
        lines.append(f"| {name} | {row.get('count')} | {row.get('failures')} | {row.get('rps')} "
                     f"| {row.get('p50_ms')} | {row.get('p95_ms')} | {row.get('p99_ms')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="simulated listeners (max 500)")
    parser.add_argument("--spawn-rate", type=float, default=10, help="listeners started per s")
    parser.add_argument("--duration", type=int, default=180, help="seconds of load (max 1800)")
    parser.add_argument("--web-concurrency", type=int, default=2, help="gunicorn processes")
    parser.add_argument("--threads", type=int, default=None,
                        help="SONICUS_THREADS per gunicorn process (default: gunicorn.conf.py's)")
    parser.add_argument("--simple-worker", action="store_true",
                        help="run the worker as `worker.py --simple` (jobs in-process, no fork)")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the tier mix")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs)")
    args = parser.parse_args()
    if not 1 <= args.users <= 500 or not 10 <= args.duration <= 1800:
        parser.error("--users must be 1..500 and --duration 10..1800")

    run_dir = Path(tempfile.mkdtemp(prefix="sonicus-load-"))
    instance = run_dir / "instance"
    instance.mkdir()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SONICUS_ENV": "development", "DEV_TOKEN_ISSUER": "1",
        "SONICUS_INSTANCE_PATH": str(instance), "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL, "RATELIMIT_ENABLED": "1",
        "SONICUS_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(args.web_concurrency),
        "PUBLIC_BASE_URL": base_url, "PYTHONPATH": str(ROOT),
    }
    if args.threads is not None:
        env["SONICUS_THREADS"] = str(args.threads)
    threads = int(env.get("SONICUS_THREADS", "64"))
    if args.users > args.web_concurrency * threads * 0.8:
        log(f"warning: every listener holds a socket, and a socket holds a gthread thread; "
            f"{args.users} listeners on {args.web_concurrency} x {threads} threads leave "
            f"little or nothing for HTTP requests (see --threads)")
    for name in ("RATELIMIT_PER_USER", "RATELIMIT_PER_IP", "OIDC_ISSUER", "OIDC_AUDIENCE",
                 "OIDC_JWKS_URL"):
        env.pop(name, None)  # the defaults, and the development issuer
    log(f"run folder {run_dir} (logs of every process)")

    stack = Stack(run_dir, env)
    sampler = LoadSampler()
    interrupted = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored
    summary: dict = {}
    try:
        reset_database(env)
        listeners = mint_tokens(env, args.users, args.seed)
        tokens_file = run_dir / "tokens.json"
        tokens_file.write_text(json.dumps(listeners))
        log(f"minted {len(listeners)} tokens: "
            + ", ".join(f"{t} {sum(1 for x in listeners if x['tier'] == t)}"
                        for t, _ in TIER_MIX))

        web = stack.start("web", [str(BIN / "gunicorn"), "wsgi:app"])
        worker = stack.start("worker", [PYTHON, "worker.py"]
                             + (["--simple"] if args.simple_worker else []))
        wait_http(base_url + "/api/ready", web)
        time.sleep(1.0)
        if worker.poll() is not None:
            raise RuntimeError("the worker exited at start; see worker.log")
        log(f"web on {base_url} (pid {web.pid}), worker pid {worker.pid}")

        results_file = run_dir / "locust-results.json"
        csv_prefix = run_dir / "locust"
        locust_env = {**env, "LOAD_TOKENS_FILE": str(tokens_file),
                      "LOAD_RESULTS_FILE": str(results_file),
                      "LOAD_FAILURES_FILE": str(run_dir / "failures.jsonl")}
        stack.env = locust_env
        cpu_before = {"web": cpu_seconds(web.pid), "worker": cpu_seconds(worker.pid)}
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sampler.start()
        started = time.time()
        locust = stack.start("locust", [
            str(BIN / "locust"), "-f", str(BENCH / "locustfile.py"), "--headless",
            "--host", base_url, "-u", str(args.users), "-r", str(args.spawn_rate),
            "-t", f"{args.duration}s", "--stop-timeout", "5", "--csv", str(csv_prefix),
            "--only-summary", "--loglevel", "WARNING",
        ])
        log(f"locust: {args.users} listeners, spawn {args.spawn_rate}/s, {args.duration} s")
        locust.wait(args.duration + 120)
        elapsed = time.time() - started
        sampler.stopped.set()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # locust, reaped
        cpu_after = {"web": cpu_seconds(web.pid), "worker": cpu_seconds(worker.pid),
                     "locust": (children_after.ru_utime + children_after.ru_stime
                                - children_before.ru_utime - children_before.ru_stime)}
        # Give the worker a moment to finish what the last completions enqueued.
        depth_at_stop = queue_figures()
        time.sleep(3)
        depth_after = queue_figures()

        extra = json.loads(results_file.read_text()) if results_file.exists() else {}
        stats = read_stats(csv_prefix)
        failures = read_failures(csv_prefix)
        total = stats.pop("Aggregated", None)
        loads = sampler.samples or [0.0]
        summary = {
            "command": " ".join(["bench/load.py"] + sys.argv[1:]),
            "measured_s": round(elapsed, 1),
            "users": args.users, "spawn_rate": args.spawn_rate, "duration_s": args.duration,
            "web_processes": args.web_concurrency, "threads_per_process": threads,
            "simple_worker": args.simple_worker,
            "tier_mix": {
                t: sum(1 for x in listeners if x["tier"] == t) for t, _ in TIER_MIX},
            "locust_exit_code": locust.returncode,
            "total": total,
            "requests": stats,
            "failures": failures,
            "expected_business_answers": extra.get("business", {}),
            "sessions": extra.get("sessions", {}),
            "sockets": extra.get("sockets", {}),
            "queues_at_stop": depth_at_stop,
            "queues_3s_later": depth_after,
            "cpu_seconds": {k: round(cpu_after[k] - cpu_before.get(k, 0.0), 1)
                            for k in cpu_after},
            "cpus": os.cpu_count(),
            "machine_cpu_busy_percent": sampler.busy_percent(),
            "load_average": {"before": load_before, "max_1min": max(loads),
                             "mean_1min": round(sum(loads) / len(loads), 2),
                             "at_end": Path("/proc/loadavg").read_text().split()[:3]},
            "log_errors": log_problems(run_dir),
            "run_folder": str(run_dir),
        }
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process")
    finally:
        sampler.stopped.set()
        stack.stop()

    if interrupted or not summary:
        log(f"no summary; logs in {run_dir}")
        return 130 if interrupted else 1
    had_failures = (bool(summary["failures"]) or (summary["total"] or {}).get("failures")
                    or any(summary["log_errors"].values()))
    print(json.dumps(summary, indent=2))
    print(markdown_table(summary), file=sys.stderr)
    if not args.keep and not had_failures:
        shutil.rmtree(run_dir, ignore_errors=True)
        summary["run_folder"] = None
    else:
        log(f"logs kept in {run_dir}")
    return 1 if had_failures or summary["locust_exit_code"] else 0


if __name__ == "__main__":
    sys.exit(main())
