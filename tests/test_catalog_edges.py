"""The catalog at its edges: what caches may keep, and other answers a caller must not get
from someone else's request."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("path", ["/api/packages", "/api/packages/{id}",
                                  "/api/packages/slug/rain", "/api/categories"])
def test_catalog_answers_are_not_kept_by_caches(client, auth, make_user, make_package, path):
    # a detail carries the caller's signed stream URLs and every answer the caller's access
    # and library marks: a cache must not hand them to another user, or keep them past an
    # admin's edit or an upgrade
    make_user(tier="premium")
    package = make_package("rain", minimum_tier="premium")
    res = client.get(path.format(id=package.id), headers=auth())
    assert res.status_code == 200
    assert res.headers["Cache-Control"] == "no-store"
