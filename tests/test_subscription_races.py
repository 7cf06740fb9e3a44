"""Race-prone rules against PostgreSQL with real threads (each its own app context)."""

from __future__ import annotations

import threading

EMAIL = "listener@example.com"


def run_together(app, n, request):
    """Run ``request(client)`` in ``n`` threads released at once; the responses."""
    barrier = threading.Barrier(n)
    results = [None] * n

    def worker(i):
        with app.app_context():
            client = app.test_client()
            barrier.wait()
            results[i] = request(client)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_trial_requested_concurrently_exactly_one_wins(app, client, auth, billing):
    headers = auth()
    client.get("/api/user/subscription", headers=headers)  # the user exists

    def request(c):
        resp = c.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                      headers=headers)
        return resp.status_code, resp.get_json().get("code")

    results = run_together(app, 8, request)
    assert sorted(results, key=lambda r: r[0]) == \
        [(200, None)] + [(409, "trial_already_used")] * 7
    assert len(billing.events_of(EMAIL, "trial_started")) == 1
    data = billing.subscription(client, headers)
    assert data["status"] == "trialing" and data["trial_used"] is True


def test_concurrent_confirm_of_one_checkout_pays_once(app, client, auth, billing):
    headers = auth()
    reference = client.post("/api/user/subscription", json={"tier": "premium"},
                            headers=headers).get_json()["data"]["checkout"]["reference"]

    def request(c):
        resp = c.post(f"/api/billing/sandbox/{reference}/confirm")
        return resp.status_code, resp.get_json()["data"]["duplicate"]

    results = run_together(app, 6, request)
    assert sorted(results) == [(200, False)] + [(200, True)] * 5
    assert len(billing.events_of(EMAIL, "activated")) == 1


def test_concurrent_cancel_and_resume_leave_a_consistent_row(app, client, auth, billing):
    headers = auth()
    billing.buy(client, headers, "premium")

    def request(c):
        c.delete("/api/user/subscription", json={}, headers=headers)
        return c.post("/api/user/subscription/resume", headers=headers).status_code

    run_together(app, 4, request)
    data = billing.subscription(client, headers)
    scheduled = len(billing.events_of(EMAIL, "cancel_scheduled"))
    resumed = len(billing.events_of(EMAIL, "resumed"))
    # every schedule was undone by exactly one resume, or the last one is still in force
    assert scheduled - resumed == (1 if data["cancel_at_period_end"] else 0)
    assert data["tier"] == "premium"


def test_accounts_sharing_a_verified_email_get_one_trial_between_them(app, client, auth,
                                                                      billing):
    """One person signed in through several identities of the provider (say Google and a
    password) that share one verified email: each is its own account here, but the free
    trial is one per person. Asked at the same instant from six such accounts, one trial
    starts and the others are 409 ``trial_already_used``, instead of six free trials
    taken one after another or all at once."""
    accounts = [auth(EMAIL if i % 2 == 0 else "  Listener@Example.COM ", sub=f"identity-{i}")
                for i in range(6)]
    for headers in accounts:
        client.get("/api/user/subscription", headers=headers)  # the accounts exist

    def request(c, headers):
        resp = c.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                      headers=headers)
        return resp.status_code, resp.get_json().get("code")

    barrier = threading.Barrier(len(accounts))
    results = [None] * len(accounts)

    def worker(i):
        with app.app_context():
            c = app.test_client()
            barrier.wait()
            results[i] = request(c, accounts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(accounts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results, key=lambda r: r[0]) == \
        [(200, None)] + [(409, "trial_already_used")] * 5
    # one after another too, and someone else still gets theirs
    assert request(client, auth(EMAIL, sub="identity-late")) == (409, "trial_already_used")
    assert request(client, auth("someone.else@example.com")) == (200, None)


def test_a_trial_asked_as_the_other_account_of_the_email_is_erased_is_refused(
        app, client, auth, billing, monkeypatch):
    """Account A of an email used its trial; account B of the same email asks for one just as
    A is erased (A's row gone and its tombstones written, in one commit, once B holds the
    trial locks). B is refused: live accounts and tombstones are asked in one statement, so
    the erasure is seen on one side or the other."""
    from sonicus.services.subscriptions import changes

    first, second = auth(EMAIL, sub="identity-a"), auth(EMAIL, sub="identity-b")
    client.get("/api/user/subscription", headers=second)  # B exists
    assert client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=first).status_code == 200
    locked = changes.lock_trials_of_account

    def erasure_commits_meanwhile(user):
        locked(user)

        def erase():
            with app.app_context():
                assert app.test_client().delete("/api/user/profile",
                                                headers=first).status_code == 200

        eraser = threading.Thread(target=erase)
        eraser.start()
        eraser.join()

    monkeypatch.setattr(changes, "lock_trials_of_account", erasure_commits_meanwhile)
    resp = client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=second)
    assert (resp.status_code, resp.get_json().get("code")) == (409, "trial_already_used")
