"""Bad input is always a 4xx that names the field and changes nothing, never a 500 and never
silently changed (API.md, Envelope): NUL and unpaired surrogates in any string, JSON nested
deeper than 32 levels, floats, booleans and numeric strings where an integer is documented,
integers past the column's range, hostile token claims and hostile (but signed) webhooks.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from sonicus import clock

TEXT_ERROR = "Must not contain NUL characters or unpaired surrogates."
HOSTILE = {"nul": "calm\x00sea", "high_surrogate": "calm\ud800sea",
           "low_surrogate": "calm\udc00sea"}
# the same strings as a query string carries them (a surrogate as its would-be UTF-8 bytes)
HOSTILE_QUERY = {"nul": "calm%00sea", "high_surrogate": "calm%ED%A0%80sea",
                 "low_surrogate": "calm%ED%B0%80sea", "not_utf8": "calm%FFsea"}

TRACK = {"title": "Part 1", "duration_seconds": 600, "media_path": "sleep/new/01.mp3"}
NEW_PACKAGE = {"slug": "new-one", "title": "New one", "category": "sleep", "published": True,
               "tracks": [TRACK]}


@pytest.fixture
def world(make_user, make_package, make_session, auth, admin_auth, client):
    """A listener with an open session, an administrator and a package; request helpers."""
    listener = make_user("calm@example.com")
    admin = make_user("boss@example.com", admin=True)
    package = make_package("rain")
    session = make_session(listener, package, started_at=clock.now(), status="open", minutes=0)
    return {"user": listener.id, "admin": admin.id, "package": package.id,
            "session": session.id, "as": {"user": auth("calm@example.com"),
                                          "admin": admin_auth("boss@example.com")}}


def _send(client, world, who, method, path, body=None, raw=None, query=""):
    places = {k: world[k] for k in ("user", "package", "session")}
    url = path.format(**places) + (f"?{query}" if query else "")
    data = raw if raw is not None else (json.dumps(body) if body is not None else None)
    return client.open(url, method=method, data=data, headers=world["as"][who],
                       content_type="application/json" if data is not None else None)


def _state(db_session) -> dict:
    """What a refused request must not have changed."""
    from sonicus.models import (
        AuditLog,
        ListeningSession,
        SoundPackage,
        SubscriptionEvent,
        User,
        UserSubscription,
    )

    db_session.expire_all()
    counts = {model.__name__: db_session.execute(
        select(func.count()).select_from(model)).scalar_one()
        for model in (AuditLog, ListeningSession, SoundPackage, SubscriptionEvent, User)}
    users = {u.email: (u.display_name, u.timezone, u.day_start_hour, dict(u.preferences or {}),
                       u.is_active) for u in db_session.execute(select(User)).scalars()}
    subs = {s.user_id: (s.tier, s.status, s.cancel_at_period_end)
            for s in db_session.execute(select(UserSubscription)).scalars()}
    sessions = {s.id: (s.status, s.listened_seconds, s.note, s.mood_before, s.mood_after)
                for s in db_session.execute(select(ListeningSession)).scalars()}
    packages = {p.id: (p.slug, p.title, p.description, p.published)
                for p in db_session.execute(select(SoundPackage)).scalars()}
    return {"counts": counts, "users": users, "subs": subs, "sessions": sessions,
            "packages": packages}


def _refused(res, status, field, message):
    body = res.get_json()
    assert res.status_code == status, body
    assert body["success"] is False and body["code"] == "validation_error"
    assert f"{field}: {message}" in body["errors"], body["errors"]


# ---- NUL and unpaired surrogates ------------------------------------------------------------

BODY_FIELDS = [
    ("user", "PUT", "/api/user/profile", lambda v: {"display_name": v}, "display_name"),
    ("user", "PUT", "/api/user/profile", lambda v: {"timezone": v}, "timezone"),
    ("user", "PUT", "/api/user/profile",
     lambda v: {"preferences": {"goals": ["sleep", v]}}, "preferences.goals.1"),
    ("user", "POST", "/api/user/sessions/{session}/complete",
     lambda v: {"listened_seconds": 5, "completed": False, "note": v}, "note"),
    ("user", "POST", "/api/user/subscription", lambda v: {"tier": v}, "tier"),
    ("user", "DELETE", "/api/user/subscription", lambda v: {"comment": v}, "comment"),
    ("admin", "POST", "/api/admin/packages", lambda v: {**NEW_PACKAGE, "title": v}, "title"),
    ("admin", "POST", "/api/admin/packages",
     lambda v: {**NEW_PACKAGE, "tracks": [{**TRACK, "title": v}]}, "tracks.0.title"),
    ("admin", "PATCH", "/api/admin/packages/{package}", lambda v: {"description": v},
     "description"),
    ("admin", "PATCH", "/api/admin/packages/{package}", lambda v: {"slug": v}, "slug"),
    ("admin", "PATCH", "/api/admin/users/{user}", lambda v: {"is_active": False, "reason": v},
     "reason"),
]
QUERY_FIELDS = [
    ("user", "/api/packages", "q"), ("user", "/api/packages", "category"),
    ("user", "/api/user/sessions", "from"),
    ("admin", "/api/admin/audit", "action"), ("admin", "/api/admin/audit", "target_type"),
    ("admin", "/api/admin/audit", "target_id"), ("admin", "/api/admin/users", "q"),
    ("admin", "/api/admin/packages", "q"),
]


@pytest.mark.parametrize("kind", sorted(HOSTILE))
@pytest.mark.parametrize(("who", "method", "path", "make_body", "field"), BODY_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, _, f in BODY_FIELDS])
def test_nul_and_lone_surrogates_are_422_everywhere(client, world, db_session, who, method,
                                                    path, make_body, field, kind):
    before = _state(db_session)
    res = _send(client, world, who, method, path, make_body(HOSTILE[kind]))
    _refused(res, 422, field, TEXT_ERROR)
    assert _state(db_session) == before


@pytest.mark.parametrize("kind", sorted(HOSTILE_QUERY))
@pytest.mark.parametrize(("who", "path", "name"), QUERY_FIELDS,
                         ids=[f"{p}?{n}" for _, p, n in QUERY_FIELDS])
def test_nul_and_lone_surrogates_in_query_arguments_are_422(client, world, db_session, who,
                                                            path, name, kind):
    before = _state(db_session)
    res = _send(client, world, who, "GET", path, query=f"{name}={HOSTILE_QUERY[kind]}")
    _refused(res, 422, name, TEXT_ERROR)
    assert _state(db_session) == before


def test_bytes_that_are_not_utf8_in_a_raw_query_are_422(client, world):
    res = client.get("/api/packages", headers=world["as"]["user"],
                     environ_overrides={"QUERY_STRING": "q=calm\xffsea"})
    _refused(res, 422, "q", TEXT_ERROR)


def test_a_hostile_field_name_is_422(client, world, db_session):
    before = _state(db_session)
    res = _send(client, world, "user", "PUT", "/api/user/profile", {"display\x00name": "x"})
    assert res.status_code == 422 and res.get_json()["code"] == "validation_error"
    assert _state(db_session) == before


def test_an_encoded_surrogate_pair_is_one_character_and_welcome(client, world):
    res = _send(client, world, "user", "PUT", "/api/user/profile",
                raw='{"display_name": "calm \\ud83c\\udf0a sea"}')
    assert res.status_code == 200 and res.get_json()["data"]["display_name"] == "calm 🌊 sea"


def test_every_input_schema_refuses_hostile_input(app):
    """Text and integers are checked in one place: every route's arguments derive from it."""
    from sonicus.validation import InputSchema

    checked = 0
    for view in app.view_functions.values():
        view_class = getattr(view, "view_class", None)
        handlers = [getattr(view_class, m) for m in ("get", "post", "put", "patch", "delete")
                    if view_class is not None and hasattr(view_class, m)] or [view]
        for handler in handlers:
            apidoc = getattr(handler, "_apidoc", {})
            for parameter in apidoc.get("arguments", {}).get("parameters", []):
                schema = parameter["schema"]
                schema_class = schema if isinstance(schema, type) else type(schema)
                assert issubclass(schema_class, InputSchema), schema_class
                checked += 1
    assert checked >= 20


