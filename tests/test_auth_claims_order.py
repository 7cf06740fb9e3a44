"""Claims change between sign-ins (API.md "Authentication": later requests keep the account in
sync with the token). Tokens issued earlier than the claims already applied (``iat``) do not
write them back: an admin removed from the admin group is no longer an admin once a token of
their new groups was seen, even with an older token that is still within its lifetime."""

from __future__ import annotations

import time

from conftest import ADMIN_GROUPS, USER_GROUPS


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_a_demoted_admins_older_token_no_longer_grants_admin(client, idp, db_session):
    from sonicus.models import User

    now = int(time.time())
    before = idp.token(email="boss@example.com", groups=ADMIN_GROUPS, iat=now - 600)
    after = idp.token(email="boss@example.com", groups=USER_GROUPS, iat=now)
    assert client.get("/api/admin/users", headers=_bearer(before)).status_code == 200
    assert client.get("/api/user/profile", headers=_bearer(after)).get_json()["data"][
        "role"] == "user"

    res = client.get("/api/admin/users", headers=_bearer(before))

    assert res.status_code == 403 and res.get_json()["code"] == "forbidden"
    db_session.expire_all()
    assert db_session.query(User).one().role == "user"


def test_a_newer_token_still_promotes_and_renames(client, idp):
    now = int(time.time())
    plain = idp.token(email="up@example.com", groups=USER_GROUPS, iat=now - 600, name="Old")
    assert client.get("/api/user/profile", headers=_bearer(plain)).status_code == 200
    promoted = idp.token(email="up@example.com", groups=ADMIN_GROUPS, iat=now, name="New")
    data = client.get("/api/user/profile", headers=_bearer(promoted)).get_json()["data"]
    assert data["role"] == "admin" and data["display_name"] == "New"
    # the older token's name and groups are not written back either
    data = client.get("/api/user/profile", headers=_bearer(plain)).get_json()["data"]
    assert data["role"] == "admin" and data["display_name"] == "New"


def test_tokens_without_iat_still_sync(client, idp):
    first = idp.token(email="noiat@example.com", groups=USER_GROUPS, iat=None, name="A")
    assert client.get("/api/user/profile", headers=_bearer(first)).status_code == 200
    second = idp.token(email="noiat@example.com", groups=USER_GROUPS, iat=None, name="B")
    data = client.get("/api/user/profile", headers=_bearer(second)).get_json()["data"]
    assert data["display_name"] == "B"


def test_a_token_issued_in_the_future_does_not_freeze_the_claims(client, idp):
    """The provider's clock a little ahead (within the leeway): its later tokens still sync."""
    ahead = idp.token(email="skew@example.com", iat=int(time.time()) + 20, name="Ahead")
    assert client.get("/api/user/profile", headers=_bearer(ahead)).status_code == 200
    later = idp.token(email="skew@example.com", name="Later")
    data = client.get("/api/user/profile", headers=_bearer(later)).get_json()["data"]
    assert data["display_name"] == "Later"
