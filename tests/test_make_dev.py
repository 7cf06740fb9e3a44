"""`make dev` on another port: the server's public address (stream and checkout URLs, the
development token issuer) follows the port, and the token command it prints names the same
address, so a token minted in another terminal is accepted."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def _dry_run(*args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PUBLIC_BASE_URL", "PORT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", "--no-print-directory", "dev", *args], cwd=ROOT,
                         env=env, capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def _server_line(lines: list[str]) -> str:
    return next(line for line in lines if "flask --app wsgi run" in line)


def _token_line(lines: list[str]) -> str:
    return next(line for line in lines if "dev-token" in line)


def test_make_dev_on_another_port_serves_urls_and_tokens_for_that_port():
    lines = _dry_run("PORT=18110")
    assert _server_line(lines).startswith("PUBLIC_BASE_URL=http://127.0.0.1:18110 ")
    assert "--port 18110" in _server_line(lines)
    assert "PUBLIC_BASE_URL=http://127.0.0.1:18110 " in _token_line(lines)


def test_make_dev_on_the_default_port_prints_the_readme_token_command():
    lines = _dry_run()
    assert "PUBLIC_BASE_URL" not in _server_line(lines)
    assert "PUBLIC_BASE_URL" not in _token_line(lines)
    assert "--port 18100" in _server_line(lines)
