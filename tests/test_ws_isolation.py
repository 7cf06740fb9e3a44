"""Two socket processes (``SONICUS_PROCESS=ws``, started the production way), one killed with
SIGKILL while it holds sockets: updates reach their own user's sockets only, wherever they
(re)connect, and a killed process's leases run out within their term."""

from __future__ import annotations

import signal
import time

import redis as redis_lib

from sonicus.extensions import channel_prefix


def test_updates_reach_only_their_users_sockets_across_processes_kills_and_reconnects(
        app, socket_process, make_user, token_for, connect_ws):
    from sonicus.realtime.leases import LEASE_SECONDS
    from sonicus.realtime.publish import publish_to_user

    (doomed, doomed_port, _), (_, port, output) = socket_process(), socket_process()
    urls = [f"ws://127.0.0.1:{p}/ws/analytics" for p in (doomed_port, port)]
    emails = ["ana@example.com", "ben@example.com", "cy@example.com"]
    ids = {email: make_user(email).id for email in emails}
    tokens = {email: token_for(email) for email in emails}
    leases = redis_lib.Redis.from_url(app.config["REDIS_URL"])
    key = f"{channel_prefix(app.config)}ws-sockets:{ids['ana@example.com']}"

    def open_sockets(where):
        sockets = {email: [connect_ws(url, tokens[email]) for url in where] for email in emails}
        for own in sockets.values():
            for ws in own:
                assert ws.receive_json()["type"] == "analytics.snapshot"
        return sockets

    def each_gets_only_its_own(sockets, round_):
        with app.app_context():
            for email in emails:
                publish_to_user(ids[email], {"type": "analytics.updated",
                                             "data": {"for": email, "round": round_}})
        for email, own in sockets.items():
            for ws in own:
                assert ws.receive_json()["data"] == {"for": email, "round": round_}
                assert ws.nothing_arrives(0.1)

    sockets = open_sockets(urls)
    each_gets_only_its_own(sockets, 1)
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.time()
    doomed.wait(10)
    # its sockets' leases were never given back: they run out within their term
    assert leases.zcard(key) == 2
    assert max(score for _m, score in leases.zrange(key, 0, -1, withscores=True)) \
        <= killed_at + LEASE_SECONDS
    assert leases.ttl(key) <= LEASE_SECONDS + 1

    for own in sockets.values():  # the clients reconnect, all to the process left
        own[0].shutdown()
    again = open_sockets([urls[1], urls[1]])
    live = {email: [sockets[email][1], *again[email]] for email in emails}
    for round_ in (2, 3):
        each_gets_only_its_own(live, round_)
    for ws in again["ben@example.com"]:  # one user's sockets close: the others go on
        ws.close()
    live["ben@example.com"] = live["ben@example.com"][:1]
    each_gets_only_its_own(live, 4)
    assert "Traceback" not in output.read_text()


def test_the_cap_holds_across_two_socket_processes_after_redis_restarts_empty(
        app, own_redis, socket_process, make_config, make_user, token_for, connect_ws, wait_for):
    """A user at the cap (10) over two socket processes; Redis restarts empty (every lease
    lost) while the sockets stay open. Once the processes have subscribed again, their open
    sockets are leased again: an eleventh socket is refused on either process, and one freed
    lets one in; every socket gets its updates again."""
    from sonicus import create_app
    from sonicus.realtime.publish import publish_to_user

    env = {"REDIS_URL": own_redis.url, "REDIS_RETRY_SECONDS": "0.5"}
    (_, port_a, out_a), (_, port_b, out_b) = socket_process(**env), socket_process(**env)
    url_a, url_b = (f"ws://127.0.0.1:{p}/ws/analytics" for p in (port_a, port_b))
    user_id = make_user("restarted@example.com").id
    token = token_for("restarted@example.com")
    held = [connect_ws(url_a if n < 6 else url_b, token) for n in range(10)]
    for ws in held:
        assert ws.receive_json()["type"] == "analytics.snapshot"
    assert connect_ws(url_b, token).close_code() == 4429

    own_redis.stop()
    time.sleep(0.5)
    own_redis.start()  # empty
    leases = redis_lib.Redis.from_url(own_redis.url)
    key = f"{channel_prefix(env)}ws-sockets:{user_id}"
    assert wait_for(lambda: leases.zcard(key) == 10, timeout=20)
    time.sleep(1)  # past both processes' back-off
    for url in (url_a, url_b):
        assert connect_ws(url, token).close_code() == 4429
    held[0].close()  # on process A
    assert wait_for(lambda: leases.zcard(key) == 9)
    again = connect_ws(url_b, token)
    assert again.receive_json()["type"] == "analytics.snapshot"
    for ws in held[1:]:  # after the gap every socket was sent its figures again
        assert ws.receive_json()["type"] == "analytics.updated"
    with create_app(make_config(REDIS_URL=own_redis.url)).app_context():  # that Redis
        publish_to_user(user_id, {"type": "analytics.updated", "data": {"after": "restart"}})
    for ws in [*held[1:], again]:
        assert ws.receive_json() == {"type": "analytics.updated", "data": {"after": "restart"}}
    assert "Traceback" not in out_a.read_text() + out_b.read_text()
