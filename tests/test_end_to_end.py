"""The whole path, as a listener and an admin would live it, across two web processes:
start and complete a session on process B, a worker refreshes, the socket on process A
hears about it; an admin suspends the listener on B, the socket on A is closed."""

from __future__ import annotations

import requests


def _seed_catalog(runner):
    result = runner.invoke(args=["sonicus", "seed", "sonicus/data/demo_catalog.yaml"])
    assert result.exit_code == 0, result.output


def test_completed_session_reaches_the_listeners_socket(app, two_web_processes, runner, token_for,
                                                        connect_ws):
    from sonicus.tasks.worker import make_worker

    _seed_catalog(runner)
    process_a, process_b = two_web_processes
    token = token_for("listener@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    packages = requests.get(process_b.http_url("/api/packages?accessible=true"),
                            headers=headers, timeout=10).json()["data"]
    package_id = packages[0]["id"]

    ws = connect_ws(process_a.ws_url(), token)
    snapshot = ws.receive_json()
    assert snapshot["type"] == "analytics.snapshot"
    assert snapshot["data"]["completed_sessions"] == 0

    started = requests.post(process_b.http_url("/api/user/sessions"), headers=headers,
                            json={"package_id": package_id, "mood_before": 3}, timeout=10)
    assert started.status_code == 201, started.json()
    session_id = started.json()["data"]["id"]
    done = requests.post(process_b.http_url(f"/api/user/sessions/{session_id}/complete"),
                         headers=headers, json={"listened_seconds": 5, "completed": True,
                                                "mood_after": 8}, timeout=10)
    assert done.status_code == 200, done.json()
    make_worker(app, simple=True).work(burst=True, with_scheduler=True)

    update = ws.receive_json()
    assert update["type"] == "analytics.updated"
    assert update["data"]["total_sessions"] == 1
    ws.close()


def test_suspension_closes_the_listeners_sockets_everywhere(two_web_processes, token_for,
                                                            db_session, connect_ws):
    from sonicus.models import User

    process_a, process_b = two_web_processes
    listener = token_for("listener@example.com")
    admin = token_for("admin@example.com", groups=("sonicus-user", "sonicus-super-admin"))
    sockets = [connect_ws(server.ws_url(), listener) for server in two_web_processes]
    for ws in sockets:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    user_id = db_session.query(User).filter_by(email="listener@example.com").one().id

    res = requests.patch(process_b.http_url(f"/api/admin/users/{user_id}"),
                         headers={"Authorization": f"Bearer {admin}"},
                         json={"is_active": False}, timeout=10)
    assert res.status_code == 200, res.json()
    assert [ws.close_code() for ws in sockets] == [4403, 4403]

    refused = connect_ws(process_a.ws_url(), listener)
    assert refused.close_code() == 4403
    profile = requests.get(process_a.http_url("/api/user/profile"),
                           headers={"Authorization": f"Bearer {listener}"}, timeout=10)
    assert profile.status_code == 403 and profile.json()["code"] == "account_suspended"


def test_erasure_closes_the_accounts_sockets_everywhere(two_web_processes, token_for,
                                                         connect_ws):
    """An erased account's open sockets belong to no account: each process closes them with
    4401 (sign in again), and the same token then signs in a fresh account."""
    process_a, process_b = two_web_processes
    listener = token_for("leaving@example.com")
    headers = {"Authorization": f"Bearer {listener}"}
    sockets = [connect_ws(server.ws_url(), listener) for server in two_web_processes]
    for ws in sockets:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    erased = requests.delete(process_b.http_url("/api/user/profile"), headers=headers,
                             timeout=10)
    assert erased.status_code == 200, erased.json()
    assert [ws.close_code() for ws in sockets] == [4401, 4401]
    again = connect_ws(process_a.ws_url(), listener)
    assert again.receive_json()["type"] == "analytics.snapshot"
    again.close()
