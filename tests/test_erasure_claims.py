"""Erasure and the token's email claim: an email address the provider has not verified is
not the account's to speak for. Erasing such an account neither burns that address's free
trial (the tombstone keeps no hash of it) nor empties the provider notices that name it."""

from __future__ import annotations

VICTIM = "victim@example.com"


def _start_trial(client, headers):
    return client.post("/api/user/subscription", json={"tier": "premium", "start_trial": True},
                       headers=headers)


def test_an_unverified_email_claim_cannot_burn_another_persons_trial(client, auth):
    # mallory uses her own trial, then claims the victim's address (unverified) and erases
    mallory = auth("mallory@example.com", sub="mallory")
    assert _start_trial(client, mallory).status_code == 200
    claiming = auth(VICTIM, sub="mallory", email_verified=False)
    assert client.get("/api/user/profile", headers=claiming).status_code == 200
    assert client.delete("/api/user/profile", headers=claiming).status_code == 200

    victim = auth(VICTIM, sub="victim")
    resp = _start_trial(client, victim)
    assert resp.status_code == 200, resp.get_json()
    # and the victim's export shows no erased account of theirs
    export = client.get("/api/user/export", headers=victim).get_json()["data"]
    assert export["earlier_erasures"] == []


def test_a_verified_email_still_keeps_the_trial_one_per_person(client, auth):
    first = auth(VICTIM, sub="first")
    assert _start_trial(client, first).status_code == 200
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    resp = _start_trial(client, auth(VICTIM, sub="second"))
    assert resp.status_code == 409 and resp.get_json()["code"] == "trial_already_used"


def test_erasing_an_account_with_an_unverified_email_leaves_that_addresss_notices(
        client, auth, billing, db_session):
    from sonicus.models import BillingEvent

    victim = auth(VICTIM, sub="victim")
    reference = client.post("/api/user/subscription", json={"tier": "premium"},
                            headers=victim).get_json()["data"]["checkout"]["reference"]
    event = billing.checkout_completed("evt_victim", user_id=billing.user_id(VICTIM),
                                       tier="premium", reference=reference, customer="cus_v",
                                       subscription="sub_v")
    event["data"]["object"]["customer_email"] = VICTIM
    assert billing.post_webhook(client, event).status_code == 200

    claiming = auth(VICTIM, sub="mallory", email_verified=False)
    assert client.delete("/api/user/profile", headers=claiming).status_code == 200

    db_session.expire_all()
    payload = db_session.query(BillingEvent).filter_by(event_id="evt_victim").one().payload
    assert payload["data"]["object"]["customer_email"] == VICTIM
