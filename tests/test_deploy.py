"""What an operator starts: ``.env.example`` passes the production settings check, the compose
file restarts, health-checks and publishes on loopback, and nginx's config is valid."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config import load_config, validate_config

ROOT = Path(__file__).resolve().parent.parent
LONG_RUNNING = ("postgres", "redis", "web", "ws", "worker", "nginx")


def _env_file(path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_env_example_passes_the_production_check_as_compose_starts_it(compose):
    """`cp .env.example .env && docker compose up` must not be refused by the settings check."""
    for service in ("migrate", "web", "ws", "worker"):
        env = {**_env_file(ROOT / ".env.example"),
               **{k: str(v) for k, v in compose["services"][service]["environment"].items()}}
        config = load_config(env)
        assert config["SONICUS_ENV"] == "production"
        validate_config(config)  # raises ConfigError with the reason when it would refuse


def test_compose_restarts_and_health_checks_what_runs(compose):
    services = compose["services"]
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["migrate"]["restart"] == "on-failure"  # runs once; again if it failed
    assert services["web"]["healthcheck"]["test"][-1] == "web"
    assert services["worker"]["healthcheck"]["test"][-1] == "worker"
    assert services["ws"]["healthcheck"]["test"][-1] == "ws"
    assert services["ws"]["environment"]["SONICUS_PROCESS"] == "ws"


def test_compose_publishes_only_on_loopback_through_nginx(compose):
    services = compose["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert list(published) == ["nginx"]
    for port in published["nginx"]:
        default = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", port)
        assert default.startswith("127.0.0.1:"), port
    # One proxy in front of the app: the client is the last X-Forwarded-For entry.
    assert services["web"]["environment"]["TRUSTED_PROXY_COUNT"] == "1"
    mounted = services["nginx"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted).is_file()


def test_nginx_config_buffers_and_passes_websockets():
    conf = (ROOT / "deploy/nginx/sonicus.conf").read_text()
    for directive in ("proxy_request_buffering on", "proxy_set_header Upgrade $http_upgrade",
                      "proxy_read_timeout 1h",
                      "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for",
                      "client_header_timeout"):
        assert directive in conf, directive
    sockets = conf[conf.index("location /ws/"):]
    assert sockets[:sockets.index("}")].count("proxy_pass http://sonicus_ws;") == 1
    assert "$request " not in conf and "$request_uri" not in conf  # no query strings logged


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_config(tmp_path):
    site = (ROOT / "deploy/nginx/sonicus.conf").read_text()
    # The compose service name does not resolve here: point the upstream at loopback.
    site = site.replace("server web:18100", "server 127.0.0.1:18100").replace(
        "server ws:18101", "server 127.0.0.1:18101")
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ include {tmp_path}/site.conf; }}\n")
    command = ["nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_the_worker_health_check_reads_a_heartbeat(app, test_redis_url):
    from sonicus.healthcheck import worker_is_healthy
    from sonicus.tasks.worker import make_worker

    assert not worker_is_healthy(test_redis_url)
    worker = make_worker(app, simple=True)
    worker.register_birth()
    try:
        assert worker_is_healthy(test_redis_url)
        assert not worker_is_healthy(test_redis_url, hostname="another-host")
    finally:
        worker.register_death()
    assert not worker_is_healthy("redis://127.0.0.1:1/0")