# ---- deep JSON ---------------------------------------------------------------------------

def _json_routes(app):
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        for method in sorted(rule.methods & {"POST", "PUT", "PATCH", "DELETE"}):
            path = rule.rule
            for argument in rule.arguments:
                path = path.replace(f"<int:{argument}>", "1").replace(
                    f"<string:{argument}>", "chk_0").replace(f"<{argument}>", "x")
            routes.append((method, path))
    return routes


def test_deep_json_is_400_on_every_json_route(app, client, world, db_session):
    routes = _json_routes(app)
    assert ("POST", "/api/billing/webhook") in routes and len(routes) >= 15
    bodies = ["[" * 10000 + "]" * 10000,
              '{"a":' * 10000 + "1" + "}" * 10000,
              '{"display_name": "' + "[" * 100 + '", "x": ' + "[" * 33 + "]" * 33 + "}"]
    before = _state(db_session)
    for method, path in routes:
        for body in bodies:
            res = client.open(path, method=method, data=body, content_type="application/json",
                              headers=world["as"]["admin"])
            _refused(res, 400, "body", "JSON may nest at most 32 levels.")
    assert _state(db_session) == before


@pytest.mark.parametrize("content_type", [None, "text/plain;charset=UTF-8",
                                          "application/x-www-form-urlencoded"])
