"""The catalog: listing with locked flags, filters, detail with signed URLs, admin edits, seed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import event, func, select

from sonicus import media
from sonicus.extensions import db
from sonicus.models import AuditLog, SoundPackage, Track

DEMO = Path(__file__).resolve().parent.parent / "sonicus" / "data" / "demo_catalog.yaml"


def track_ids(package_id: int) -> list[int]:
    return list(db.session.execute(select(Track.id).where(Track.package_id == package_id)
                                   .order_by(Track.position)).scalars())


@pytest.fixture
def catalog(db_session, make_package):
    return {
        "rain": make_package("rain", category="sleep", popularity=5,
                             description="Soft RAIN on a roof").id,
        "delta": make_package("delta", minimum_tier="premium", category="sleep", popularity=3).id,
        "gamma": make_package("gamma", minimum_tier="pro_exclusive", category="focus",
                              popularity=1).id,
        "draft": make_package("draft", published=False).id,
        "old": make_package("old", archived_at=datetime(2026, 1, 1, tzinfo=UTC)).id,
    }


def _slugs(res):
    return [p["slug"] for p in res.json["data"]]


@pytest.mark.parametrize("tier, locked", [
    ("starter", {"rain": False, "delta": True, "gamma": True}),
    ("premium", {"rain": False, "delta": False, "gamma": True}),
    ("pro", {"rain": False, "delta": False, "gamma": False}),
])
def test_list_shows_published_with_locked_for_tier(client, auth, catalog, tier, locked, make_user):
    make_user(f"{tier}@example.com", tier=tier)
    headers = auth(f"{tier}@example.com")
    res = client.get("/api/packages", headers=headers)
    assert res.status_code == 200
    assert _slugs(res) == ["rain", "delta", "gamma"]  # most popular first, no draft/archived
    assert {p["slug"]: p["locked"] for p in res.json["data"]} == locked
    assert {p["slug"]: p["access"] for p in res.json["data"]} == {
        slug: "locked" if is_locked else "tier" for slug, is_locked in locked.items()}
    first = res.json["data"][0]
    for field in ("id", "slug", "title", "description", "category", "minimum_tier",
                  "duration_seconds", "track_count", "locked", "access"):
        assert field in first
    assert res.json["pagination"] == {"page": 1, "per_page": 20, "total": 3, "pages": 1}


def test_filters_search_and_accessible(client, auth, catalog, make_user):
    make_user("f@example.com", tier="premium")
    headers = auth("f@example.com")
    assert _slugs(client.get("/api/packages?category=focus", headers=headers)) == ["gamma"]
    assert _slugs(client.get("/api/packages?q=rain", headers=headers)) == ["rain"]
    # case-insensitive, in the description too; % is a literal, not a wildcard
    assert _slugs(client.get("/api/packages?q=roof", headers=headers)) == ["rain"]
    assert _slugs(client.get("/api/packages?q=%25", headers=headers)) == []
    assert _slugs(client.get("/api/packages?accessible=true", headers=headers)) == \
        ["rain", "delta"]


def test_an_empty_search_box_or_filter_lists_everything(client, auth, catalog, make_user,
                                                        admin_auth):
    """An SPA sends its empty search box and its "all" choices as empty arguments: they mean
    no filter, not a 422."""
    make_user("empty@example.com", tier="premium")
    headers = auth("empty@example.com")
    everything = _slugs(client.get("/api/packages", headers=headers))
    for query in ("q=", "q=%20%20", "category=", "q=&category=&accessible=&sort=&page=&per_page="):
        res = client.get(f"/api/packages?{query}", headers=headers)
        assert res.status_code == 200, (query, res.json)
        assert _slugs(res) == everything
    res = client.get("/api/admin/users?q=&tier=&status=", headers=admin_auth())
    assert res.status_code == 200, res.json
    assert res.json["pagination"]["total"] == \
        client.get("/api/admin/users", headers=admin_auth()).json["pagination"]["total"]
    assert client.get("/api/packages?q=rain&category=", headers=headers).status_code == 200
    assert _slugs(client.get("/api/packages?q=rain&category=", headers=headers)) == ["rain"]


def test_search_matches_however_the_accents_were_typed(client, auth, make_user, make_package):
    """A listener who types "café" on a keyboard that sends "e" and a combining accent (NFD)
    finds the package titled "Café" (stored as one "é", NFC), and the other way round; case
    and compatibility forms fold too ("STRASSE" finds "Straße", "ﬁre" finds "fire")."""
    make_user("accents@example.com")
    headers = auth("accents@example.com")
    make_package("cafe", title="Caf\u00e9 Murmurs", description="Cups and chatter.")
    make_package("night", title="Night Street",
                 description="A sleepy strasse at ne\u0301ant, with fire crackle.")
    for typed, found in [("cafe\u0301", ["cafe"]), ("CAFE\u0301", ["cafe"]),
                         ("caf\u00e9", ["cafe"]), ("n\u00e9ant", ["night"]),
                         ("STRA\u00dfE", ["night"]), ("\ufb01re", ["night"])]:
        res = client.get("/api/packages", query_string={"q": typed}, headers=headers)
        assert _slugs(res) == found, typed


def test_pagination_and_bad_query(client, auth, catalog, make_user):
    make_user("p@example.com")
    headers = auth("p@example.com")
    res = client.get("/api/packages?per_page=2&page=2", headers=headers)
    assert _slugs(res) == ["gamma"]
    assert res.json["pagination"] == {"page": 2, "per_page": 2, "total": 3, "pages": 2}
    for query in ("per_page=0", "per_page=101", "page=0", "sort=random", "accessible=maybe"):
        bad = client.get(f"/api/packages?{query}", headers=headers)
        assert bad.status_code in (400, 422), query
        assert bad.json["code"] == "validation_error"
    assert client.get("/api/packages").status_code == 401


def test_list_does_not_query_per_package(client, auth, db_session, make_user, make_package):
    for i in range(30):
        make_package(f"pkg-{i:02d}", tracks=(60, 60, 60))
    make_user("q@example.com")
    headers = auth("q@example.com")
    statements = []

    def count(*args):
        statements.append(args[2])

    engine = db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        res = client.get("/api/packages?per_page=20", headers=headers)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(res.json["data"]) == 20
    assert len(statements) <= 5, statements  # user, subscription, count, page


def test_detail_signed_urls_only_when_open(client, auth, catalog, app, make_user):
    make_user("s@example.com")
    starter = auth("s@example.com")
    make_user("pr@example.com", tier="premium")
    premium = auth("pr@example.com")

    locked = client.get(f"/api/packages/{catalog['delta']}", headers=starter)
    assert locked.status_code == 200
    assert locked.json["data"]["locked"] is True
    assert len(locked.json["data"]["tracks"]) == 1
    assert locked.json["data"]["tracks"][0]["stream_url"] is None

    res = client.get(f"/api/packages/{catalog['delta']}", headers=premium)
    data = res.json["data"]
    assert data["locked"] is False
    url = data["tracks"][0]["stream_url"]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "https://media.example.com"
    assert parts.path == "/sleep/delta/01.mp3"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert media.verify_stream_path("test-media-secret", parts.path, q["st"], q["ts"], q["e"])
    # another path, another secret, a changed expiry or a late request are all refused
    assert not media.verify_stream_path("test-media-secret", "/sleep/rain/01.mp3",
                                        q["st"], q["ts"], q["e"])
    assert not media.verify_stream_path("other", parts.path, q["st"], q["ts"], q["e"])
    assert not media.verify_stream_path("test-media-secret", parts.path, q["st"], q["ts"],
                                        str(int(q["e"]) + 60))
    later = datetime.fromtimestamp(int(q["ts"]) + int(q["e"]) + 1, UTC)
    assert not media.verify_stream_path("test-media-secret", parts.path, q["st"], q["ts"],
                                        q["e"], now=later)
    expires = datetime.fromisoformat(data["stream_urls_expire_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)


@pytest.mark.parametrize("base", ["https://cdn.example.com/media",
                                  "https://cdn.example.com/media/",
                                  "https://cdn.example.com/sonicus/audio-v2"])
def test_signed_urls_under_a_media_base_url_with_a_path_pass_the_media_servers_check(
        app, base):
    """With MEDIA_BASE_URL pointing at a folder of the media host (a CDN path such as
    https://cdn.example.com/media), the stream, download and artwork URLs land in that folder
    and the signature covers the path the media server sees ($uri, with the folder): the
    listener's audio plays instead of a 403."""
    with app.test_request_context():
        saved = app.config["MEDIA_BASE_URL"]
        app.config["MEDIA_BASE_URL"] = base
        try:
            folder = urlsplit(base).path.rstrip("/")
            for url in (media.stream_url("sleep/rain/01.mp3")[0],
                        media.download_url("sleep/rain/01.mp3")[0]):
                parts = urlsplit(url)
                assert f"{parts.scheme}://{parts.netloc}{parts.path}" == \
                    f"https://cdn.example.com{folder}/sleep/rain/01.mp3"
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                assert media.verify_stream_path("test-media-secret", parts.path, q["st"],
                                                q["ts"], q["e"])
                assert not media.verify_stream_path("test-media-secret", "/sleep/rain/01.mp3",
                                                    q["st"], q["ts"], q["e"])
            assert media.public_url("sleep/rain/cover.svg") == \
                f"https://cdn.example.com{folder}/sleep/rain/cover.svg"
        finally:
            app.config["MEDIA_BASE_URL"] = saved


def test_dev_urls_without_media_settings(app):
    with app.test_request_context():
        saved = app.config["MEDIA_BASE_URL"], app.config["MEDIA_URL_SECRET"]
        app.config["MEDIA_BASE_URL"] = app.config["MEDIA_URL_SECRET"] = None
        try:
            url, _ = media.stream_url("sleep/a b.mp3")
            assert "/dev-media/sleep/a%20b.mp3?" in url  # served by the API itself, signed
            q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            assert media.verify_stream_path(media.dev_secret(app.config), "/sleep/a%20b.mp3",
                                            q["st"], q["ts"], q["e"])
            app.config["SONICUS_ENV"] = "production"
            assert media.stream_url("sleep/a.mp3")[0] is None
        finally:
            app.config["SONICUS_ENV"] = "testing"
            app.config["MEDIA_BASE_URL"], app.config["MEDIA_URL_SECRET"] = saved


def test_unpublished_and_archived_are_404(client, auth, catalog, make_user):
    make_user("n@example.com", tier="pro")
    headers = auth("n@example.com")
    for key in ("draft", "old"):
        res = client.get(f"/api/packages/{catalog[key]}", headers=headers)
        assert res.status_code == 404
        assert res.json["code"] == "not_found"
    assert client.get("/api/packages/999999", headers=headers).status_code == 404


# ---- admin -------------------------------------------------------------------------------

NEW = {"slug": "evening-wind-down", "title": "Evening Wind-Down", "description": "Slow pads.",
       "category": "relaxation", "minimum_tier": "premium", "published": True,
       "tracks": [{"title": "One", "duration_seconds": 300, "media_path": "relax/ewd/1.mp3"},
                  {"title": "Two", "duration_seconds": 420, "media_path": "relax/ewd/2.mp3"}]}


def test_admin_titles_with_bidirectional_controls_are_422_naming_the_field(
        client, admin_auth, db_session, make_user):
    """A package or track title holding an embedding, override or isolate control would show
    reordered text to every listener and in every admin screen: refused, nothing stored;
    right-to-left titles are welcome."""
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    for control in ("\u202e", "\u202a", "\u2066", "\u2069"):
        res = client.post("/api/admin/packages", headers=admin,
                          json={**NEW, "title": f"Rain{control}niaR"})
        assert res.status_code == 422 and res.json["errors"][0].startswith("title:"), res.json
        tracks = [{**NEW["tracks"][0], "title": f"One{control}"}]
        res = client.post("/api/admin/packages", headers=admin, json={**NEW, "tracks": tracks})
        assert res.status_code == 422, res.json
        assert res.json["errors"][0].startswith("tracks.0.title:"), res.json
    assert client.get("/api/admin/packages", headers=admin).json["data"] == []
    made = client.post("/api/admin/packages", headers=admin,
                       json={**NEW, "title": "גשם על הגג", "tracks": [
                           {**NEW["tracks"][0], "title": "مطر"}]})
    assert made.status_code == 201, made.json
    assert made.json["data"]["title"] == "גשם על הגג"
    assert made.json["data"]["tracks"][0]["title"] == "مطر"
    res = client.patch(f"/api/admin/packages/{made.json['data']['id']}", headers=admin,
                       json={"title": "\u2067Rain"})
    assert res.status_code == 422 and res.json["errors"][0].startswith("title:"), res.json


def test_admin_creates_edits_and_archives(client, auth, admin_auth, db_session, make_user):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    res = client.post("/api/admin/packages", json=NEW, headers=admin)
    assert res.status_code == 201, res.json
    pkg = res.json["data"]
    assert pkg["duration_seconds"] == 720 and pkg["track_count"] == 2
    assert [t["title"] for t in pkg["tracks"]] == ["One", "Two"]

    make_user("u@example.com", tier="premium")
    user = auth("u@example.com")
    assert _slugs(client.get("/api/packages", headers=user)) == ["evening-wind-down"]

    original_ids = track_ids(pkg["id"])
    res = client.patch(f"/api/admin/packages/{pkg['id']}", headers=admin, json={
        "title": "Evening Wind Down",
        "tracks": [{"title": "One (remastered)", "duration_seconds": 320,
                    "media_path": "relax/ewd/1b.mp3"}]})
    assert res.status_code == 200, res.json
    assert res.json["data"]["track_count"] == 1 and res.json["data"]["duration_seconds"] == 320
    assert track_ids(pkg["id"]) == original_ids[:1]  # edited in place: sessions keep the track

    res = client.delete(f"/api/admin/packages/{pkg['id']}", headers=admin)
    assert res.status_code == 200 and res.json["data"]["archived_at"] is not None
    assert client.get(f"/api/packages/{pkg['id']}", headers=user).status_code == 404
    assert _slugs(client.get("/api/packages", headers=user)) == []

    actions = db_session.execute(
        select(AuditLog.action).where(AuditLog.target_type == "package")
        .order_by(AuditLog.id)).scalars().all()
    assert actions == ["package.create", "package.update", "package.archive"]
    update = db_session.execute(select(AuditLog).where(AuditLog.action == "package.update")
                                ).scalar_one()
    assert update.before["title"] == "Evening Wind-Down"
    assert update.after["title"] == "Evening Wind Down"
    assert update.actor_label == "admin@example.com"


@pytest.mark.parametrize("body, field", [
    ({**NEW, "colour": "red"}, "colour"),
    ({**NEW, "slug": "Not A Slug"}, "slug"),
    ({**NEW, "minimum_tier": "gold"}, "minimum_tier"),
    ({**NEW, "tracks": [{"title": "x", "duration_seconds": 0, "media_path": "a.mp3"}]},
     "tracks.0.duration_seconds"),
    ({**NEW, "tracks": [{"title": "x", "duration_seconds": 5, "media_path": "../etc/passwd"}]},
     "tracks.0.media_path"),
    ({**NEW, "tracks": []}, "tracks"),
    ({k: v for k, v in NEW.items() if k != "title"}, "title"),
])
def test_admin_validation_changes_nothing(client, db_session, body, field, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    res = client.post("/api/admin/packages", json=body, headers=admin)
    assert res.status_code == 422, res.json
    assert res.json["code"] == "validation_error"
    assert any(e.startswith(f"{field}:") for e in res.json["errors"]), res.json["errors"]
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 0
    assert db_session.execute(select(func.count(AuditLog.id))).scalar_one() == 0


def test_admin_duplicate_slug_is_conflict(client, db_session, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    assert client.post("/api/admin/packages", json=NEW, headers=admin).status_code == 201
    res = client.post("/api/admin/packages", json=NEW, headers=admin)
    assert res.status_code == 409 and res.json["code"] == "conflict"
    other = client.post("/api/admin/packages", headers=admin,
                        json={**NEW, "slug": "other", "tracks": NEW["tracks"]})
    res = client.patch(f"/api/admin/packages/{other.json['data']['id']}", headers=admin,
                       json={"slug": NEW["slug"]})
    assert res.status_code == 409
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 2


def test_admin_routes_refuse_users(client, auth, catalog, make_user):
    make_user("u@example.com", tier="pro")
    user = auth("u@example.com")
    assert client.post("/api/admin/packages", json=NEW, headers=user).status_code == 403
    assert client.patch(f"/api/admin/packages/{catalog['rain']}", json={"title": "x"},
                        headers=user).status_code == 403
    assert client.delete(f"/api/admin/packages/{catalog['rain']}",
                         headers=user).status_code == 403
    assert client.get(f"/api/packages/{catalog['rain']}", headers=user).status_code == 200


# ---- seed --------------------------------------------------------------------------------

def test_seed_demo_catalog_is_idempotent(runner, client, auth, db_session, make_user):
    res = runner.invoke(args=["sonicus", "seed", str(DEMO)])
    assert res.exit_code == 0, res.output
    total = db_session.execute(select(func.count(SoundPackage.id))).scalar_one()
    assert f"{total} created, 0 updated, 0 unchanged" in res.output
    tracks = db_session.execute(select(func.count(Track.id))).scalar_one()

    again = runner.invoke(args=["sonicus", "seed", str(DEMO)])
    assert again.exit_code == 0
    assert f"0 created, 0 updated, {total} unchanged" in again.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == total
    assert db_session.execute(select(func.count(Track.id))).scalar_one() == tracks

    levels = set(db_session.execute(select(SoundPackage.minimum_tier)).scalars())
    categories = set(db_session.execute(select(SoundPackage.category)).scalars())
    assert levels == {"public", "premium", "pro_exclusive"}
    assert {"sleep", "focus", "relaxation", "meditation", "anxiety", "energy"} <= categories
    make_user("demo@example.com")
    headers = auth("demo@example.com")
    listing = client.get("/api/packages?per_page=100", headers=headers).json
    assert listing["pagination"]["total"] == total


def test_seed_json_updates_by_slug_and_rejects_bad_files(runner, db_session, tmp_path):
    entry = {"slug": "one", "title": "One", "category": "focus",
             "tracks": [{"title": "t", "duration_seconds": 60, "media_path": "f/one.mp3"}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([entry]))
    assert "1 created" in runner.invoke(args=["sonicus", "seed", str(path)]).output
    path.write_text(json.dumps({"packages": [{**entry, "title": "One, revised"}]}))
    assert "1 updated" in runner.invoke(args=["sonicus", "seed", str(path)]).output
    assert db_session.execute(select(SoundPackage.title)).scalar_one() == "One, revised"

    path.write_text(json.dumps([{**entry, "slug": "two", "minimum_tier": "gold"}]))
    bad = runner.invoke(args=["sonicus", "seed", str(path)])
    assert bad.exit_code == 1 and "minimum_tier" in bad.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 1


def test_seed_a_description_with_bidirectional_controls_is_refused_naming_it(
        runner, db_session, tmp_path):
    entry = {"slug": "one", "title": "One", "category": "focus",
             "description": "Rain \u202eniaR",
             "tracks": [{"title": "t", "duration_seconds": 60, "media_path": "f/one.mp3"}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([entry]))
    bad = runner.invoke(args=["sonicus", "seed", str(path)])
    assert bad.exit_code == 1 and "description" in bad.output, bad.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 0
    path.write_text(json.dumps([{**entry, "description": "\u200fגשם\u200e on the roof"}]))
    assert "1 created" in runner.invoke(args=["sonicus", "seed", str(path)]).output
    assert db_session.execute(select(SoundPackage.description)).scalar_one() == (
        "\u200fגשם\u200e on the roof")


def test_admin_lists_drafts_and_archived(client, auth, catalog, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    res = client.get("/api/admin/packages", headers=admin)
    assert res.status_code == 200
    assert [p["slug"] for p in res.json["data"]] == ["draft", "gamma", "delta", "rain"]
    everything = client.get("/api/admin/packages?include_archived=true&per_page=2",
                            headers=admin)
    assert everything.json["pagination"]["total"] == 5
    drafts = client.get("/api/admin/packages?published=false", headers=admin).json["data"]
    assert [p["slug"] for p in drafts] == ["draft"]
    assert client.get("/api/admin/packages?q=DEL", headers=admin).json["data"][0]["slug"] == \
        "delta"
    make_user("u@example.com")
    user = auth("u@example.com")
    assert client.get("/api/admin/packages", headers=user).status_code == 403


def test_publishing_needs_tracks(client, db_session, make_user, admin_auth):
    make_user("admin@example.com", admin=True)
    admin = admin_auth("admin@example.com")
    draft = client.post("/api/admin/packages", headers=admin, json={
        "slug": "empty", "title": "Empty", "category": "focus"})
    assert draft.status_code == 201 and draft.json["data"]["published"] is False
    res = client.patch(f"/api/admin/packages/{draft.json['data']['id']}", headers=admin,
                       json={"published": True})
    assert res.status_code == 422
    assert res.json["errors"] == ["tracks: A published package needs at least one track."]
    assert db_session.execute(select(SoundPackage.published)).scalar_one() is False


def test_seed_a_malformed_yaml_file_is_a_one_line_error_and_changes_nothing(
        runner, db_session, tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("packages: [\n  - slug: one\n   title: One\n")
    res = runner.invoke(args=["sonicus", "seed", str(path)])
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert res.output.startswith("Error: ") and "catalog.yaml" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 0


def test_what_a_seed_creates_or_changes_is_in_the_audit_log(runner, db_session, tmp_path):
    """An operator who raises a package's tier with a seed file finds it in the audit log
    (created, then changed, by the operator's login name; an unchanged run adds nothing), as
    an admin's edit is. Before, a seed changed the catalog without a trace."""
    from sonicus.models import AuditLog

    entry = {"slug": "one", "title": "One", "category": "focus",
             "tracks": [{"title": "t", "duration_seconds": 60, "media_path": "f/one.mp3"}]}
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([entry]))
    assert runner.invoke(args=["sonicus", "seed", str(path)]).exit_code == 0
    path.write_text(json.dumps([{**entry, "minimum_tier": "premium"}]))
    assert "1 updated" in runner.invoke(args=["sonicus", "seed", str(path)]).output
    assert "1 unchanged" in runner.invoke(args=["sonicus", "seed", str(path)]).output
    package_id = db_session.execute(select(SoundPackage.id)).scalar_one()
    entries = db_session.execute(select(AuditLog).order_by(AuditLog.id)).scalars().all()
    assert [(e.action, e.target_type, e.target_id) for e in entries] == [
        ("package.create", "package", str(package_id)),
        ("package.update", "package", str(package_id))]
    assert all(e.actor_id is None and e.actor_label.startswith("cli") for e in entries)
    assert entries[0].before is None and entries[0].after["minimum_tier"] == "public"
    assert (entries[1].before["minimum_tier"], entries[1].after["minimum_tier"]) == (
        "public", "premium")


@pytest.mark.parametrize(("name", "text"), [
    ("catalog.json", '{"packages": ' + "[" * 1000 + "]" * 1000 + "}"),
    ("catalog.json", "[" * 100_000 + "]" * 100_000),
    ("catalog.yaml", "packages: " + "[" * 1000 + "]" * 1000 + "\n"),
    ("catalog.yaml", "".join("  " * depth + "-\n" for depth in range(3000))),
], ids=["json-1000", "json-100000", "yaml-flow-1000", "yaml-block-3000"])
def test_seed_a_file_nested_too_deeply_is_a_one_line_error_and_changes_nothing(
        runner, db_session, tmp_path, name, text):
    """A catalog file nested deeper than any catalog is refused in one line naming the file;
    the parsers recursed into it and the operator got a RecursionError's traceback."""
    path = tmp_path / name
    path.write_text(text)
    for command in ("seed", "dev-media"):
        res = runner.invoke(args=["sonicus", command, str(path)])
        assert res.exit_code == 1, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        assert res.output.startswith(f"Error: {name}: ") and "nested" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 0


@pytest.mark.parametrize("name", ["catalog.json", "catalog.yaml"])
def test_seed_an_integer_of_thousands_of_digits_names_its_field(runner, db_session, tmp_path,
                                                                  name):
    """Such a length is refused like any other integer out of range, naming the package and
    the field; it was the interpreter's own message about its digit limit, naming neither."""
    huge = "9" * 5000
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text('[{"slug": "one", "title": "One", "category": "focus", "tracks": '
                        '[{"title": "t", "media_path": "f/one.mp3", "duration_seconds": '
                        f"{huge}}}]}}]")
    else:
        path.write_text("- slug: one\n  title: One\n  category: focus\n  tracks:\n"
                        f"  - title: t\n    media_path: f/one.mp3\n    duration_seconds: {huge}\n")
    res = runner.invoke(args=["sonicus", "seed", str(path)])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: package one: "), res.output
    assert "duration_seconds" in res.output and "Not a valid integer." in res.output, res.output
    assert db_session.execute(select(func.count(SoundPackage.id))).scalar_one() == 0
