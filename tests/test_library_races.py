"""The library under requests at the same moment: an entry changed or removed while it is
removed (another tab, a double click) is answered as one after the other would be, never a
500."""

from __future__ import annotations

import threading
import time

import pytest
from races import in_thread, lock_waiters
from sqlalchemy import func, select

from sonicus.models import UserSoundPackage
from sonicus.services import library

WAIT = 10


@pytest.mark.parametrize(("method", "body"), [
    ("PATCH", {"favorite": True}), ("DELETE", None), ("POST", {"favorite": True})])
def test_an_entry_removed_while_it_is_changed_is_never_a_500(
        app, make_user, make_package, auth, db_session, monkeypatch, method, body):
    """A listener removes a package from their library in one tab while marking it a
    favourite, removing it or adding it again in another: each answers as if one had come
    after the other (the second removal is 404 not_found), never 500. Before, the request
    that had read the entry first then changed a row that was gone: a favourite answered
    500, a second removal 200 with nothing removed, an add 500."""
    make_user("me@example.com")
    package_id = make_package("rain").id
    headers = auth("me@example.com")
    assert app.test_client().post(f"/api/user/packages/{package_id}",
                                  headers=headers).status_code == 201
    found, go = threading.Event(), threading.Event()
    real_entry = library._entry

    def paused_entry(*args, **kwargs):
        entry = real_entry(*args, **kwargs)
        if threading.current_thread() is first and not found.is_set():
            found.set()
            assert go.wait(WAIT)
        return entry

    monkeypatch.setattr(library, "_entry", paused_entry)
    first, first_answer = in_thread(lambda: app.test_client().open(
        f"/api/user/packages/{package_id}", method=method, headers=headers,
        **({"json": body} if body is not None else {})))
    removal = None
    try:
        assert found.wait(WAIT)  # the first has read the entry
        removal, removal_answer = in_thread(lambda: app.test_client().delete(
            f"/api/user/packages/{package_id}", headers=headers))
        for _ in range(300):  # the removal commits, or waits for the first
            if not removal.is_alive() or lock_waiters(db_session):
                break
            time.sleep(0.01)
    finally:
        go.set()
        first.join(WAIT)
        if removal is not None:
            removal.join(WAIT)
    first_res, removal_res = first_answer[0], removal_answer[0]
    assert first_res.status_code < 500 and removal_res.status_code < 500
    left = db_session.execute(select(func.count()).select_from(UserSoundPackage)).scalar()
    if method == "DELETE":  # one of the two removed it
        assert sorted([first_res.status_code, removal_res.status_code]) == [200, 404]
        assert left == 0
    elif method == "PATCH":  # marked, then removed; or removed, then not found
        assert (first_res.status_code, removal_res.status_code) in ((200, 200), (404, 200))
        assert left == 0
    else:  # added back after the removal, or already there and then removed
        assert first_res.status_code in (200, 201) and removal_res.status_code == 200
        assert left == (1 if first_res.status_code == 201 else 0)
