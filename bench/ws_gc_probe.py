"""The API's WSGI app with the garbage collector's pauses recorded, for
``bench/bench_ws_scale.py --gc-report`` only (never deployed):
``gunicorn -c gunicorn.conf.py bench.ws_gc_probe:app``.

A ``gc.callbacks`` hook records every collection of the worker: when it started
(``time.monotonic()``, the clock the benchmark uses too), how long it took (wall time, and the
process's CPU time meanwhile: a wall time well above the CPU time is the scheduler, not the
collector), its generation and how many objects it freed. ``GET /__bench/gc`` answers them as
JSON, with ``gc.get_count()``, ``gc.get_threshold()`` and ``gc.get_freeze_count()``.

With ``BENCH_WS_SWITCH_TRACE=1`` it also records, through ``greenlet.settrace``, every run of
one greenlet (the hub included) that held the process for more than 2 ms without switching:
when it started, its wall and CPU time, which greenlet, and where it switched out; every run
over 0.1 ms without its stack (which greenlet; a socket's reader named as such); and for
every ``/api/health`` request when its greenlet last got the process, and when the app began
and ended it. ``BENCH_WS_SLICE_SECONDS`` sets the broker's delivery slice, and
``BENCH_WS_SCHED_YIELD=1`` makes each of delivery's turns for the loop also offer the core
to other processes (``sched_yield``; tried, not kept: fan-outs 609-992 ms).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsgi import app as flask_app  # noqa: E402

PATH = "/__bench/gc"
_started = [0.0, 0.0, 0.0]
_collections: list[tuple[float, float, float, int, int]] = []


def _hook(phase: str, info: dict) -> None:
    if phase == "start":
        _started[0] = time.monotonic()
        _started[1] = time.perf_counter()
        _started[2] = time.process_time()
        return
    _collections.append((_started[0], (time.perf_counter() - _started[1]) * 1000,
                         (time.process_time() - _started[2]) * 1000, info["generation"],
                         info["collected"]))


gc.callbacks.append(_hook)

LONG_RUN_SECONDS = 0.002
SHORT_RUN_SECONDS = 0.0001  # runs kept without their stack (what a slow probe waited behind)
_long_runs: list[tuple[float, float, float, str, str]] = []
_short_runs: deque = deque(maxlen=200_000)
_last_switch = [time.monotonic(), time.perf_counter(), time.process_time()]
_switched_in: dict[int, float] = {}  # a greenlet's id: when it last got the process


def _name(glet) -> str:
    if glet is None:
        return "?"
    kind = type(glet).__name__
    if kind == "Hub":
        return "hub"
    run = getattr(glet, "_run", None) or getattr(glet, "run", None)
    target = getattr(getattr(run, "__self__", None), "_target", None)  # a patched thread
    name = getattr(target or run, "__qualname__", None) or getattr(target or run, "__name__", "")
    return f"{kind}:{name}"[:60]


def _in_socket_reader(glet) -> bool:
    """Whether a gunicorn handler greenlet serves a socket (it stopped in its reader)."""
    frame = getattr(glet, "gr_frame", None)
    for _ in range(30):
        if frame is None:
            return False
        if frame.f_code.co_name == "read_until_closed":
            return True
        frame = frame.f_back
    return False


def _trace(event: str, args) -> None:
    if event not in ("switch", "throw"):
        return
    now, wall, cpu = time.monotonic(), time.perf_counter(), time.process_time()
    _switched_in[id(args[1])] = now
    if wall - _last_switch[1] > SHORT_RUN_SECONDS:
        name = _name(args[0])
        if name.endswith("_handle_and_close_when_done") and _in_socket_reader(args[0]):
            name = "socket reader"
        _short_runs.append((_last_switch[0], round((wall - _last_switch[1]) * 1000, 3),
                            round((cpu - _last_switch[2]) * 1000, 3), name))
    if wall - _last_switch[1] > LONG_RUN_SECONDS:
        origin = args[0]  # switched out already: its frame is where it stopped
        frame = getattr(origin, "gr_frame", None)
        stack = traceback.extract_stack(frame, limit=14) if frame is not None else []
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                           for f in reversed(stack))
        _long_runs.append((_last_switch[0], (wall - _last_switch[1]) * 1000,
                           (cpu - _last_switch[2]) * 1000, repr(origin)[:120], where[:900]))
    _last_switch[:] = [now, wall, cpu]


_requests: deque = deque(maxlen=100_000)
greenlet = None
if os.environ.get("BENCH_WS_SWITCH_TRACE"):
    import greenlet

    greenlet.settrace(_trace)


def inspect() -> dict:
    """What each generation holds now (objects, the commonest types), and how long a
    collection of generation 0, then 1, then 2 takes here."""
    from collections import Counter

    held = {}
    for generation in (0, 1, 2):
        objects = gc.get_objects(generation)
        kinds = Counter(type(obj).__qualname__ for obj in objects)
        held[generation] = {"objects": len(objects), "types": kinds.most_common(12)}
        del objects
    timings = {}
    for generation in (0, 1, 2):
        started = time.perf_counter()
        gc.collect(generation)
        timings[generation] = (time.perf_counter() - started) * 1000
    return {"held": held, "collect_ms": timings, "frozen": gc.get_freeze_count(),
            "threshold": gc.get_threshold(), "callbacks": [repr(c) for c in gc.callbacks]}


class GcProbe:
    def __init__(self, app):
        self.app = app
        self.extensions = app.extensions  # gunicorn.conf.py finds the broker here

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") == "/api/health":
            # when its greenlet got the process (with --switch-trace), began and ended here
            started = time.monotonic()
            woke = _switched_in.get(id(greenlet.getcurrent()), 0.0) if greenlet else 0.0
            answer = self.app(environ, start_response)
            _requests.append((woke, started, time.monotonic()))
            return answer
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        if environ.get("QUERY_STRING") == "inspect":
            body = json.dumps(inspect()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        body = json.dumps({"collections": _collections, "long_runs": _long_runs,
                           "short_runs": list(_short_runs), "requests": list(_requests),
                           "renewals": _renewals, "sweeps": _sweeps,
                           "count": gc.get_count(),
                           "threshold": gc.get_threshold(),
                           "frozen": gc.get_freeze_count()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


if os.environ.get("BENCH_WS_SLICE_SECONDS"):  # try another delivery slice
    from sonicus.realtime import broker as _broker

    _broker.DELIVERY_SLICE_SECONDS = float(os.environ["BENCH_WS_SLICE_SECONDS"])

if os.environ.get("BENCH_WS_SCHED_YIELD"):  # try: the OS may run another process too
    from sonicus.realtime import broker as _broker
    from sonicus.realtime import leases as _leases

    _yield = _broker.yield_to_loop

    def _yield_to_loop_and_os() -> None:
        os.sched_yield()
        _yield()

    _broker.yield_to_loop = _yield_to_loop_and_os
    _leases.yield_to_loop = _yield_to_loop_and_os

_renewals: list[tuple[float, float]] = []  # the lease renewals: when each began and ended
_leases_class = __import__("sonicus.realtime.leases", fromlist=["Leases"]).Leases
_renew = _leases_class.renew


def _timed_renewal(self):
    began = time.monotonic()
    try:
        return _renew(self)
    finally:
        _renewals.append((began, time.monotonic()))


_leases_class.renew = _timed_renewal
_sweeps: list[tuple[float, float, int, int]] = []  # keep-alive passes: began, ended, pinged, closed
_keepalive_class = __import__("sonicus.realtime.keepalive", fromlist=["KeepAlive"]).KeepAlive
_sweep = _keepalive_class.sweep


def _timed_sweep(self, now=None):
    began = time.monotonic()
    done = _sweep(self, now)
    _sweeps.append((began, time.monotonic(), *done))
    return done


_keepalive_class.sweep = _timed_sweep

app = GcProbe(flask_app)