def test_a_json_body_without_its_content_type_is_400_and_changes_nothing(
        client, world, db_session, content_type):
    """A body the route would read as JSON, sent as another type (``fetch`` with a string and
    no header sends text/plain), is refused; it is never taken for an empty body whose write
    then goes ahead with what was asked dropped."""
    from sonicus.models import UserSoundPackage

    before = _state(db_session)
    for method, path, body in (
            ("POST", f"/api/user/packages/{world['package']}", {"favorite": True}),
            ("PUT", "/api/user/profile", {"display_name": "Calm"}),
            ("POST", "/api/user/sessions", {"package_id": world["package"]})):
        headers = dict(world["as"]["user"])
        if content_type:
            headers["Content-Type"] = content_type
        res = client.open(path, method=method, data=json.dumps(body), headers=headers)
        _refused(res, 400, "body", "Must be JSON, sent with Content-Type: application/json.")
    assert _state(db_session) == before
    assert db_session.execute(select(func.count()).select_from(UserSoundPackage)).scalar_one() == 0
    # without a body, a route whose body is optional does not care what type is named
    headers = {**world["as"]["user"], "Content-Type": content_type or "text/plain"}
    assert client.post(f"/api/user/packages/{world['package']}",
                       headers=headers).status_code == 201


def test_json_32_levels_deep_is_read_as_usual(client, world):
    nested = "[" * 30 + "]" * 30  # inside two objects: 32 levels
    res = _send(client, world, "user", "PUT", "/api/user/profile",
                raw='{"preferences": {"goals": ' + nested + "}}")
    assert res.status_code == 422  # read, then refused by the schema: not a list of names
    res = _send(client, world, "user", "PUT", "/api/user/profile",
                raw='{"display_name": "' + "[{" * 40 + '"}')
    assert res.status_code == 200  # brackets inside a string nest nothing


# ---- strict integers -----------------------------------------------------------------------

