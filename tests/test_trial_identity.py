"""One free trial per person, whatever the emails of their accounts became: every email an
account has been verified with counts, live or erased."""

import threading
import time

from races import in_thread, lock_waiters

TRIAL = {"tier": "premium", "start_trial": True}
WAIT = 10


def _trial(client, headers):
    resp = client.post("/api/user/subscription", json=TRIAL, headers=headers)
    return resp.status_code, resp.get_json().get("code")


def _shown_used(client, headers) -> bool:
    return client.get("/api/user/subscription", headers=headers).get_json()["data"]["trial_used"]


def test_an_email_the_account_was_verified_with_still_counts_after_it_changes(client, auth):
    """A used the trial as old@, then the provider's claims moved A to new@. B, signing up
    with old@, was shown the trial unused and given a second one."""
    assert _trial(client, auth("old@example.com", sub="identity-a")) == (200, None)
    assert _shown_used(client, auth("new@example.com", sub="identity-a")) is True  # A moved
    second = auth("old@example.com", sub="identity-b")
    assert _shown_used(client, second) is True
    assert _trial(client, second) == (409, "trial_already_used")


def test_every_later_email_of_an_account_that_used_the_trial_counts(client, auth):
    """A used the trial as one@, moved to two@, then to three@: two@ counts still."""
    assert _trial(client, auth("one@example.com", sub="identity-a")) == (200, None)
    client.get("/api/user/subscription", headers=auth("two@example.com", sub="identity-a"))
    client.get("/api/user/subscription", headers=auth("three@example.com", sub="identity-a"))
    other = auth("two@example.com", sub="identity-b")
    assert _shown_used(client, other) is True
    assert _trial(client, other) == (409, "trial_already_used")


def test_an_account_that_gains_an_email_whose_trial_was_used_is_refused(client, auth):
    """A used the trial as a@; B (b@) later becomes verified as a@ too, then moves back: B
    has been a@, so it gets none."""
    assert _trial(client, auth("a@example.com", sub="identity-a")) == (200, None)
    client.get("/api/user/subscription", headers=auth("b@example.com", sub="identity-b"))
    client.get("/api/user/subscription", headers=auth("a@example.com", sub="identity-b"))
    back = auth("b@example.com", sub="identity-b")
    assert _shown_used(client, back) is True
    assert _trial(client, back) == (409, "trial_already_used")


def test_an_erased_account_keeps_every_email_it_was_verified_with_from_a_second_trial(
        client, auth):
    """A used the trial as old@, moved to new@ and was erased: its tombstone named new@
    only, so a sign-up with old@ got a second trial."""
    assert _trial(client, auth("old@example.com", sub="identity-a")) == (200, None)
    moved = auth("new@example.com", sub="identity-a")
    client.get("/api/user/subscription", headers=moved)
    assert client.delete("/api/user/profile", headers=moved).status_code == 200
    later = auth("old@example.com", sub="identity-b")
    assert _shown_used(client, later) is True
    assert _trial(client, later) == (409, "trial_already_used")


def test_an_email_never_verified_on_the_account_burns_no_one_elses_trial(client, auth):
    """A used the trial and then showed x@ unverified: x@ is not A's to speak for, so the
    owner of x@ keeps their trial."""
    assert _trial(client, auth("a@example.com", sub="identity-a")) == (200, None)
    client.get("/api/user/subscription",
               headers=auth("x@example.com", sub="identity-a", email_verified=False))
    owner = auth("x@example.com", sub="identity-x")
    assert _shown_used(client, owner) is False
    assert _trial(client, owner) == (200, None)


