"""Idle analytics sockets held by ONE socket process (``SONICUS_PROCESS=ws``: gevent), its
memory, one update to every socket, and /api/health meanwhile.

    .venv/bin/python bench/bench_ws_scale.py [--sockets 10000] [--users 1000] [--cycles 2]
        [--fan-outs 2] [--client-python PY] [--client-modes plain,nice]
        [--gc-report [--gc-inspect] [--switch-trace]] [--split-cores] [--prober-fifo]

Starts one process the production way (``gunicorn -c gunicorn.conf.py``, ``SONICUS_PROCESS=ws``,
one worker) and runs ``--cycles`` cycles of: /api/health alone; asyncio client processes
(``bench/ws_client.py``) open ``--sockets`` sockets, ``sockets/users`` per listener (each gets
its snapshot; ``WS_MAX_SOCKETS_PER_USER`` is that number); the worker's RSS; then
``--fan-outs`` times /api/health with the sockets open, and one update to every socket: the
product has no broadcast, so one ``analytics.updated`` per listener, published through Redis
at once (one pipeline), timed from the first publish until the last socket has its own, with
/api/health probed meanwhile (by a process of its own); the sockets close. A last round of
/api/health alone ends the run: the rounds alone and with the sockets alternate. The clients
need the ``websockets`` package (bench/requirements.txt), in ``--client-python``'s environment.

The client processes stand for 10,000 browsers on other machines, but here they read their
10,000 messages on the same 2 cores as the socket process, Redis and the health prober.
``--client-modes`` says how they run during each fan-out, in turn (fan-out n uses mode
n mod their number, so the modes alternate within one run): ``plain`` (as they are, the
default), ``nice`` (niceness 19: the server, Redis and the prober, at 0, take a core whenever
they are ready), ``idle`` (Linux's ``SCHED_IDLE`` class: they run only on a core nothing else
wants), ``pinned`` (on the last core only, ``sched_setaffinity``), ``nice-pinned``
(both). A mode is set on the running client processes just before the fan-out and undone
after it (setting a lower niceness back needs root or CAP_SYS_NICE); the sockets open in
``plain``. Benchmark only: the product never changes its own priority.

``--gc-report`` serves ``bench.ws_gc_probe:app`` (the same app behind a ``gc.callbacks`` hook)
and reports the worker's collections: while the sockets opened, and during each fan-out (wall
and CPU time of each: a wall time well above the CPU time is the scheduler), and for the
slowest health probes of each fan-out the collections and, with ``--switch-trace``, the
greenlet runs over 2 ms that overlapped them; ``--gc-inspect`` adds what each generation
holds once the sockets are open (it collects them: a full collection, counted in the opening).
With ``--switch-trace`` it also gives, per fan-out, the greenlet runs over 0.1 ms by greenlet
(the sockets' readers apart), for the slowest probes when the server's handler got the process
and ran the request, and per client mode where the probes' time went: until the handler got
the process, the handler's run until the app answered, from then until the prober had it.
``--gc-report`` also gives the lease renewals and keep-alive passes near each fan-out, and
``BENCH_WS_SLICE_SECONDS`` in the environment tries another delivery slice with it.

``--split-cores`` puts the socket process on the first core and the health prober (its rounds
alone and during fan-outs) on the last, for the whole run: a prober on another machine, as a
load balancer's or kubelet's is, instead of one woken on the core the server holds. The
clients (and Redis, PostgreSQL) keep every core.

``--prober-fifo`` runs the health prober (its rounds alone and during fan-outs alike) in
Linux's ``SCHED_FIFO`` class (needs root or CAP_SYS_NICE): woken, it takes a core at once,
as a prober on a machine of its own would, instead of waiting behind the 10,000 clients'
readers for a time slice. The socket process, Redis and the clients keep their class.
Benchmark only.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
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


def start_ws_process(extra_env: dict, app_name: str = "wsgi:app"
                     ) -> tuple[subprocess.Popen, int]:
    log = open(os.environ.get("BENCH_WS_LOG", os.devnull), "w")  # noqa: SIM115
    return spawn_gunicorn(["-c", "gunicorn.conf.py", app_name],
                          {**bench_env(), "SONICUS_PROCESS": "ws", **extra_env}, log=log)


CLIENT_MODES = ("plain", "nice", "idle", "pinned", "nice-pinned")
ALL_CORES = sorted(os.sched_getaffinity(0))  # before --split-cores pins this process


def set_client_mode(clients, mode: str) -> None:
    """How the client processes run (``--client-modes``): niceness 19 or 0, Linux's idle
    scheduling class (``SCHED_IDLE``: a core only when nothing else wants it) or the normal
    one, the last core only or every core."""
    cores = ALL_CORES
    for client in clients:
        policy = os.SCHED_IDLE if mode == "idle" else os.SCHED_OTHER
        os.sched_setscheduler(client.pid, policy, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, client.pid, 19 if "nice" in mode else 0)
        os.sched_setaffinity(client.pid, cores[-1:] if "pinned" in mode else cores)


def gc_collections(port: int) -> tuple[list, list, list, list, list, list]:
    """The worker's collections so far (``bench/ws_gc_probe.py``): (monotonic start, wall ms,
    CPU ms, generation, freed); its greenlets' long runs, their runs over 0.1 ms and its
    health requests (woken, began, ended; ``--switch-trace``); its lease renewals (began,
    ended) and keep-alive passes (began, ended, pinged, closed)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/__bench/gc")
        answer = json.loads(conn.getresponse().read())
        return ([tuple(item) for item in answer["collections"]],
                [tuple(item) for item in answer["long_runs"]],
                [tuple(item) for item in answer["short_runs"]],
                [tuple(item) for item in answer["requests"]],
                [tuple(item) for item in answer.get("renewals", [])],
                [tuple(item) for item in answer.get("sweeps", [])])
    finally:
        conn.close()