INTEGER_FIELDS = [
    ("user", "PUT", "/api/user/profile", "day_start_hour", lambda v: {"day_start_hour": v}),
    ("user", "PUT", "/api/user/profile", "preferences.daily_goal_minutes",
     lambda v: {"preferences": {"daily_goal_minutes": v}}),
    ("user", "POST", "/api/user/sessions", "package_id", lambda v: {"package_id": v}),
    ("user", "POST", "/api/user/sessions", "mood_before",
     lambda v: {"package_id": "{package}", "mood_before": v}),
    ("user", "PATCH", "/api/user/sessions/{session}", "listened_seconds",
     lambda v: {"listened_seconds": v}),
    ("user", "POST", "/api/user/sessions/{session}/complete", "mood_after",
     lambda v: {"listened_seconds": 5, "completed": False, "mood_after": v}),
    ("admin", "POST", "/api/admin/packages", "tracks.0.duration_seconds",
     lambda v: {**NEW_PACKAGE, "tracks": [{**TRACK, "duration_seconds": v}]}),
    ("admin", "POST", "/api/admin/users/{user}/packages", "package_id",
     lambda v: {"package_id": v}),
]
NOT_INTEGERS = {"float": 5.9, "whole_float": 5.0, "numeric_string": "5", "boolean": True}


def _with_ids(body, world):
    return json.loads(json.dumps(body).replace('"{package}"', str(world["package"])))


@pytest.mark.parametrize("kind", sorted(NOT_INTEGERS))
@pytest.mark.parametrize(("who", "method", "path", "field", "make_body"), INTEGER_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, f, _ in INTEGER_FIELDS])
def test_floats_and_numeric_strings_are_not_integers(client, world, db_session, who, method,
                                                     path, field, make_body, kind):
    before = _state(db_session)
    res = _send(client, world, who, method, path, _with_ids(make_body(NOT_INTEGERS[kind]), world))
    _refused(res, 422, field, "Not a valid integer.")
    assert _state(db_session) == before


@pytest.mark.parametrize(("who", "method", "path", "field", "make_body"), INTEGER_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, f, _ in INTEGER_FIELDS])
def test_integers_past_the_columns_range_are_422(client, world, db_session, who, method, path,
                                                 field, make_body):
    before = _state(db_session)
    for value in (2 ** 31, 2 ** 40, -(2 ** 31) - 1, 10 ** 30):
        res = _send(client, world, who, method, path, _with_ids(make_body(value), world))
        assert res.status_code == 422, res.get_json()
        assert any(e.startswith(f"{field}: ") for e in res.get_json()["errors"])
    assert _state(db_session) == before


@pytest.mark.parametrize(("who", "method", "path", "field", "make_body"), INTEGER_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, f, _ in INTEGER_FIELDS])
def test_an_integer_of_thousands_of_digits_is_422_naming_its_field(client, world, db_session,
                                                                     who, method, path, field,
                                                                     make_body):
    """Past Python's 4,300 digits a literal cannot even become an int: still the field's 422."""
    before = _state(db_session)
    for digits in ("9" * 5000, "-" + "9" * 5000):
        raw = json.dumps(_with_ids(make_body("HUGE"), world)).replace('"HUGE"', digits)
        res = _send(client, world, who, method, path, raw=raw)
        _refused(res, 422, field, "Not a valid integer.")
    assert _state(db_session) == before


def test_day_start_hour_5_9_is_not_stored_as_5(client, world, db_session):
    from sonicus.models import User

    _send(client, world, "user", "PUT", "/api/user/profile", {"day_start_hour": 5.9})
    db_session.expire_all()
    assert db_session.get(User, world["user"]).day_start_hour == 0
    assert _send(client, world, "user", "PUT", "/api/user/profile",
                 {"day_start_hour": 5}).status_code == 200


