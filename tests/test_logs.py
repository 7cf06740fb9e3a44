"""One log format: every line a real gunicorn, a real RQ worker and the development server
write is a JSON object; the request id travels into the jobs a request enqueues; tokens and
email addresses never reach a log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from processes import free_port, stop_group, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


def _json_lines(path: Path) -> list[dict]:
    """Every line as JSON (fails on the first line that is not)."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                entries.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
    return entries


@pytest.fixture
def run_env(idp, test_database_url, test_redis_url, tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
            "DATABASE_URL": test_database_url, "REDIS_URL": test_redis_url,
            "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
            "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "INFO",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "MEDIA_BASE_URL": "https://media.example.com", "MEDIA_URL_SECRET": "s"}


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        stop_group(proc)


def test_gunicorn_and_worker_write_only_json_and_the_request_id_reaches_the_job(
        run_env, tmp_path, token_for, make_user, make_package):
    port = free_port()
    env = {**run_env, "SONICUS_GUNICORN_ACCESS_LOG": "1"}
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    procs = []
    with web_log.open("w") as web_out, worker_log.open("w") as worker_out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py",
             "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "8"],
            cwd=ROOT, env=env, stdout=web_out, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([sys.executable, "worker.py", "--simple", "--no-schedule"],
                                      cwd=ROOT, env=env, stdout=worker_out,
                                      stderr=subprocess.STDOUT, start_new_session=True))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(base + "/api/health", procs[0])
            make_user("logged@example.com")
            package = make_package("logs").id
            token = token_for("logged@example.com")
            headers = {"Authorization": f"Bearer {token}"}
            started = requests.post(base + "/api/user/sessions", json={"package_id": package},
                                    headers=headers, timeout=10)
            assert started.status_code == 201, started.text
            done = requests.post(
                base + f"/api/user/sessions/{started.json()['data']['id']}/complete",
                json={"listened_seconds": 600, "completed": True},
                headers={**headers, "X-Request-ID": "trace-completion-1"}, timeout=10)
            assert done.ok, done.text
            # a token in a query string and an email address in a path
            requests.get(base + f"/api/user/profile?access_token={token}", timeout=10)
            requests.get(base + "/api/no/such/someone@example.com", timeout=10)

            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if "trace-completion-1" in worker_log.read_text():
                    break
                time.sleep(0.1)
        finally:
            _stop(procs)

    web, worker = _json_lines(web_log), _json_lines(worker_log)
    loggers = {e["logger"] for e in web}
    assert {"gunicorn.error", "gunicorn.access", "sonicus.access"} <= loggers
    # The app's access line: once per request, with the request id the client sent.
    completion = [e for e in web if e.get("request_id") == "trace-completion-1"]
    assert [e["logger"] for e in completion].count("sonicus.access") == 1
    # The job that request enqueued logs under the same id, in the worker.
    jobs = [e for e in worker if e.get("request_id") == "trace-completion-1"]
    assert jobs and jobs[-1]["logger"] == "sonicus.jobs" and jobs[-1]["outcome"] == "succeeded"
    assert any(e["logger"].startswith("rq.") for e in worker)  # RQ's own lines are JSON too
    everything = web_log.read_text() + worker_log.read_text()
    assert token not in everything
    assert "logged@example.com" not in everything and "someone@example.com" not in everything


def test_the_development_server_logs_each_request_once(run_env, tmp_path):
    port = free_port()
    env = {**run_env, "SONICUS_ENV": "development", "REDIS_URL": ""}
    out = tmp_path / "dev.log"
    with out.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
            requests.get(f"http://127.0.0.1:{port}/api/tiers", timeout=10)
            time.sleep(0.3)
        finally:
            _stop([proc])
    entries = _json_lines(out)  # werkzeug's own lines are JSON as well
    assert [e.get("path") for e in entries if "/api/tiers" in json.dumps(e)] == ["/api/tiers"]


_BATCHED_SCRIPT = r"""
import logging, sys, time
from sonicus.logs import BatchedStreamHandler
handler = BatchedStreamHandler(sys.stderr)
handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
log = logging.getLogger("batched")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False
log.info("first")
log.warning("second")
print("after-warning", flush=True)
sys.stdin.readline()
log.info("third")
print("after-third", flush=True)
sys.stdin.readline()
log.info("at exit")
"""


def test_web_process_log_lines_keep_their_order_and_arrive_within_a_tenth_of_a_second():
    """The web processes write log lines in batches: a WARNING goes out at once with every
    line before it, in order; an INFO line within 0.1 s; pending lines at exit."""
    proc = subprocess.Popen([sys.executable, "-c", _BATCHED_SCRIPT], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout.readline().strip() == "after-warning"
        assert proc.stderr.readline().strip() == "INFO first"  # written with the WARNING
        assert proc.stderr.readline().strip() == "WARNING second"
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "after-third"
        started = time.monotonic()
        assert proc.stderr.readline().strip() == "INFO third"  # by the flusher
        assert time.monotonic() - started < 1.0
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stderr.readline().strip() == "INFO at exit"
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_batched_handler_still_applies_its_filters_and_scrubs_constant_messages():
    """``BatchedStreamHandler.handle`` skips the filter call only when there are no filters;
    the JSON formatter scrubs a message without arguments once and reuses it."""
    import io
    import logging

    from sonicus.log_format import JsonFormatter
    from sonicus.logs import BatchedStreamHandler

    stream = io.StringIO()
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("sonicus.test-batched-filters")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.warning("sent by someone@example.com")
        log.warning("sent by someone@example.com")
        handler.addFilter(lambda record: "drop" not in record.getMessage())
        log.warning("drop this one")
        log.warning("keep %s", "this one")
    finally:
        log.removeHandler(handler)
        handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [e["message"] for e in lines] == ["sent by [redacted-email]"] * 2 + ["keep this one"]