def inspect_gc(port: int) -> None:
    """Print what the worker's generations hold and what a collection of each costs."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/__bench/gc?inspect")
        answer = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    print(f"  gc now: frozen {answer['frozen']}, threshold {answer['threshold']}, "
          f"callbacks {answer['callbacks']}")
    for generation, held in answer["held"].items():
        print(f"    gen {generation}: {held['objects']} objects, "
              f"collect {answer['collect_ms'][generation]:.1f} ms; {held['types']}")


def slowest_probes(f: dict, collections, runs, top: int = 3, short_runs=(),
                   requests=()) -> list[str]:
    """The slowest health probes of a fan-out, each with the collections and greenlet runs
    of the socket process that overlapped it; with ``--switch-trace``, when the server's
    handler got the process and ran the request, and the runs over 0.1 ms meanwhile."""
    out = []
    probes = sorted(zip(f["health_starts"], f["health"], strict=True), key=lambda p: -p[1])
    for start, ms in probes[:top]:
        end = start + ms / 1000
        out.append(f"probe of {ms:.1f} ms at +{(start - f['window'][0]) * 1000:.0f} ms")
        for woke, began, ended in requests:
            if start <= began <= end:
                woken = (f"woken +{(woke - start) * 1000:.2f}, " if start <= woke <= began
                         else "")  # (known with --switch-trace)
                out.append(f"  server: {woken}app +{(began - start) * 1000:.2f} to "
                           f"+{(ended - start) * 1000:.2f} ms")
        inside = [r for r in short_runs if r[0] <= end and r[0] + r[1] / 1000 >= start]
        if inside:
            out.append("  runs > 0.1 ms: " + ", ".join(
                f"+{(r[0] - start) * 1000:.2f} {r[3]} {r[1]:.2f}/{r[2]:.2f}" for r in inside))
        for c in collections:
            if c[0] <= end and c[0] + c[1] / 1000 >= start:
                out.append(f"  gc gen {c[3]}: {c[1]:.1f} ms ({c[2]:.1f} ms CPU, {c[4]} freed) "
                           f"at +{(c[0] - start) * 1000:.1f} ms")
        for r in runs:
            if r[0] <= end and r[0] + r[1] / 1000 >= start:
                out.append(f"  run {r[1]:.1f} ms ({r[2]:.1f} ms CPU) at "
                           f"+{(r[0] - start) * 1000:.1f} ms: {r[3]} in {r[4]}")
    return out


def probe_split(fan_outs: list[dict], requests) -> str:
    """Each probe's time in three parts, by the socket process's record of its request
    (``--gc-report``; the first needs ``--switch-trace``): until the server's handler got the
    process (the prober's send, the kernel, the server's loop: the delivery slice waited for),
    the server's run until the app had answered, and from then until the prober had the
    answer (gunicorn's write, the prober getting a core); p50 / p99 / max of each, in ms."""
    parts: list[list[float]] = [[], [], []]
    for f in fan_outs:
        for start, ms in zip(f["health_starts"], f["health"], strict=True):
            end = start + ms / 1000
            mine = [r for r in requests if start <= r[1] <= end]
            if len(mine) != 1:
                continue
            woke, began, ended = mine[0]
            woke = woke if start <= woke <= began else began
            for part, value in zip(parts, (woke - start, ended - woke, end - ended),
                                   strict=True):
                part.append(value * 1000)
    if not parts[0]:
        return "no request matched"
    return "; ".join(f"{name} p50 {percentile(part, 50):.2f} / p99 {percentile(part, 99):.2f}"
                     f" / max {max(part):.2f}"
                     for name, part in zip(("until woken", "server", "after the answer"),
                                           parts, strict=True)) + f" ({len(parts[0])} probes)"


def runs_summary(short_runs, f: dict) -> str:
    """The socket process's greenlet runs over 0.1 ms within a fan-out's window (from its
    first publish), by greenlet: how many, wall / CPU ms in all, the longest; and the same
    before the first socket had its update."""
    start = f["window"][0]  # the prober's start
    first = f["published_at"] + f["first_ms"] / 1000
    out = []
    for label, lo, hi in (("all", start, f["window"][1]), ("before the first update", start,
                                                           first)):
        by: dict[str, list[float]] = {}
        for r in short_runs:
            if lo <= r[0] <= hi:
                item = by.setdefault(r[3], [0, 0.0, 0.0, 0.0])
                item[0] += 1
                item[1] += r[1]
                item[2] += r[2]
                item[3] = max(item[3], r[1])
        out.append(label + ": " + ", ".join(
            f"{name} {n} x, {wall:.0f}/{cpu:.0f} ms, longest {longest:.1f}"
            for name, (n, wall, cpu, longest) in sorted(by.items(), key=lambda i: -i[1][1])))
    delivering = [r for r in short_runs if start <= r[0] <= f["window"][1]
                  and r[3].endswith("_run_listener")]
    if delivering:
        first_run = (delivering[0][0] - f["published_at"]) * 1000
        last_end = (delivering[-1][0] + delivering[-1][1] / 1000 - f["published_at"]) * 1000
        out.append(f"the subscriber's runs from +{first_run:.0f} to +{last_end:.0f} ms after "
                   "the first publish")
    return "; ".join(out)


def gc_summary(collections, start: float, end: float) -> str:
    """The collections that started within [start, end]: how many of each generation, the
    longest of each (wall / CPU ms)."""
    inside = [c for c in collections if start <= c[0] <= end]
    if not inside:
        return "no collection"
    parts = []
    for generation in (0, 1, 2):
        of = [c for c in inside if c[3] == generation]
        if of:
            longest = max(of, key=lambda c: c[1])
            parts.append(f"gen {generation}: {len(of)}, longest {longest[1]:.1f} ms "
                         f"({longest[2]:.1f} ms CPU), total {sum(c[1] for c in of):.1f} ms")
    return "; ".join(parts)


PROBER_FIFO = False  # --prober-fifo


class _ProberClass:
    """The calling process in ``SCHED_FIFO`` for the block with ``--prober-fifo`` (the
    client processes started meanwhile must not inherit it: only the probes run inside)."""

    def __enter__(self):
        if PROBER_FIFO:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))

    def __exit__(self, *exc):
        if PROBER_FIFO:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


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
        with _ProberClass():
            for _ in range(count):
                out.append(self.once())
                time.sleep(pause)
        return out

    def until(self, stop, out: list[float],
              starts: list[float] | None = None) -> None:
        while not stop.is_set():
            if starts is not None:
                starts.append(time.monotonic())
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
    for client in clients:  # every core, whatever --split-cores gave this process
        os.sched_setaffinity(client.pid, ALL_CORES)
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