@pytest.mark.parametrize(("who", "method", "path", "field", "body", "query"), [
    ("user", "GET", "/api/packages", "page", None, "page=99999999999"),
    ("user", "GET", "/api/user/recommendations", "limit", None, "limit=99999999999"),
    ("user", "PUT", "/api/user/profile", "day_start_hour", {"day_start_hour": 2 ** 40}, ""),
    ("user", "POST", "/api/user/sessions/{session}/complete", "mood_after",
     {"listened_seconds": 5, "completed": False, "mood_after": 2 ** 40}, ""),
])
def test_a_number_past_a_fields_own_range_gets_that_range_alone(client, world, who, method,
                                                                 path, field, body, query):
    """A field with bounds of its own says them, not also the column's wider ones (which
    read as if negative numbers were welcome)."""
    res = _send(client, world, who, method, path, body, query=query)
    assert res.status_code == 422
    errors = res.get_json()["errors"]
    assert len(errors) == 1 and errors[0].startswith(f"{field}: Must be greater than or "
                                                     "equal to "), errors
    assert "2147483647" not in errors[0]


@pytest.mark.parametrize("value", ["1.5", "1e1", " 2", "%D9%A1", "%EF%BC%92", "2147483648",
                                   "99999999999999999999999"])
@pytest.mark.parametrize(("who", "path", "name"), [
    ("user", "/api/packages", "page"), ("user", "/api/packages", "per_page"),
    ("admin", "/api/admin/jobs", "failed_limit"), ("admin", "/api/admin/audit", "actor_id")])
def test_query_integers_are_ascii_digits(client, world, who, path, name, value):
    res = _send(client, world, who, "GET", path, query=f"{name}={value}")
    assert res.status_code == 422, res.get_json()
    assert any(e.startswith(f"{name}: ") for e in res.get_json()["errors"])


def test_query_integers_in_ascii_digits_are_read(client, world):
    res = _send(client, world, "user", "GET", "/api/packages", query="page=1&per_page=5")
    assert res.status_code == 200 and res.get_json()["pagination"]["per_page"] == 5


@pytest.mark.parametrize("path", ["/api/user/sessions/%D9%A1", "/api/user/sessions/99999999999",
                                  "/api/packages/%EF%BC%91", "/api/packages/2147483648"])
def test_path_ids_are_ascii_digits_of_an_integer(client, world, path):
    res = client.get(path, headers=world["as"]["user"])
    assert res.status_code == 404 and res.get_json()["code"] == "not_found"


# ---- strict booleans -----------------------------------------------------------------------

BOOLEAN_FIELDS = [
    ("user", "POST", "/api/user/sessions/{session}/complete", "completed",
     lambda v: {"listened_seconds": 5, "completed": v}),
    ("user", "PATCH", "/api/user/packages/{package}", "favorite", lambda v: {"favorite": v}),
    ("admin", "PATCH", "/api/admin/users/{user}", "is_active", lambda v: {"is_active": v}),
    ("admin", "PATCH", "/api/admin/packages/{package}", "published",
     lambda v: {"published": v}),
]
NOT_BOOLEANS = {"word": "yes", "string_false": "false", "one": 1, "zero": 0}


@pytest.mark.parametrize("kind", sorted(NOT_BOOLEANS))
@pytest.mark.parametrize(("who", "method", "path", "field", "make_body"), BOOLEAN_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, f, _ in BOOLEAN_FIELDS])
def test_a_body_boolean_is_json_true_or_false(client, world, db_session, who, method, path,
                                              field, make_body, kind):
    """``"yes"`` read as true, or ``"false"`` as false, is a guess made for the client: a
    body's boolean is JSON ``true`` or ``false``, anything else a 422 naming the field."""
    before = _state(db_session)
    res = _send(client, world, who, method, path, make_body(NOT_BOOLEANS[kind]))
    _refused(res, 422, field, "Not a valid boolean.")
    assert _state(db_session) == before


def test_query_booleans_are_still_words(client, world):
    res = _send(client, world, "user", "GET", "/api/user/packages", query="favorite=true")
    assert res.status_code == 200, res.get_json()


# ---- tokens --------------------------------------------------------------------------------

