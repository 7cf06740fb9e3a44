"""Caps on open analytics sockets: per user across every web process (4429), per process
(1013), and what happens when a process dies holding sockets."""

from __future__ import annotations

import time

import redis as redis_lib

from sonicus.extensions import channel_prefix


def _leases_key(app, user_id: int) -> str:
    return f"{channel_prefix(app.config)}ws-sockets:{user_id}"


def test_the_eleventh_socket_of_a_user_is_refused_across_two_processes(
        app, two_web_processes, token_for, make_user, connect_ws, wait_for, test_redis_url):
    a, b = two_web_processes
    alice = make_user("alice@example.com").id
    make_user("bob@example.com")
    token = token_for("alice@example.com")
    held = [connect_ws((a if n % 2 else b).ws_url(), token) for n in range(10)]
    for ws in held:
        assert ws.receive_json()["type"] == "analytics.snapshot"

    for server in (a, b):  # the eleventh, wherever it lands
        refused = connect_ws(server.ws_url(), token)
        assert refused.close_code() == 4429

    other = connect_ws(a.ws_url(), token_for("bob@example.com"))  # other users unaffected
    assert other.receive_json()["type"] == "analytics.snapshot"

    # A socket freed on one process lets a new one in on the other.
    leases = redis_lib.Redis.from_url(test_redis_url)
    held[0].close()  # it was on process B
    assert wait_for(lambda: leases.zcard(_leases_key(app, alice)) == 9)
    again = connect_ws(a.ws_url(), token)
    assert again.receive_json()["type"] == "analytics.snapshot"
    assert connect_ws(b.ws_url(), token).close_code() == 4429


def test_leases_of_a_process_that_died_stop_counting(
        app, two_web_processes, token_for, make_user, connect_ws, test_redis_url):
    """A process that crashed never released its sockets' leases; they ran out unrenewed,
    so they no longer count against the user."""
    carol = make_user("carol@example.com").id
    leases = redis_lib.Redis.from_url(test_redis_url)
    ran_out = time.time() - 1
    leases.zadd(_leases_key(app, carol), {f"dead-process-{n}": ran_out for n in range(10)})
    ws = connect_ws(two_web_processes[0].ws_url(), token_for("carol@example.com"))
    assert ws.receive_json()["type"] == "analytics.snapshot"
    assert leases.zcard(_leases_key(app, carol)) == 1


def test_without_redis_a_users_sockets_are_counted_in_the_process(
        token_for, make_config, make_user, connect_ws, serve_in_process, wait_for):
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    lite = create_app(make_config(REDIS_URL=None, WS_MAX_SOCKETS_PER_USER=2))
    make_user("dana@example.com")
    make_user("erin@example.com")
    server = serve_in_process(lite)
    token = token_for("dana@example.com")
    held = [connect_ws(server.url(), token) for _ in range(2)]
    for ws in held:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    assert connect_ws(server.url(), token).close_code() == 4429
    other = connect_ws(server.url(), token_for("erin@example.com"))
    assert other.receive_json()["type"] == "analytics.snapshot"
    held[0].close()
    assert wait_for(lambda: get_broker(lite).local_socket_count() == 2)
    assert connect_ws(server.url(), token).receive_json()["type"] == "analytics.snapshot"