def test_an_address_joining_the_account_while_its_trial_is_decided_counts(
        app, client, auth, db_session, monkeypatch):
    """X used the trial as x@. A (a@) asks for a trial while a sign-in of A is moving it to
    x@ (the claims written, not committed yet): the trial waits for that sign-in and is
    refused, never decided on the address A is leaving."""
    from sonicus.services import users

    assert _trial(client, auth("x@example.com", sub="identity-x")) == (200, None)
    leaving = auth("a@example.com", sub="identity-a")
    client.get("/api/user/subscription", headers=leaving)  # A exists
    noted, go = threading.Event(), threading.Event()
    real_note = users.note_verified_email

    def paused_note(user_id, email):
        real_note(user_id, email)
        noted.set()
        assert go.wait(WAIT)

    monkeypatch.setattr(users, "note_verified_email", paused_note)
    moving = auth("x@example.com", sub="identity-a")
    sign_in, _ = in_thread(lambda: app.test_client().get("/api/user/profile", headers=moving))
    trial = answer = None
    try:
        assert noted.wait(WAIT)
        trial, answer = in_thread(lambda: app.test_client().post(
            "/api/user/subscription", json=TRIAL, headers=leaving))
        for _ in range(500):  # the trial waits for the sign-in's row lock
            if lock_waiters(db_session) >= 1:
                break
            time.sleep(0.01)
    finally:
        go.set()
        sign_in.join(WAIT)
        if trial is not None:
            trial.join(WAIT)
    resp = answer[0]
    assert (resp.status_code, resp.get_json().get("code")) == (409, "trial_already_used")


def test_a_new_account_of_an_erased_identity_keeps_the_emails_it_was_verified_with(
        client, auth):
    """R used the trial as x@. P was verified as x@ too (shown used), then moved to p@ and
    erased itself; signing in again, P's new account knew only p@ and was given a trial."""
    assert _trial(client, auth("x@example.com", sub="identity-r")) == (200, None)
    client.get("/api/user/subscription", headers=auth("x@example.com", sub="identity-p"))
    moved = auth("p@example.com", sub="identity-p")
    assert _shown_used(client, moved) is True
    assert client.delete("/api/user/profile", headers=moved).status_code == 200
    again = auth("p@example.com", sub="identity-p")
    assert _shown_used(client, again) is True
    assert _trial(client, again) == (409, "trial_already_used")


# ---- the person: every account linked to it through shared addresses, however far --------

def _carries(client, auth, sub, *emails):
    """The account of ``sub`` is verified with each of ``emails`` in turn; its headers as the
    last one."""
    for email in emails:
        headers = auth(email, sub=sub)
        client.get("/api/user/subscription", headers=headers)
    return headers


def test_trial_refused_two_links_away(client, auth):
    """A used the trial as a@. B was verified as a@ and b@ (A's person); C knows only b@ (B's
    address, so A's person too): C was given a second trial, since no account sharing b@
    had used one."""
    assert _trial(client, auth("a@example.com", sub="identity-a")) == (200, None)
    _carries(client, auth, "identity-b", "a@example.com", "b@example.com")
    c = _carries(client, auth, "identity-c", "b@example.com")
    assert _shown_used(client, c) is True
    assert _trial(client, c) == (409, "trial_already_used")
    # a chain of links is followed one account further too, and a stranger keeps theirs
    d = _carries(client, auth, "identity-d", "b@example.com", "d@example.com")
    e = _carries(client, auth, "identity-e", "d@example.com")
    assert _shown_used(client, d) is True and _shown_used(client, e) is True
    assert _trial(client, e) == (409, "trial_already_used")
    stranger = _carries(client, auth, "identity-s", "s@example.com")
    assert _shown_used(client, stranger) is False
    assert _trial(client, stranger) == (200, None)


def test_trial_refused_two_links_away_from_an_erased_account(client, auth):
    """A used the trial as a@ and was erased (its tombstone names a@); B was verified as a@
    and b@; C knows only b@: C was given a second trial."""
    first = auth("a@example.com", sub="identity-a")
    assert _trial(client, first) == (200, None)
    _carries(client, auth, "identity-b", "a@example.com", "b@example.com")
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    c = _carries(client, auth, "identity-c", "b@example.com")
    assert _shown_used(client, c) is True
    assert _trial(client, c) == (409, "trial_already_used")


def test_trial_refused_through_an_erased_account_in_the_middle(client, auth):
    """A used the trial as a@; B, verified as a@ and b@, was erased (its tombstones, one per
    address, link them still); C knows only b@: C was given a second trial."""
    assert _trial(client, auth("a@example.com", sub="identity-a")) == (200, None)
    middle = _carries(client, auth, "identity-b", "a@example.com", "b@example.com")
    assert client.delete("/api/user/profile", headers=middle).status_code == 200
    c = _carries(client, auth, "identity-c", "b@example.com")
    assert _shown_used(client, c) is True
    assert _trial(client, c) == (409, "trial_already_used")