def _token(idp, **overrides) -> str:
    """A validly signed token with these claims (JSON-escaped as given, surrogates too)."""
    from joserfc import jws

    claims = {**idp.claims(email="hostile@example.com"), **overrides}
    header = {"alg": "RS256", "typ": "JWT", "kid": idp.key.kid}
    return jws.serialize_compact(header, json.dumps(claims).encode(), idp.key)


@pytest.mark.parametrize("claims", [
    {"sub": "s" * 256}, {"sub": "abc\x00def"}, {"sub": "abc\ud800def"}, {"sub": ""},
    {"sub": 12345}, {"email": "nul\x00@example.com"}, {"name": "Nul\x00Name"},
    {"preferred_username": "half\udfffsurrogate"},
], ids=["sub_256", "sub_nul", "sub_surrogate", "sub_empty", "sub_number", "email_nul",
        "name_nul", "username_surrogate"])
def test_hostile_tokens_are_401(client, idp, db_session, claims):
    from sonicus.models import User

    res = client.get("/api/user/profile",
                     headers={"Authorization": f"Bearer {_token(idp, **claims)}"})
    body = res.get_json()
    assert res.status_code == 401 and body["code"] == "invalid_token", body
    assert res.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert db_session.execute(select(func.count(User.id))).scalar_one() == 0


def test_a_subject_of_255_characters_signs_in(client, idp):
    res = client.get("/api/user/profile",
                     headers={"Authorization": f"Bearer {_token(idp, sub='s' * 255)}"})
    assert res.status_code == 200


def test_a_token_name_with_bidirectional_controls_signs_in_without_them(client, idp):
    """The identity provider's name becomes the display name: its embedding, override and
    isolate controls (which would reorder it in admin screens and exports) are left out; a
    right-to-left name is kept as it is."""
    for name, shown in (("\u202eEve\u202c", "Eve"), ("\u2067שרה\u2069 K", "שרה K"),
                        ("\u202e", None), ("محمد", "محمد")):
        token = _token(idp, sub=f"bidi-{len(name)}-{ord(name[0])}", name=name)
        res = client.get("/api/user/profile", headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 200, res.get_json()
        assert res.get_json()["data"]["display_name"] == shown, name


# ---- webhooks ------------------------------------------------------------------------------

def _paid_invoice(billing, user_id, now, **changes):
    event = billing.invoice_event("evt_hostile", "invoice.paid", user_id=user_id, tier="premium",
                                  period_start=now, period_end=now + timedelta(days=30),
                                  created=now)
    invoice = event["data"]["object"]
    for path, value in changes.items():
        target = {"event": event, "invoice": invoice,
                  "line": invoice["lines"]["data"][0],
                  "meta": invoice["parent"]["subscription_details"]["metadata"]}[
                      path.split(".")[0]]
        target[path.split(".", 1)[1]] = value
    return event


HOSTILE_WEBHOOKS = {
    "id_over_255": {"event.id": "evt_" + "x" * 252},
    "type_over_96": {"event.type": "invoice." + "p" * 89},
    "created_1e20": {"event.created": 1e20},
    "created_10_to_20": {"event.created": 10 ** 20},
    "created_float": {"event.created": 1700000000.5},
    "period_in_year_10000": {"line.period": {"start": 1700000000, "end": 253402300800}},
    "arabic_digits_user_id": {"meta.sonicus_user_id": "١٢"},
    "fullwidth_digits_user_id": {"meta.sonicus_user_id": "１"},
    "user_id_past_int": {"meta.sonicus_user_id": "99999999999"},
    "amount_2_to_40": {"invoice.amount_paid": 2 ** 40},
    "amount_float": {"invoice.amount_paid": 999.5},
    "amount_string": {"invoice.amount_paid": "999"},
    "customer_over_255": {"invoice.customer": "cus_" + "c" * 252},
    "nul_in_metadata": {"meta.note": "a\x00b"},
    "surrogate_in_customer": {"invoice.customer": "cus_\ud800"},
    "lines_data_true": {"invoice.lines": {"object": "list", "data": True}},
    "lines_data_number": {"invoice.lines": {"object": "list", "data": 12}},
    "lines_data_object": {"invoice.lines": {"object": "list", "data": {"il_1": {}}}},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_WEBHOOKS))