def test_a_snapshot_that_fails_closes_the_socket_with_1013(
        token_for, make_config, make_user, connect_ws, serve_in_process, wait_for):
    """After the upgrade, an error (the database pool timing out, say) is a close code, not
    an HTTP answer written onto the socket; the socket's place is given back."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    failing = create_app(make_config())
    broker = get_broker(failing)

    def snapshot(user_id):
        raise TimeoutError("pool exhausted")

    broker.snapshot = snapshot
    make_user("frank@example.com")
    server = serve_in_process(failing)
    ws = connect_ws(server.url(), token_for("frank@example.com"))
    assert ws.close_code() == 1013
    assert wait_for(lambda: broker.local_socket_count() == 0)


def test_renewal_pushes_every_sockets_lease_forward(app, test_redis_url):
    """The subscriber renews a process's leases (one ZADD per user, in several pipelines): each
    socket's lease, of every user, runs out later than before, and none of another process's is
    touched."""
    from sonicus.realtime.broker import ADMITTED, get_broker
    from sonicus.realtime.connection import Connection
    from sonicus.realtime.leases import LEASE_RENEW_USERS, LEASE_SECONDS

    broker = get_broker(app)
    leases = redis_lib.Redis.from_url(test_redis_url)
    users = range(900001, 900001 + 2 * LEASE_RENEW_USERS + 3)  # three pipelines
    foreign_until = time.time() + 5
    leases.zadd(_leases_key(app, users[0]), {"another-process-1": foreign_until})
    conns = [Connection(None, user_id) for user_id in users for _ in range(3)]
    try:
        for conn in conns:
            assert broker.admit(conn, per_process=10_000, per_user=10) == ADMITTED
        before = {conn.lease: leases.zscore(_leases_key(app, conn.user_id), conn.lease)
                  for conn in conns}
        time.sleep(0.05)
        assert broker.leases.renew() == len(conns)
        for conn in conns:
            assert leases.zscore(_leases_key(app, conn.user_id), conn.lease) > before[conn.lease]
        assert leases.zscore(_leases_key(app, users[0]), "another-process-1") == foreign_until
        assert leases.ttl(_leases_key(app, users[1])) > LEASE_SECONDS - 5
    finally:
        for conn in conns:
            broker.unregister(conn)


def test_the_cap_still_holds_after_redis_restarts_empty(
        own_redis, token_for, make_config, make_user, connect_ws, serve_in_process):
    """Redis comes back without the leases (restarted empty, or a socket was admitted while it
    was down, on the process's own count): once the subscriber is back, the process's open
    sockets are leased again, so another process refuses the user's socket past the cap."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2,
                         WS_MAX_SOCKETS_PER_USER=3)
    holding, other = create_app(config), create_app(config)
    gina = make_user("gina@example.com").id
    token = token_for("gina@example.com")
    server, other_server = serve_in_process(holding), serve_in_process(other)
    try:
        held = [connect_ws(server.url(), token) for _ in range(2)]
        for ws in held:
            assert ws.receive_json()["type"] == "analytics.snapshot"

        own_redis.stop()
        time.sleep(0.3)
        during = connect_ws(server.url(), token)  # counted in this process alone meanwhile
        assert during.receive_json()["type"] == "analytics.snapshot"
        own_redis.start()  # empty: the leases of before are gone
        assert get_broker(holding).wait_ready(20), "the subscriber did not reconnect"
        leases, deadline = redis_lib.Redis.from_url(own_redis.url), time.time() + 5
        while time.time() < deadline and leases.zcard(_leases_key(holding, gina)) < 3:
            time.sleep(0.05)
        time.sleep(0.5)  # past the other process's back-off, too
        refused = connect_ws(other_server.url(), token)
        assert refused.close_code() == 4429
    finally:
        for app in (holding, other):
            get_broker(app).stop()


