"""The export is everything stored about the caller (API.md: ``GET /api/user/export``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def test_the_export_lists_the_packages_an_admin_gave_and_the_day_settings_replaced(
        client, auth, admin_auth, make_user, make_package, set_clock):
    """A listener whose administrator assigned them two packages (one revoked since) and who
    moved from Paris to Tokyo finds both in their export: the assignments with their end and
    revocation, the time zone they left with when it stopped counting. Before, the export
    left out every assignment and every replaced time zone, though the account stores them
    (and erasing it deletes them)."""
    make_user("admin@example.com", admin=True)
    user = make_user("me@example.com", timezone="Europe/Paris")
    other = make_user("other@example.com")
    admin, headers = admin_auth("admin@example.com"), auth("me@example.com")
    rain, delta = make_package("rain").id, make_package("delta", minimum_tier="premium").id
    start = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    set_clock(start)
    ends = (start + timedelta(days=30)).isoformat()
    for package in (rain, delta):
        assert client.post(f"/api/admin/users/{user.id}/packages",
                           json={"package_id": package, "expires_at": ends},
                           headers=admin).status_code == 201
    assert client.post(f"/api/admin/users/{other.id}/packages", json={"package_id": rain},
                       headers=admin).status_code == 201
    set_clock(start + timedelta(hours=1))
    assert client.delete(f"/api/admin/users/{user.id}/packages/{delta}",
                         headers=admin).status_code == 200
    assert client.put("/api/user/profile", json={"timezone": "Asia/Tokyo"},
                      headers=headers).status_code == 200
    set_clock(start + timedelta(days=2))

    doc = client.get("/api/user/export", headers=headers).get_json()["data"]
    assignments = {a["package_id"]: a for a in doc["assignments"]}
    assert set(assignments) == {rain, delta}  # only mine
    assert assignments[rain]["revoked_at"] is None
    assert datetime.fromisoformat(assignments[rain]["expires_at"]) == start + timedelta(days=30)
    assert datetime.fromisoformat(assignments[delta]["revoked_at"]) == start + timedelta(hours=1)
    [paris] = doc["earlier_day_settings"]
    assert (paris["timezone"], paris["day_start_hour"]) == ("Europe/Paris", 0)
    # Paris stopped counting at the end of the Paris day in which the change was made
    assert datetime.fromisoformat(paris["until"]) == datetime(2026, 3, 2, 23, 0, tzinfo=UTC)
    assert doc["user"]["timezone"] == "Asia/Tokyo"