def test_hostile_webhooks_are_400_and_change_nothing(client, make_user, billing, db_session,
                                                     case):
    now = clock.now().replace(microsecond=0)
    user = make_user("payer@example.com")
    before = (_state(db_session), billing.count_billing_events())
    event = _paid_invoice(billing, user.id, now, **HOSTILE_WEBHOOKS[case])
    res = billing.post_webhook(client, event)
    body = res.get_json()
    assert res.status_code == 400 and body["code"] == "validation_error", body
    assert body["errors"] and body["success"] is False
    assert (_state(db_session), billing.count_billing_events()) == before
    # the same event, sane, is taken
    res = billing.post_webhook(client, _paid_invoice(billing, user.id, now))
    assert res.status_code == 200 and res.get_json()["data"]["outcome"] == "activated"


@pytest.mark.parametrize("items", [True, 1.5, 2 ** 63, "si_1", {"si_1": {}}],
                         ids=["true", "float", "past_64_bits", "text", "object"])
def test_a_signed_plan_change_whose_items_are_not_a_list_is_400_and_changes_nothing(
        client, make_user, billing, db_session, items):
    """An authentic ``customer.subscription.updated`` whose ``items.data`` is not a list is
    refused naming it, as any value we cannot take; a boolean or a number was a 500 (and
    Stripe would retry it for days), an invoice's ``lines.data`` alike."""
    make_user("payer@example.com")
    before = (_state(db_session), billing.count_billing_events())
    event = billing.subscription_updated("evt_items", price="price_prem")
    event["data"]["object"]["items"]["data"] = items
    res = billing.post_webhook(client, event)
    body = res.get_json()
    assert res.status_code == 400 and body["code"] == "validation_error", body
    assert body["errors"] == ["items.data: not a list."], body
    assert (_state(db_session), billing.count_billing_events()) == before


# ---- bidirectional controls in free text ----------------------------------------------------

BIDI_ERROR = ("Must not contain bidirectional control characters "
              "(U+202A..U+202E, U+2066..U+2069).")
BIDI_FIELDS = [
    ("user", "POST", "/api/user/sessions/{session}/complete",
     lambda v: {"listened_seconds": 5, "completed": False, "note": v}, "note"),
    ("admin", "POST", "/api/admin/packages", lambda v: {**NEW_PACKAGE, "description": v},
     "description"),
    ("admin", "PATCH", "/api/admin/packages/{package}", lambda v: {"description": v},
     "description"),
]


@pytest.mark.parametrize("control", ["\u202a", "\u202c", "\u202e", "\u2066", "\u2069"])
@pytest.mark.parametrize(("who", "method", "path", "make_body", "field"), BIDI_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, _, f in BIDI_FIELDS])
def test_notes_and_descriptions_with_bidirectional_controls_are_422_naming_the_field(
        client, world, db_session, who, method, path, make_body, field, control):
    """An embedding, override or isolate control reorders the text shown after it (in the
    listener's history, an export, the catalog): refused, nothing changed."""
    before = _state(db_session)
    res = _send(client, world, who, method, path, make_body(f"calm{control}aes"))
    _refused(res, 422, field, BIDI_ERROR)
    assert _state(db_session) == before


@pytest.mark.parametrize(("who", "method", "path", "make_body", "field"), BIDI_FIELDS,
                         ids=[f"{m} {p} {f}" for _, m, p, _, f in BIDI_FIELDS])
def test_right_to_left_notes_and_descriptions_with_direction_marks_are_kept(
        client, world, who, method, path, make_body, field):
    text = "\u200fגשם על הגג\u200e 10 دقائق"
    res = _send(client, world, who, method, path, make_body(text))
    assert res.status_code in (200, 201), res.get_json()
    assert res.get_json()["data"][field] == text