def test_sockets_admitted_while_a_process_skips_redis_count_against_the_cap_once_it_answers(
        own_redis, token_for, make_config, make_user, connect_ws, serve_in_process):
    """Redis pauses (a failover's CLIENT PAUSE) without dropping the process's subscription:
    the process's lease call times out and its back-off skips Redis for a while, so the user's
    next sockets there are admitted on its own count, without a lease. Once Redis answers
    again they are leased (the one whose script ran late keeps its one lease), so another
    process refuses the user's socket past the cap. Before, they were leased only after the
    subscriber itself reconnected, which a pause never makes it do: they never counted, and
    the user held the cap's sockets again elsewhere."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.5,
                         REDIS_SOCKET_TIMEOUT_SECONDS=0.3, WS_MAX_SOCKETS_PER_USER=3)
    holding, other = create_app(config), create_app(config)
    hana = make_user("hana@example.com").id
    token = token_for("hana@example.com")
    server, other_server = serve_in_process(holding), serve_in_process(other)
    leases = redis_lib.Redis.from_url(own_redis.url)
    try:
        first = connect_ws(server.url(), token)
        assert first.receive_json()["type"] == "analytics.snapshot"
        leases.execute_command("CLIENT", "PAUSE", "1500", "ALL")
        during = [connect_ws(server.url(), token) for _ in range(2)]
        for ws in during:
            assert ws.receive_json()["type"] == "analytics.snapshot"
        assert get_broker(holding).local_socket_count() == 3
        time.sleep(2.5)  # the pause is over, and the back-off
        deadline = time.time() + 5
        while time.time() < deadline and leases.zcard(_leases_key(holding, hana)) < 3:
            time.sleep(0.05)
        assert leases.zcard(_leases_key(holding, hana)) == 3
        assert connect_ws(other_server.url(), token).close_code() == 4429
    finally:
        for app in (holding, other):
            get_broker(app).stop()


def _open_or_close_code(ws, seconds: float = 3.0):
    """The close code ``ws`` gets within ``seconds`` (messages skipped), else "open"."""
    import websocket

    ws.settimeout(seconds)
    try:
        return ws.close_code()
    except websocket.WebSocketTimeoutException:
        return "open"


def test_restoring_leases_after_a_redis_outage_keeps_the_user_under_the_cap(
        own_redis, token_for, make_config, make_user, connect_ws, serve_in_process):
    """While Redis is down each process admits a user's sockets on its own count, so between
    two processes the user holds more than the cap. Once Redis is back, the leases restored
    keep to the cap: the sockets past it are closed with 4429, and the user holds no more live
    sockets than the cap allows (before, every socket was leased again and stayed open)."""
    from sonicus import create_app
    from sonicus.realtime.broker import get_broker

    config = make_config(REDIS_URL=own_redis.url, REDIS_RETRY_SECONDS=0.2,
                         WS_MAX_SOCKETS_PER_USER=3)
    first, second = create_app(config), create_app(config)
    ivy = make_user("ivy@example.com").id
    token = token_for("ivy@example.com")
    server_a, server_b = serve_in_process(first), serve_in_process(second)
    try:
        before = [connect_ws(server_a.url(), token), connect_ws(server_a.url(), token),
                  connect_ws(server_b.url(), token)]
        for ws in before:
            assert ws.receive_json()["type"] == "analytics.snapshot"

        own_redis.stop()
        time.sleep(0.3)
        # each process counts only its own sockets meanwhile: 3 + 2 for a cap of 3
        during = [connect_ws(server_a.url(), token), connect_ws(server_b.url(), token),
                  connect_ws(server_b.url(), token)]
        for ws in during:
            assert ws.receive_json()["type"] == "analytics.snapshot"
        assert get_broker(first).local_socket_count() + get_broker(second).local_socket_count() \
            == 6
        own_redis.start()  # empty: every lease is restored by its process
        for app in (first, second):
            assert get_broker(app).wait_ready(20), "the subscriber did not reconnect"
        leases, deadline = redis_lib.Redis.from_url(own_redis.url), time.time() + 10
        counts = lambda: (get_broker(first).local_socket_count()  # noqa: E731
                          + get_broker(second).local_socket_count())
        while time.time() < deadline and (counts() > 3
                                          or leases.zcard(_leases_key(first, ivy)) < 3):
            time.sleep(0.05)
        assert counts() == 3
        assert leases.zcard(_leases_key(first, ivy)) == 3
        sockets = [*before, *during]
        codes = [_open_or_close_code(ws) for ws in sockets]
        assert sorted(codes, key=str) == sorted([4429] * 3 + ["open"] * 3, key=str), codes
    finally:
        for app in (first, second):
            get_broker(app).stop()


def test_leases_redis_lost_without_dropping_the_connection_are_taken_again_at_renewal(
        app, test_redis_url, wait_for):
    """Redis loses the leases while the process's connections stay up (a flush, a restart
    behind a proxy that keeps the clients' connections): no reconnection tells the
    subscriber, and the renewal only pushed forward leases Redis still held, so the user's
    open sockets stopped counting and another process admitted the cap's sockets again. The
    renewal sees the missing leases and takes them again, within the cap."""
    from sonicus.realtime.broker import ADMITTED, get_broker
    from sonicus.realtime.connection import Connection

    broker = get_broker(app)
    leases = redis_lib.Redis.from_url(test_redis_url)
    key = _leases_key(app, 900101)
    conns = [Connection(None, 900101) for _ in range(3)]
    try:
        for conn in conns:
            assert broker.admit(conn, per_process=10_000, per_user=3) == ADMITTED
        assert leases.zcard(key) == 3
        leases.flushdb()
        broker.leases.renew()
        wait_for(lambda: leases.zcard(key) == 3, 5)  # the subscriber restores them
        assert {m.decode() for m in leases.zrange(key, 0, -1)} == {c.lease for c in conns}
    finally:
        for conn in conns:
            broker.unregister(conn)
