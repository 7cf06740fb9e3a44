"""The client's address behind trusted proxies (``TRUSTED_PROXY_COUNT``): the rate limit per
address and the access log see the client, never the proxy, and never a forged entry."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture
def app_behind(make_config):
    from sonicus import create_app

    def make(proxies: int):
        return create_app(make_config(TRUSTED_PROXY_COUNT=proxies, RATELIMIT_ENABLED=True,
                                      RATELIMIT_PER_IP="3/minute"))

    return make


def _get(client, remote, forwarded=None):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return client.get("/api/tiers", headers=headers, environ_base={"REMOTE_ADDR": remote})


def _spend(client, remote, forwarded, n=3):
    for _ in range(n):
        assert _get(client, remote, forwarded).status_code == 200


def test_behind_one_proxy_each_client_has_its_own_rate_limit(app_behind):
    client = app_behind(1).test_client()
    _spend(client, "10.0.0.2", "203.0.113.7")
    assert _get(client, "10.0.0.2", "203.0.113.7").status_code == 429
    # Another user through the same load balancer is not limited with the first.
    assert _get(client, "10.0.0.2", "198.51.100.9").status_code == 200


def test_behind_two_proxies_the_client_is_what_the_outer_proxy_saw(app_behind):
    client = app_behind(2).test_client()
    # client -> CDN (adds the client) -> nginx (adds the CDN) -> app (sees nginx)
    _spend(client, "10.0.0.3", "203.0.113.7, 172.16.0.5")
    assert _get(client, "10.0.0.3", "203.0.113.7, 172.16.0.5").status_code == 429
    assert _get(client, "10.0.0.3", "198.51.100.9, 172.16.0.5").status_code == 200


def test_a_forged_forwarded_header_does_not_escape_the_rate_limit(app_behind):
    client = app_behind(1).test_client()
    # The client writes its own X-Forwarded-For; the proxy appends the real address.
    for forged in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        assert _get(client, "10.0.0.2", f"{forged}, 203.0.113.7").status_code == 200
    assert _get(client, "10.0.0.2", "4.4.4.4, 203.0.113.7").status_code == 429


def test_without_trusted_proxies_the_header_is_ignored(app_behind):
    client = app_behind(0).test_client()
    for forged in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
        assert _get(client, "192.0.2.1", forged).status_code == 200
    assert _get(client, "192.0.2.1", "4.4.4.4").status_code == 429


def test_the_access_log_names_the_client_not_the_proxy(app_behind, caplog):
    client = app_behind(1).test_client()
    with caplog.at_level(logging.INFO, logger="sonicus.access"):
        _get(client, "10.0.0.2", "6.6.6.6, 203.0.113.7")
    lines = [r for r in caplog.records if r.name == "sonicus.access"]
    assert [r.client for r in lines] == ["203.0.113.7"]
