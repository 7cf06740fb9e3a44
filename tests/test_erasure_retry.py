"""A keyed erasure retried (API.md "Retry-safe writes"): the retry, sent with the same token and
``Idempotency-Key`` after the account is gone, is the first answer replayed; it creates no
account and erases nothing again. What survives the account for it is no more than the
tombstone holds already (a salted hash of the subject) and the answer, for the key's 24 h."""

from __future__ import annotations

from sqlalchemy import func, select

from sonicus.models import ErasureTombstone, IdempotencyKey, SubscriptionEvent, User
from sonicus.services import idempotency

REPLAYED = "Idempotent-Replayed"


def _count(db_session, model, *where) -> int:
    db_session.expire_all()
    count = db_session.execute(select(func.count()).select_from(model).where(*where)
                               ).scalar_one()
    db_session.commit()
    return count


def _erase(app, client, headers):
    res = client.delete("/api/user/profile", headers=headers)
    with app.app_context():
        idempotency.settle_answers()
    return res


def test_a_retried_keyed_erasure_is_replayed_and_creates_no_account(app, client, auth,
                                                                    db_session):
    headers = {**auth("erase-once@example.com"), "Idempotency-Key": "erase-1"}
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    first = _erase(app, client, headers)
    assert first.status_code == 200 and first.headers.get(REPLAYED) is None

    again = _erase(app, client, headers)

    assert again.status_code == 200, again.get_json()
    assert again.headers.get(REPLAYED) == "true"
    assert again.get_json() == first.get_json()
    assert _count(db_session, User) == 0
    assert _count(db_session, ErasureTombstone) == 1
    assert _count(db_session, SubscriptionEvent) == 0


def test_a_keyed_erasure_retried_after_another_tab_signed_in_again_is_replayed(
        app, client, auth, db_session):
    """Another tab's read with the same token signs in afresh (a new starter account, as the
    contract says); the erasure's retry is still its replay and leaves that account be."""
    headers = {**auth("erase-tab@example.com"), "Idempotency-Key": "erase-tab"}
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    first = _erase(app, client, headers)
    assert first.status_code == 200
    assert client.get("/api/user/profile", headers=headers).status_code == 200  # other tab

    again = _erase(app, client, headers)

    assert again.status_code == 200 and again.headers.get(REPLAYED) == "true"
    assert _count(db_session, User) == 1
    assert _count(db_session, ErasureTombstone) == 1


def test_the_erasure_key_used_for_another_request_afterwards_is_refused(app, client, auth,
                                                                        db_session):
    headers = {**auth("erase-reuse@example.com"), "Idempotency-Key": "erase-reuse"}
    assert _erase(app, client, headers).status_code == 200

    other = client.put("/api/user/profile", json={"display_name": "Back"}, headers=headers)

    assert other.status_code == 422, other.get_json()
    assert other.get_json()["code"] == "idempotency_key_reused"
    assert _count(db_session, User) == 0


def test_an_unkeyed_request_after_the_erasure_signs_in_afresh(app, client, auth, db_session):
    headers = auth("erase-fresh@example.com")
    keyed = {**headers, "Idempotency-Key": "erase-fresh"}
    assert _erase(app, client, keyed).status_code == 200
    res = client.get("/api/user/profile", headers=headers)
    assert res.status_code == 200 and res.get_json()["data"]["tier"] == "starter"
    # another key of the same identity runs as any write of the new account
    res = client.put("/api/user/profile", json={"display_name": "New"},
                     headers={**headers, "Idempotency-Key": "other"})
    assert res.status_code == 200 and res.headers.get(REPLAYED) is None


def test_what_a_kept_erasure_answer_holds_is_no_more_than_the_tombstone(app, client, auth,
                                                                        db_session):
    headers = {**auth("erase-kept@example.com", name="Ada Lovelace"),
               "Idempotency-Key": "erase-kept"}
    assert _erase(app, client, headers).status_code == 200
    rows = list(db_session.execute(select(IdempotencyKey)).scalars())
    tombstone = db_session.execute(select(ErasureTombstone)).scalar_one()
    db_session.commit()
    assert len(rows) == 1
    row = rows[0]
    assert row.user_id is None and row.subject_hash == tombstone.subject_hash
    kept = " ".join(str(v) for v in (row.key, row.response_body, row.response_headers))
    assert "erase-kept@example.com" not in kept and "Ada" not in kept