def probe_process(port: int, go, stop, sender) -> None:
    """A fan-out's health prober, in a process of its own (``fan_out``)."""
    out: list[float] = []
    starts: list[float] = []
    side = HealthProbe(port)
    go.wait()
    with _ProberClass():
        side.until(stop, out, starts)
    sender.send((out, starts))


def fan_out(app, ids: list[int], clients, pid: int, port: int, round_no: int,
            mode: str = "plain") -> dict:
    """One update per listener, published at once; when the last socket had its own. The
    client processes run in ``mode`` meanwhile."""
    from sonicus.extensions import get_redis
    from sonicus.realtime.publish import user_events_channel

    # The prober runs in a process of its own: as a thread of this one it waited for the GIL
    # while this process published (its first probe took 10-20 ms for that alone).
    forked = multiprocessing.get_context("fork")
    go, stop = forked.Event(), forked.Event()
    receiver, sender = forked.Pipe(duplex=False)
    prober = forked.Process(target=probe_process, args=(port, go, stop, sender), daemon=True)
    prober.start()
    set_client_mode(clients, mode)
    for client in clients:
        client.stdin.write("updates\n")
        client.stdin.flush()
    time.sleep(0.5)  # the clients are reading
    window_start = time.monotonic()
    go.set()
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
    during, starts = receiver.recv()
    prober.join()
    window_end = time.monotonic()
    set_client_mode(clients, "plain")
    return {"delivered": sum(int(line[1]) for line in lines), "mode": mode,
            "window": (window_start, window_end),
            "last_ms": (max(float(line[2]) for line in lines) - started) * 1000,
            "first_ms": (min(float(line[3]) for line in lines) - started) * 1000,
            "published_ms": published * 1000, "cpu_ms": cpu, "health": during,
            "published_at": started,
            "health_starts": starts}


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
    parser.add_argument("--client-modes", default="plain",
                        help="comma-separated, taken in turn by the fan-outs: how the client "
                             "processes run meanwhile (" + ", ".join(CLIENT_MODES) + ")")
    parser.add_argument("--gc-report", action="store_true",
                        help="record the worker's garbage collections (bench/ws_gc_probe.py)")
    parser.add_argument("--gc-inspect", action="store_true",
                        help="with --gc-report: once the sockets are open, what each generation "
                             "holds and what collecting it costs (it collects: counted in the "
                             "opening)")
    parser.add_argument("--switch-trace", action="store_true",
                        help="with --gc-report: also the greenlet runs longer than 2 ms")
    parser.add_argument("--split-cores", action="store_true",
                        help="the socket process on the first core, the health prober (alone "
                             "and during fan-outs) on the last, as a prober on another machine "
                             "would be; the clients keep every core")
    parser.add_argument("--prober-fifo", action="store_true",
                        help="the health prober (alone and during fan-outs) in SCHED_FIFO: "
                             "woken, it takes a core at once (needs root or CAP_SYS_NICE)")
    args = parser.parse_args()
    global PROBER_FIFO
    PROBER_FIFO = args.prober_fifo
    modes = [mode.strip() for mode in args.client_modes.split(",") if mode.strip()]
    unknown = set(modes) - set(CLIENT_MODES)
    if unknown or not modes:
        parser.error(f"--client-modes: unknown {sorted(unknown)} (known: {CLIENT_MODES})")
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
                                  "WS_MAX_SOCKETS_PER_USER": str(per_user),
                                  **({"BENCH_WS_SWITCH_TRACE": "1"} if args.switch_trace
                                     else {})},
                                 "bench.ws_gc_probe:app" if args.gc_report else "wsgi:app")
    idle: list[list[float]] = []
    loaded: list[list[float]] = []
    cycles, fan_outs = [], []
    clients = []
    collections, long_runs, short_runs, requests, renewals, sweeps = [], [], [], [], [], []
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health")
        pid = worker_pid(web.pid)
        if args.split_cores and len(ALL_CORES) > 1:
            os.sched_setaffinity(pid, ALL_CORES[:1])
            os.sched_setaffinity(0, ALL_CORES[-1:])  # the probers (forked from here) too
        probe = HealthProbe(port)
        probe.run(50)  # warm
        ids: list[int] = []
        for cycle in range(args.cycles):
            idle.append(probe.run(args.probes))
            rss_idle = rss_kib(pid)
            opening = time.monotonic()
            clients, opened, seconds, failed = open_clients(args, args.client_python, port,
                                                            shares, per_user)
            wait_quiet(pid)
            rss_open = rss_kib(pid)
            if args.gc_inspect:
                inspect_gc(port)
            opening = (opening, time.monotonic())
            if not ids:  # the listeners' rows exist once they have signed in
                with app.app_context():
                    ids = [uid for (uid,) in db.session.query(User.id).all()]
            cycles.append({"opened": opened, "seconds": seconds, "failed": failed,
                           "opening": opening,
                           "rss_idle": rss_idle, "rss_open": rss_open,
                           "per_socket": (rss_open - rss_idle) / max(1, opened)})
            for n in range(args.fan_outs):
                loaded.append(probe.run(args.probes))
                with app.app_context():
                    round_no = cycle * args.fan_outs + n
                    fan_outs.append(fan_out(app, ids, clients, pid, port, round_no,
                                            modes[round_no % len(modes)]))
                fan_outs[-1]["opened"] = opened
            cycles[-1]["held"] = (opening[1], time.monotonic())
            close_clients(clients)
            clients = []
            wait_quiet(pid)
            cycles[-1]["leases_left"] = leases_left(app)
        idle.append(probe.run(args.probes))
        rss_end = rss_kib(pid)
        if args.gc_report:
            (collections, long_runs, short_runs, requests, renewals,
             sweeps) = gc_collections(port)
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
    if args.gc_report:
        for n, c in enumerate(cycles):
            print(f"  cycle {n + 1}, collections while the sockets opened: "
                  + gc_summary(collections, *c["opening"]))
            held = c["held"]
            print(f"  cycle {n + 1}, collections while they were open ({held[1] - held[0]:.0f} s, "
                  f"probes and fan-outs): " + gc_summary(collections, *held))
    for n, f in enumerate(fan_outs):
        health = f["health"]
        print(f"  fan-out {n + 1} (clients {f['mode']}): {len(ids)} publishes (one per "
              f"listener, one pipeline, {f['published_ms']:.0f} ms): "
              f"{f['delivered']}/{f['opened']} sockets had their "
              f"update {f['last_ms']:.0f} ms after the first publish (first after "
              f"{f['first_ms']:.0f} ms); the socket process's CPU: {f['cpu_ms']:.0f} ms; "
              f"/api/health meanwhile: " + (f"{summary(health)}, max {max(health):.2f} ms"
                                            if health else "none done"))
        if args.gc_report:
            print("    collections during it: " + gc_summary(collections, *f["window"]))
            if short_runs:
                print("    runs over 0.1 ms during it: " + runs_summary(short_runs, f))
            for began, ended, pinged, closed in sweeps:  # its pongs may come in during it
                if began <= f["window"][1] and ended >= f["window"][0] - 2:
                    print(f"    keep-alive pass from +{(began - f['published_at']) * 1000:.0f} to "
                          f"+{(ended - f['published_at']) * 1000:.0f} ms after the first publish:"
                          f" {pinged} pinged, {closed} closed")
            for began, ended in renewals:
                if began <= f["window"][1] and ended >= f["window"][0]:
                    print(f"    lease renewal from +{(began - f['published_at']) * 1000:.0f} to "
                          f"+{(ended - f['published_at']) * 1000:.0f} ms after the first publish")
            for line in slowest_probes(f, collections, long_runs, 3, short_runs, requests):
                print("    " + line)
    for mode in dict.fromkeys(modes):
        during = [v for f in fan_outs if f["mode"] == mode for v in f["health"]]
        if during:
            print(f"  /api/health during the fan-outs, clients {mode}: {summary(during)}")
        if requests and during:
            print(f"    where the time went (clients {mode}): "
                  + probe_split([f for f in fan_outs if f["mode"] == mode], requests))
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
