"""Optional Sentry (``SENTRY_DSN``): an unexpected error reaches it, scrubbed like the logs
(a local stand-in receives the real SDK's envelopes over HTTP)."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sentry_sdk


@pytest.fixture
def sentry_stand_in():
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://publickey@127.0.0.1:{server.server_port}/1", received
    sentry_sdk.init()  # no DSN: reporting off again for the rest of the suite
    server.shutdown()


def test_an_unexpected_error_reaches_sentry_without_tokens_or_emails(sentry_stand_in,
                                                                     make_config, token_for):
    from sonicus import create_app
    from sonicus.envelope import Blueprint

    dsn, received = sentry_stand_in
    app = create_app(make_config(SENTRY_DSN=dsn, PROPAGATE_EXCEPTIONS=False))
    boom = Blueprint("boom", __name__, url_prefix="/api/boom")
    token = token_for("reported@example.com")

    @boom.route("/")
    def explode():
        raise RuntimeError(f"lookup failed for reported@example.com with {token}")

    app.register_blueprint(boom)
    res = app.test_client().get(f"/api/boom/?access_token={token}",
                                headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 500
    sentry_sdk.flush(timeout=5)
    sent = b"".join(received).decode("utf-8", "replace")
    assert "RuntimeError" in sent and "lookup failed for [redacted-email]" in sent
    assert token not in sent and token.split(".")[1] not in sent
    assert "reported@example.com" not in sent


def test_without_a_dsn_nothing_is_reported(make_config):
    from sonicus.errors import init_error_reporting

    assert init_error_reporting(type("App", (), {"config": make_config()})()) is False
