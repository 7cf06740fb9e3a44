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
when it started, its wall and CPU time, which greenlet, and where it switched out.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
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
_long_runs: list[tuple[float, float, float, str, str]] = []
_last_switch = [time.monotonic(), time.perf_counter(), time.process_time()]


def _trace(event: str, args) -> None:
    if event not in ("switch", "throw"):
        return
    now, wall, cpu = time.monotonic(), time.perf_counter(), time.process_time()
    if wall - _last_switch[1] > LONG_RUN_SECONDS:
        origin = args[0]  # switched out already: its frame is where it stopped
        frame = getattr(origin, "gr_frame", None)
        stack = traceback.extract_stack(frame, limit=14) if frame is not None else []
        where = " < ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                           for f in reversed(stack))
        _long_runs.append((_last_switch[0], (wall - _last_switch[1]) * 1000,
                           (cpu - _last_switch[2]) * 1000, repr(origin)[:120], where[:900]))
    _last_switch[:] = [now, wall, cpu]


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
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        if environ.get("QUERY_STRING") == "inspect":
            body = json.dumps(inspect()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        body = json.dumps({"collections": _collections, "long_runs": _long_runs,
                           "count": gc.get_count(),
                           "threshold": gc.get_threshold(),
                           "frozen": gc.get_freeze_count()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body)))])
        return [body]


app = GcProbe(flask_app)
