"""What an SPA reads about packages: categories, the slug route, artwork, ``in_library``,
``access``, ``required_tier`` wherever a package appears, orders, ignored query parameters and
the heartbeat's ``clamped``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from sonicus import clock

ADMIN_GROUPS = ("sonicus-user", "sonicus-super-admin")


@pytest.fixture
def catalog(db_session, make_package):
    rows = {
        "rain": make_package("rain", title="rain at night", category="sleep", popularity=5,
                             tracks=(900,)),
        "delta": make_package("delta", title="Delta", minimum_tier="premium", category="sleep",
                              popularity=3, tracks=(300, 300)),
        "gamma": make_package("gamma", title="Gamma", minimum_tier="pro_exclusive",
                              category="focus", popularity=1, tracks=(60,)),
        "draft": make_package("draft", category="energy", published=False),
        "old": make_package("old", category="energy",
                            archived_at=datetime(2026, 1, 1, tzinfo=UTC)),
    }
    for age, slug in enumerate(("rain", "delta", "gamma")):  # rain oldest, gamma newest
        rows[slug].created_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=age)
    rows["delta"].image_path = "art/delta.svg"
    db_session.commit()
    return {slug: row.id for slug, row in rows.items()}


def test_categories_of_published_packages(client, auth, catalog):
    res = client.get("/api/categories", headers=auth())
    assert res.status_code == 200
    assert res.json["data"] == [{"slug": "sleep", "title": "Sleep", "package_count": 2},
                                {"slug": "focus", "title": "Focus", "package_count": 1}]
    assert client.get("/api/categories").json["code"] == "missing_token"


def test_slug_route_is_the_detail(client, auth, catalog, make_user):
    make_user(tier="premium")
    headers = auth()
    by_slug = client.get("/api/packages/slug/delta", headers=headers)
    assert by_slug.status_code == 200
    by_id = client.get(f"/api/packages/{catalog['delta']}", headers=headers).json["data"]
    strip = re.compile(r"[?&](st|ts)=[^&]*")  # signed at two moments
    assert strip.sub("", str(by_slug.json["data"])) == strip.sub("", str(by_id))
    assert by_slug.json["data"]["tracks"][0]["stream_url"]
    for slug in ("draft", "old", "nothing", "Delta", "a" * 130, "..", "delta%00"):
        assert client.get(f"/api/packages/slug/{slug}", headers=headers).status_code == 404


def test_package_shapes_everywhere(client, auth, catalog, make_user, make_session):
    user = make_user()
    headers = auth()
    listed = {p["slug"]: p for p in client.get("/api/packages", headers=headers).json["data"]}
    assert {s: (p["required_tier"], p["access"], p["locked"]) for s, p in listed.items()} == {
        "rain": ("starter", "tier", False), "delta": ("premium", "locked", True),
        "gamma": ("pro", "locked", True)}
    assert listed["delta"]["image_url"] == "https://media.example.com/art/delta.svg"
    assert listed["rain"]["image_url"] is None
    assert not any(p["in_library"] for p in listed.values())

    assert client.post(f"/api/user/packages/{catalog['rain']}", headers=headers).status_code \
        == 201
    listed = {p["slug"]: p for p in client.get("/api/packages", headers=headers).json["data"]}
    assert {s: p["in_library"] for s, p in listed.items()} == {
        "rain": True, "delta": False, "gamma": False}
    detail = client.get(f"/api/packages/{catalog['rain']}", headers=headers).json["data"]
    assert detail["in_library"] is True and detail["required_tier"] == "starter"

    library = client.get("/api/user/packages", headers=headers).json["data"]
    assert library[0]["package"]["in_library"] is True
    assert library[0]["package"]["required_tier"] == "starter"
    assert "image_url" in library[0]["package"]

    make_session(user, catalog["rain"], status="open", started_at=clock.now())
    session = client.get("/api/user/sessions", headers=headers).json["data"][0]
    assert session["package"]["required_tier"] == "starter"
    assert session["package"]["image_url"] is None
    dashboard = client.get("/api/user/dashboard", headers=headers).json["data"]
    assert dashboard["continue_listening"]["package"]["required_tier"] == "starter"
    assert [(r["package"]["slug"], r["package"]["required_tier"])
            for r in dashboard["recommended"]] == [("rain", "starter")]
    assert "image_url" in dashboard["recommended"][0]["package"]


@pytest.mark.parametrize(("sort", "order"), [
    (None, ["rain", "delta", "gamma"]),
    ("popular", ["rain", "delta", "gamma"]),
    ("newest", ["gamma", "delta", "rain"]),
    ("title", ["delta", "gamma", "rain"]),  # case does not matter
    ("duration", ["gamma", "delta", "rain"]),
])
def test_sort(client, auth, catalog, sort, order):
    query = f"?sort={sort}" if sort else ""
    res = client.get(f"/api/packages{query}", headers=auth())
    assert [p["slug"] for p in res.json["data"]] == order


def test_catalog_page_reads_access_and_library_in_one_query(client, auth, db_session,
                                                            make_user, make_package,
                                                            sql_statements, app):
    for i in range(30):
        make_package(f"pkg-{i:02d}")
    make_user()
    headers = auth()
    client.get("/api/user/profile", headers=headers)  # the caller is cached
    res = []
    statements = sql_statements(app, lambda: res.append(
        client.get("/api/packages?per_page=20&sort=title", headers=headers)))
    assert len(res[0].json["data"]) == 20
    assert len(statements) <= 3, statements  # count, page, assignments + library


def _get_routes(app) -> list[str]:
    """Every GET route of the API without path parameters."""
    return sorted({rule.rule for rule in app.url_map.iter_rules()
                   if rule.rule.startswith("/api/") and "GET" in rule.methods
                   and "<" not in rule.rule})


def test_unknown_query_parameters_are_ignored_everywhere(app, client, auth, catalog,
                                                         make_user):
    make_user("admin@example.com", admin=True)
    headers = auth("admin@example.com", groups=ADMIN_GROUPS)
    routes = _get_routes(app)
    assert "/api/packages" in routes and "/api/admin/users" in routes
    failures = []
    for path in routes:
        plain = client.get(path, headers=headers)
        busted = client.get(f"{path}?_=1700000000&colour=red&x=%00", headers=headers)
        if busted.status_code != plain.status_code:
            failures.append((path, plain.status_code, busted.status_code))
        elif busted.status_code in (400, 422):  # a required argument is missing: name it only
            if any(e.split(":")[0] in ("_", "colour", "x") for e in busted.json["errors"]):
                failures.append((path, plain.status_code, busted.status_code))
    assert failures == []
    # known parameters are still checked, and bodies stay strict
    assert client.get("/api/packages?per_page=0&_=1", headers=headers).status_code == 422
    res = client.put("/api/user/profile", json={"display_name": "A", "colour": "red"},
                     headers=headers)
    assert res.status_code == 422 and res.json["errors"] == ["colour: Unknown field."]


def test_heartbeat_says_when_the_claim_was_cut(client, auth, catalog, set_clock):
    started = set_clock(datetime(2026, 6, 1, 12, tzinfo=UTC))
    headers = auth()
    sid = client.post("/api/user/sessions", json={"package_id": catalog["rain"]},
                      headers=headers).json["data"]["id"]
    set_clock(started + timedelta(seconds=120))
    cut = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 5000},
                       headers=headers).json["data"]
    assert (cut["listened_seconds"], cut["clamped"]) == (120, True)
    honest = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 100},
                          headers=headers).json["data"]
    assert (honest["listened_seconds"], honest["clamped"]) == (120, False)  # never lower
    set_clock(started + timedelta(seconds=300))
    exact = client.patch(f"/api/user/sessions/{sid}", json={"listened_seconds": 290},
                         headers=headers).json["data"]
    assert (exact["listened_seconds"], exact["clamped"]) == (290, False)
