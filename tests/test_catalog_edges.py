"""The catalog at its edges: what caches may keep, and other answers a caller must not get
from someone else's request."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from sonicus import media


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


def _package_body(media_path: str) -> dict:
    return {"slug": "night-rain", "title": "Night Rain", "category": "sleep",
            "published": True,
            "tracks": [{"title": "One", "duration_seconds": 300, "media_path": media_path}]}


@pytest.mark.parametrize("media_path", ["sleep/night rain.mp3", "sleep/café.mp3",
                                        "sleep/a?b.mp3", "sleep/a#b.mp3", "sleep/100%.mp3",
                                        "sleep/a+b.mp3", "sleep/x.mp3\n"])
def test_a_media_path_a_media_server_would_read_otherwise_is_refused(
        client, admin_auth, make_user, db_session, media_path):
    # a stream URL is signed over the percent-encoded path, and nginx checks the path it has
    # decoded ($uri): for this file the two differ, so every stream URL of it would be refused
    make_user("admin@example.com", admin=True)
    res = client.post("/api/admin/packages", json=_package_body(media_path),
                      headers=admin_auth())
    assert res.status_code == 422
    assert res.json["code"] == "validation_error"
    assert any(e.startswith("tracks.0.media_path:") for e in res.json["errors"])
    assert client.get("/api/admin/packages", headers=admin_auth()).json["data"] == []


def test_a_stream_url_is_signed_over_the_path_the_media_server_decodes(
        client, auth, admin_auth, make_user):
    make_user("admin@example.com", admin=True)
    make_user()
    res = client.post("/api/admin/packages",
                      json=_package_body("sleep/Night_Rain-01.v2~final.mp3"),
                      headers=admin_auth())
    assert res.status_code == 201
    detail = client.get(f"/api/packages/{res.json['data']['id']}", headers=auth()).json["data"]
    parts = urlsplit(detail["tracks"][0]["stream_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert media.verify_stream_path("test-media-secret", unquote(parts.path), query["st"],
                                    query["ts"], query["e"])


@pytest.mark.parametrize("change, field", [
    ({"title": "   "}, "title"),
    ({"title": "\t\n"}, "title"),
    ({"tracks": [{"title": "  ", "duration_seconds": 300, "media_path": "sleep/a.mp3"}]},
     "tracks.0.title"),
    ({"category": "sleep-"}, "category"),
    ({"category": "deep--sleep"}, "category"),
])
def test_a_blank_title_or_a_stray_hyphen_in_a_category_is_refused(
        client, admin_auth, make_user, make_package, change, field):
    # a blank title shows nothing in the catalog; "sleep-" would be a second category beside
    # "sleep", listed as "Sleep " in /api/categories
    make_user("admin@example.com", admin=True)
    package = make_package("rain", title="Rain", category="sleep")
    created = client.post("/api/admin/packages", json={**_package_body("sleep/a.mp3"), **change},
                          headers=admin_auth())
    edited = client.patch(f"/api/admin/packages/{package.id}", json=change,
                          headers=admin_auth())
    for res in (created, edited):
        assert res.status_code == 422
        assert any(e.startswith(f"{field}:") for e in res.json["errors"]), res.json["errors"]
    listed = client.get("/api/admin/packages", headers=admin_auth()).json["data"]
    assert [(p["slug"], p["title"], p["category"], len(p["tracks"])) for p in listed] == [
        ("rain", "Rain", "sleep", 1)]


def test_a_category_of_hyphenated_words_is_accepted(client, admin_auth, make_user):
    make_user("admin@example.com", admin=True)
    res = client.post("/api/admin/packages",
                      json={**_package_body("sleep/a.mp3"), "category": "deep-sleep2"},
                      headers=admin_auth())
    assert res.status_code == 201
    assert res.json["data"]["category"] == "deep-sleep2"
