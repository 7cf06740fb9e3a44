"""The API's WSGI app with a memory probe in front of it, for ``bench/bench_ws_memory.py``
only (never deployed): ``gunicorn -c gunicorn.conf.py bench.ws_probe:app``.

``GET /__bench/memory?start`` takes the baseline (and starts tracemalloc with ``&trace``);
``GET /__bench/memory?report`` answers, as JSON, what was added since: live objects by type
(the garbage collector's view), the greenlets and the C stack each keeps on the heap while it
is switched out, and with tracemalloc the allocations still alive grouped by source line.
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsgi import app as flask_app  # noqa: E402

PATH = "/__bench/memory"


def _type_name(obj) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def _counts() -> Counter:
    return Counter(_type_name(obj) for obj in gc.get_objects())


def _greenlets() -> dict:
    import greenlet

    stacks = []
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and not obj.dead:
            stacks.append((obj._stack_saved, _type_name(obj)))
    by_kind: dict[str, list[int]] = {}
    for saved, kind in stacks:
        by_kind.setdefault(kind, []).append(saved)
    return {kind: {"count": len(sizes), "stack_bytes": sum(sizes)}
            for kind, sizes in by_kind.items()}


class Probe:
    def __init__(self, app):
        self.app = app
        self.extensions = app.extensions  # gunicorn.conf.py finds the broker here
        self.baseline: Counter | None = None
        self.snapshot = None

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        query = environ.get("QUERY_STRING", "")
        gc.collect()
        if query.startswith("start"):
            if "trace" in query:
                tracemalloc.start(8)
                self.snapshot = tracemalloc.take_snapshot()
            self.baseline = _counts()
            self.greenlets = _greenlets()
            body = {"started": True}
        else:
            try:
                body = self.report()
            except Exception:
                import traceback

                body = {"error": traceback.format_exc()}
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    def report(self) -> dict:
        counts = _counts()
        added = {name: n - self.baseline.get(name, 0) for name, n in counts.items()
                 if n - self.baseline.get(name, 0) > 0}
        out = {"objects": dict(sorted(added.items(), key=lambda kv: -kv[1])[:60]),
               "greenlets_before": self.greenlets, "greenlets": _greenlets()}
        if self.snapshot is not None:
            now = tracemalloc.take_snapshot()
            filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
            now, before = now.filter_traces(filters), self.snapshot.filter_traces(filters)
            out["traced_bytes"] = sum(stat.size_diff for stat in now.compare_to(before,
                                                                                "filename"))
            out["by_line"] = [
                {"where": str(stat.traceback[0]), "bytes": stat.size_diff,
                 "blocks": stat.count_diff}
                for stat in now.compare_to(before, "lineno")[:40]]
            # the innermost frame outside the standard library and the C extensions' wrappers
            out["by_stack"] = [
                {"where": [str(frame) for frame in stat.traceback[-8:]],
                 "bytes": stat.size_diff, "blocks": stat.count_diff}
                for stat in now.compare_to(before, "traceback")[:25]]
        return out


app = Probe(flask_app)
