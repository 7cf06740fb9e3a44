"""One email address, whatever Unicode form or case it is written in: the trial's one per
person, the admin search and the operator's lookup by email compare ``email_key``s (NFKC,
case folded, the domain's IDN labels in Unicode)."""

TRIAL = {"tier": "premium", "start_trial": True}


def _trial(client, headers):
    resp = client.post("/api/user/subscription", json=TRIAL, headers=headers)
    return resp.status_code, resp.get_json().get("code")


def test_a_fullwidth_email_is_the_same_person_for_the_trial(client, auth):
    """B's provider wrote A's address in fullwidth letters: B was a new person and got a
    second trial."""
    assert _trial(client, auth("ann@example.com", sub="identity-a")) == (200, None)
    assert _trial(client, auth("ＡＮＮ＠ＥＸＡＭＰＬＥ．ｃｏｍ", sub="identity-b")) \
        == (409, "trial_already_used")


def test_an_idn_domain_in_punycode_or_in_unicode_is_one_email_for_the_trial(client, auth):
    """The same IDN domain, as A's provider wrote it (Unicode) and B's (punycode)."""
    assert _trial(client, auth("ann@bücher.example", sub="identity-a")) == (200, None)
    second = auth("Ann@XN--BCHER-KVA.example", sub="identity-b")
    assert client.get("/api/user/subscription", headers=second).get_json()["data"][
        "trial_used"] is True
    assert _trial(client, second) == (409, "trial_already_used")


def test_an_erased_account_in_another_email_form_keeps_the_trial_used(client, auth):
    first = auth("ann@bücher.example", sub="identity-a")
    assert _trial(client, first) == (200, None)
    assert client.delete("/api/user/profile", headers=first).status_code == 200
    assert _trial(client, auth("ann@xn--bcher-kva.example", sub="identity-b")) \
        == (409, "trial_already_used")


def test_admin_search_finds_an_email_typed_in_another_unicode_form(client, admin_auth,
                                                                  make_user):
    """An operator pasting an address in fullwidth letters, or an IDN domain in the other
    form than the provider wrote it, found nobody."""
    make_user("ann@bücher.example", sub="identity-a")
    make_user("zed@example.com", sub="identity-z")
    headers = admin_auth()

    def found(q):
        resp = client.get("/api/admin/users", headers=headers, query_string={"q": q})
        assert resp.status_code == 200, resp.get_json()
        return [row["email"] for row in resp.get_json()["data"]]

    for q in ("ann@xn--bcher-kva.example", "xn--bcher-kva", "ＡＮＮ＠", "ANN@BÜCHER",
              "ａｎ"):
        assert found(q) == ["ann@bücher.example"], q
    assert found("ＺＥＤ@EXAMPLE.COM") == ["zed@example.com"]


def test_the_operator_finds_a_user_by_an_email_in_another_unicode_form(runner, make_user):
    """``sonicus users show`` with the address in fullwidth letters or the IDN domain in
    punycode said there was no such user."""
    user = make_user("ann@bücher.example")
    for typed in ("ann@xn--bcher-kva.example", "ＡＮＮ@bücher.example"):
        result = runner.invoke(args=["sonicus", "users", "show", typed])
        assert result.exit_code == 0, result.output
        assert f"#{user.id} ann@bücher.example" in result.output


def test_erasure_empties_a_provider_notice_naming_the_email_in_another_case(
        client, auth, db_session):
    """A provider notice named the account's address as the customer typed it at checkout
    ("Ann@Example.COM"): the erasure looked for the address as the sign-in gave it and kept
    the notice, the address in it, after the account was gone."""
    from sonicus.models import BillingEvent

    headers = auth("ann@example.com")
    client.get("/api/user/profile", headers=headers)
    for event_id, email in (("evt_mine", "Ann@Example.COM"), ("evt_other", "anna@example.com")):
        db_session.add(BillingEvent(provider="stripe", event_id=event_id, type="invoice.paid",
                                    payload={"id": event_id, "type": "invoice.paid",
                                             "data": {"object": {"customer_email": email}}}))
    db_session.commit()
    assert client.delete("/api/user/profile", headers=headers).status_code == 200
    db_session.expire_all()
    kept = {e.event_id: e.payload for e in db_session.query(BillingEvent)}
    assert "Ann@Example.COM" not in str(kept["evt_mine"])
    assert kept["evt_other"]["data"]["object"]["customer_email"] == "anna@example.com"


def test_a_tombstone_written_before_emails_had_one_form_still_keeps_the_trial_used(
        app, client, auth, db_session):
    """Tombstones written before hashed the address stripped and lowercased only (an IDN
    domain in punycode stayed punycode): a sign-up with that address gets no trial still."""
    import hashlib
    import hmac

    from sonicus.models import ErasureTombstone

    secret = app.config["SECRET_KEY"].encode()
    legacy = hmac.new(secret, b"email:ann@xn--bcher-kva.example", hashlib.sha256).hexdigest()
    db_session.add(ErasureTombstone(subject_hash="0" * 64, email_hash=legacy, trial_used=True))
    db_session.commit()
    later = auth("Ann@XN--BCHER-KVA.example", sub="identity-b")
    assert client.get("/api/user/subscription", headers=later).get_json()["data"][
        "trial_used"] is True
    assert _trial(client, later) == (409, "trial_already_used")