def test_two_accounts_two_links_apart_asking_at_once_get_one_trial(
        app, client, auth, db_session, monkeypatch):
    """A (a@) and C (c@) are one person through B (a@ and c@). A asks for the trial and,
    before it commits, C asks too: C's trial waits for A's to be decided and is refused,
    instead of both starting (each locked only its own address)."""
    from sonicus.services.subscriptions import changes

    a = _carries(client, auth, "identity-a", "a@example.com")
    _carries(client, auth, "identity-b", "a@example.com", "c@example.com")
    c = _carries(client, auth, "identity-c", "c@example.com")
    decided, go = threading.Event(), threading.Event()
    real = changes.trial_used_by_the_person

    def first_one_pauses(*args, **kwargs):
        used = real(*args, **kwargs)
        if not decided.is_set():
            decided.set()
            assert go.wait(WAIT)
        return used

    monkeypatch.setattr(changes, "trial_used_by_the_person", first_one_pauses)
    first, first_answer = in_thread(lambda: app.test_client().post(
        "/api/user/subscription", json=TRIAL, headers=a))
    second = second_answer = None
    try:
        assert decided.wait(WAIT)
        second, second_answer = in_thread(lambda: app.test_client().post(
            "/api/user/subscription", json=TRIAL, headers=c))
        for _ in range(300):  # C waits on A's trial locks, or is answered already
            if second_answer or lock_waiters(db_session) >= 1:
                break
            time.sleep(0.01)
    finally:
        go.set()
        first.join(WAIT)
        if second is not None:
            second.join(WAIT)
    answers = [(r.status_code, r.get_json().get("code"))
               for r in (first_answer[0], second_answer[0])]
    assert answers == [(200, None), (409, "trial_already_used")]


def test_a_person_larger_than_the_walk_goes_is_refused_the_trial(client, auth, monkeypatch):
    """The walk over a person's accounts stops at ``PERSON_LIMIT`` accounts and addresses: a
    chain longer than that (made to slow every view of the subscription down) is refused the
    trial at its far end, where nobody used one, instead of being walked to its end; a
    person within the limit is walked whole."""
    from sonicus.services import person_emails

    monkeypatch.setattr(person_emails, "PERSON_LIMIT", 9)
    # 4 accounts and 5 addresses: within the limit, no trial used yet
    for i in range(4):
        far = _carries(client, auth, f"identity-{i}", f"{i}@example.com", f"{i + 1}@example.com")
    assert _shown_used(client, far) is False
    # one account (and address) more: past it
    far = _carries(client, auth, "identity-4", "4@example.com", "5@example.com")
    assert _shown_used(client, far) is True
    assert _trial(client, far) == (409, "trial_already_used")
    stranger = auth("s@example.com", sub="identity-s")
    assert _trial(client, stranger) == (200, None)


def test_the_person_is_walked_on_sqlite_too(tmp_path, auth, make_config):
    """The embedded default (SQLite) walks the same links: A~B~C, A erased."""
    from flask_migrate import upgrade

    from sonicus import create_app

    app = create_app(make_config(REDIS_URL=None,
                                 DATABASE_URL=f"sqlite:///{tmp_path / 'sonicus.db'}"))
    with app.app_context():
        upgrade()
    client = app.test_client()
    first = auth("a@example.com", sub="identity-a")
    assert _trial(client, first) == (200, None)
    _carries(client, auth, "identity-b", "a@example.com", "b@example.com")
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    c = _carries(client, auth, "identity-c", "b@example.com")
    assert _shown_used(client, c) is True
    assert _trial(client, c) == (409, "trial_already_used")
    assert _trial(client, auth("s@example.com", sub="identity-s")) == (200, None)


def test_a_chain_of_accounts_asking_at_once_gets_one_trial(app, client, auth):
    """Five accounts, each sharing an address with the next (one person), ask for the trial
    at the same instant on five threads: one starts, the others are 409."""
    chain = [_carries(client, auth, f"identity-{i}", f"{i}@example.com",
                      f"{i + 1}@example.com") for i in range(5)]
    barrier = threading.Barrier(len(chain))
    answers = [None] * len(chain)

    def ask(i):
        with app.app_context():
            c = app.test_client()
            barrier.wait()
            answers[i] = _trial(c, chain[i])

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(chain))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert sorted(answers, key=lambda a: a[0]) == \
        [(200, None)] + [(409, "trial_already_used")] * 4
