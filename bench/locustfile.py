"""A realistic listener mix for locust; run through ``bench/load.py`` (which starts the stack,
mints the tokens and reads the results).

Each simulated listener owns one development token (``LOAD_TOKENS_FILE``: a JSON list of
``{email, tier, token}``; starter, premium and pro) and behaves like the single-page app:
browses the catalog (filters, search, detail), opens the dashboard, listens (start a session
on a package its tier opens, a heartbeat every ``LOAD_HEARTBEAT_SECONDS``, then complete it
with a mood; now and then an accidental tap ended after a second or two), looks at its
analytics, profile, subscription and history. It keeps ``/ws/analytics`` open the whole time:
the connect + snapshot time and, after every completion, the time from sending the completion
until the matching ``analytics.updated`` arrives are reported as ``WS`` entries.

Expected business answers are successes, counted apart: a 429 ``daily_session_limit_reached``
for a listener whose tier has a daily quota and who has used it. Anything else that is not the
documented success status (a 5xx, a 429 ``rate_limited``, a quota answer before the quota is
used up, a 409 on the listener's own open session, a missing live update) is a failure, written
with its request id and body to ``LOAD_FAILURES_FILE``. Session and socket figures go to
``LOAD_RESULTS_FILE`` when locust quits.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from urllib.parse import urlencode

import gevent
import websocket
from locust import HttpUser, between, events, task

TOKENS = json.loads(open(os.environ["LOAD_TOKENS_FILE"]).read())
RESULTS_FILE = os.environ.get("LOAD_RESULTS_FILE")
FAILURES_FILE = os.environ.get("LOAD_FAILURES_FILE")
LISTEN_SECONDS = float(os.environ.get("LOAD_LISTEN_SECONDS", "35"))
HEARTBEAT_SECONDS = float(os.environ.get("LOAD_HEARTBEAT_SECONDS", "10"))
UPDATE_TIMEOUT_SECONDS = float(os.environ.get("LOAD_UPDATE_TIMEOUT_SECONDS", "30"))
DAILY_QUOTA = {"starter": 3, "premium": 10, "pro": None}  # API.md "Tiers", for checking only
SEARCH_TERMS = ["rain", "noise", "ocean", "forest", "sleep", "focus", "calm", "wave", "zzz"]

_token_index = itertools.count()
_request_ids = itertools.count(1)
RESULTS = {
    "business": {"429 daily_session_limit_reached": 0},
    "sessions": {"started": 0, "heartbeats": 0, "completed": 0, "stopped": 0,
                 "accidental_taps": 0, "quota_given_back": 0},
    "sockets": {"opened": 0, "snapshots": 0, "updates_received": 0, "updates_matched": 0,
                "update_timeouts": 0, "updates_superseded": 0,
                "updates_pending_at_stop": 0,
                "unexpected_closes": 0,
                "connect_snapshot_ms": [], "update_latency_ms": []},
}


def percentile(values: list[float], pct: float):
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5)
                                                   - 1))], 1)


def record_failure(kind: str, detail: dict) -> None:
    if FAILURES_FILE:
        with open(FAILURES_FILE, "a") as fh:
            fh.write(json.dumps({"at": time.time(), "kind": kind, **detail}) + "\n")


def ws_event(name: str, started: float, exception: Exception | None = None) -> float:
    elapsed = (time.perf_counter() - started) * 1000
    events.request.fire(request_type="WS", name=name, response_time=elapsed,
                        response_length=0, exception=exception, context={})
    return elapsed


class Listener(HttpUser):
    wait_time = between(0.5, 2.5)

    # ---- set-up -----------------------------------------------------------------------------

    def on_start(self):
        entry = TOKENS[next(_token_index) % len(TOKENS)]
        self.email, self.tier, self.token = entry["email"], entry["tier"], entry["token"]
        self.client.headers["Authorization"] = f"Bearer {self.token}"
        self.quota_reached = False
        self.counted_sessions = 0  # sessions started today that still count toward the quota
        self.completed = 0
        self.ended = 0
        self.pending_update = None  # (sent_at, completed, ended) after a completion
        self.details: dict[int, dict] = {}
        body = self.call("GET", "/api/packages", name="GET /api/packages?accessible",
                         params={"accessible": "true", "per_page": 100})
        self.accessible = [p["id"] for p in (body or {}).get("data") or []]
        body = self.call("GET", "/api/packages", name="GET /api/packages",
                         params={"per_page": 100})
        packages = (body or {}).get("data") or []
        self.all_ids = [p["id"] for p in packages]
        self.categories = sorted({p["category"] for p in packages})
        self.ws = None
        self.reader = None
        self.open_socket()

    def on_stop(self):
        if self.pending_update is not None:  # the run ended before it could arrive
            RESULTS["sockets"]["updates_pending_at_stop"] += 1
        ws, self.ws = self.ws, None  # first: the reader then knows the close is ours
        if self.reader is not None:
            self.reader.kill(block=True, timeout=2)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    # ---- HTTP with the envelope checked ---------------------------------------------------------

    def call(self, method: str, path: str, *, name: str | None = None, expect=(200,),
             quota_ok: bool = False, **kwargs):
        """One request; the body on the expected status, else None (failure recorded)."""
        request_id = f"load-{next(_request_ids)}"
        headers = {"X-Request-ID": request_id}
        with self.client.request(method, path, name=name or f"{method} {path}",
                                 headers=headers, catch_response=True, **kwargs) as res:
            try:
                body = res.json()
            except ValueError:
                body = None
            code = (body or {}).get("code") if isinstance(body, dict) else None
            if res.status_code in expect and isinstance(body, dict) and body.get("success"):
                res.success()
                return body
            if (quota_ok and res.status_code == 429 and code == "daily_session_limit_reached"
                    and DAILY_QUOTA[self.tier] is not None
                    and self.counted_sessions >= DAILY_QUOTA[self.tier]):
                res.success()
                RESULTS["business"]["429 daily_session_limit_reached"] += 1
                events.request.fire(request_type="BUSINESS",
                                    name="429 daily_session_limit_reached",
                                    response_time=res.elapsed.total_seconds() * 1000,
                                    response_length=0, exception=None, context={})
                return body
            reason = f"{res.status_code} {code or ''}".strip()
            res.failure(reason)
            record_failure("http", {
                "request": f"{method} {path}", "params": kwargs.get("params"),
                "json": kwargs.get("json"), "tier": self.tier,
                "counted_sessions": self.counted_sessions, "status": res.status_code,
                "request_id": res.headers.get("X-Request-ID") or request_id,
                "retry_after": res.headers.get("Retry-After"),
                "body": (res.text or "")[:1000]})
            return None

    # ---- the socket ---------------------------------------------------------------------------

    def open_socket(self):
        url = self.host.replace("http", "ws", 1) + "/ws/analytics?" + urlencode(
            {"access_token": self.token})
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(url, timeout=10)
            RESULTS["sockets"]["opened"] += 1
            first = json.loads(ws.recv())
            if first.get("type") != "analytics.snapshot":
                raise RuntimeError(f"first message was {first.get('type')!r}")
        except Exception as exc:
            ws_event("connect + snapshot", started, exc)
            record_failure("ws", {"what": "connect + snapshot", "error": repr(exc)})
            return
        RESULTS["sockets"]["connect_snapshot_ms"].append(
            ws_event("connect + snapshot", started))
        RESULTS["sockets"]["snapshots"] += 1
        ws.settimeout(1.0)
        self.ws = ws
        self.reader = gevent.spawn(self.read_socket)

    def read_socket(self):
        ws = self.ws
        while True:
            try:
                text = ws.recv()
            except websocket.WebSocketTimeoutException:
                self.check_update_timeout()
                continue
            except Exception as exc:
                if self.ws is ws:  # not closed by on_stop
                    RESULTS["sockets"]["unexpected_closes"] += 1
                    ws_event("closed unexpectedly", time.perf_counter(), exc)
                    record_failure("ws", {"what": "socket closed", "error": repr(exc)})
                    self.ws = None
                return
            if not text:
                continue
            message = json.loads(text)
            if message.get("type") != "analytics.updated":
                continue
            RESULTS["sockets"]["updates_received"] += 1
            data = message.get("data") or {}
            pending = self.pending_update
            if pending is not None and self.reflects(data, pending):
                self.pending_update = None
                RESULTS["sockets"]["updates_matched"] += 1
                RESULTS["sockets"]["update_latency_ms"].append(
                    ws_event("analytics.updated after complete", pending[0]))

    @staticmethod
    def reflects(data: dict, pending) -> bool:
        """The figures include the completion: same completed count and completion rate."""
        _sent, completed, ended = pending
        rate = round(completed / ended, 3) if ended else 0.0
        return (data.get("completed_sessions") == completed
                and abs(float(data.get("completion_rate") or 0) - rate) < 1e-6)

    def check_update_timeout(self):
        pending = self.pending_update
        if pending is not None and time.perf_counter() - pending[0] > UPDATE_TIMEOUT_SECONDS:
            self.pending_update = None
            RESULTS["sockets"]["update_timeouts"] += 1
            ws_event("analytics.updated after complete", pending[0],
                     TimeoutError(f"no analytics.updated in {UPDATE_TIMEOUT_SECONDS:.0f} s"))
            record_failure("ws", {"what": "analytics.updated timeout", "tier": self.tier,
                                  "email": self.email,
                                  "expected": {"completed_sessions": pending[1],
                                               "ended": pending[2]}})

    # ---- what a listener does -------------------------------------------------------------------

    @task(6)
    def browse_catalog(self):
        params = {}
        pick = random.random()
        if pick < 0.3 and self.categories:
            params["category"] = random.choice(self.categories)
        elif pick < 0.5:
            params["q"] = random.choice(SEARCH_TERMS)
        elif pick < 0.7:
            params["accessible"] = "true"
        elif pick < 0.8:
            params.update(page=2, per_page=10)
        name = "GET /api/packages" + ("?" + ",".join(sorted(params)) if params else "")
        self.call("GET", "/api/packages", name=name, params=params)

    @task(4)
    def package_detail(self):
        if not self.all_ids:
            return
        package_id = random.choice(self.all_ids)
        body = self.call("GET", f"/api/packages/{package_id}", name="GET /api/packages/<id>")
        if body:
            self.details[package_id] = body["data"]

    @task(3)
    def dashboard(self):
        self.call("GET", "/api/user/dashboard")

    @task(2)
    def analytics(self):
        self.call("GET", "/api/user/analytics")

    @task(1)
    def profile(self):
        self.call("GET", "/api/user/profile")

    @task(1)
    def subscription(self):
        self.call("GET", "/api/user/subscription")

    @task(1)
    def history(self):
        self.call("GET", "/api/user/sessions", name="GET /api/user/sessions",
                  params={"per_page": 10})

    @task(4)
    def listen(self):
        if self.quota_reached or not self.accessible:
            # The app shows "no sessions left today" from the dashboard's usage.
            self.call("GET", "/api/user/dashboard")
            return
        package_id = random.choice(self.accessible)
        payload = {"package_id": package_id, "mood_before": random.randint(2, 7)}
        tracks = (self.details.get(package_id) or {}).get("tracks") or []
        if tracks and random.random() < 0.5:
            payload["track_id"] = random.choice(tracks)["id"]
        body = self.call("POST", "/api/user/sessions", json=payload, expect=(201,),
                         quota_ok=True)
        if body is None:
            return
        if not body.get("success"):  # the daily quota, used up
            self.quota_reached = True
            return
        session = body["data"]
        session_id, started = session["id"], time.time()
        RESULTS["sessions"]["started"] += 1
        self.counted_sessions += 1
        path = f"/api/user/sessions/{session_id}"

        if random.random() < 0.12:  # an accidental tap: stopped at once
            gevent.sleep(random.uniform(1, 3))
            self.complete(path, int(time.time() - started), False, None)
            RESULTS["sessions"]["accidental_taps"] += 1
            return
        length = random.uniform(0.8, 1.3) * LISTEN_SECONDS
        while True:
            remaining = length - (time.time() - started)
            if remaining <= 0:
                break
            gevent.sleep(min(HEARTBEAT_SECONDS, remaining))
            if time.time() - started < length:
                if self.call("PATCH", path, name="PATCH /api/user/sessions/<id>",
                             json={"listened_seconds": int(time.time() - started)}):
                    RESULTS["sessions"]["heartbeats"] += 1
        finished = random.random() < 0.8
        mood_after = min(10, payload["mood_before"] + random.randint(-1, 3))
        self.complete(path, int(time.time() - started), finished, mood_after)

    def complete(self, path: str, listened: int, finished: bool, mood_after: int | None):
        payload = {"listened_seconds": listened, "completed": finished}
        if mood_after is not None:
            payload["mood_after"] = mood_after
        # Expect the update before sending: a fast worker can publish it before this
        # client has read the completion's response.
        if self.ws is not None:
            if self.pending_update is not None:  # not seen yet; this newer one replaces it
                RESULTS["sockets"]["updates_superseded"] += 1
            self.pending_update = (time.perf_counter(), self.completed + (1 if finished else 0),
                                   self.ended + 1)
        body = self.call("POST", path + "/complete",
                         name="POST /api/user/sessions/<id>/complete", json=payload)
        if body is None:
            self.pending_update = None
            return
        session = body["data"]
        self.ended += 1
        self.completed += 1 if session["completed"] else 0
        RESULTS["sessions"]["completed" if session["completed"] else "stopped"] += 1
        if not session["counts_toward_quota"]:
            self.counted_sessions -= 1
            RESULTS["sessions"]["quota_given_back"] += 1


@events.quitting.add_listener
def write_results(environment, **_kwargs):
    if not RESULTS_FILE:
        return
    sockets = RESULTS["sockets"]
    summary = {key: value for key, value in sockets.items() if not key.endswith("_ms")}
    for key in ("connect_snapshot_ms", "update_latency_ms"):
        values = sockets[key]
        summary[key] = {"count": len(values), "p50": percentile(values, 50),
                        "p95": percentile(values, 95), "p99": percentile(values, 99),
                        "max": round(max(values), 1) if values else None}
    with open(RESULTS_FILE, "w") as fh:
        json.dump({"business": RESULTS["business"], "sessions": RESULTS["sessions"],
                   "sockets": summary}, fh, indent=2)
