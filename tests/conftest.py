"""Fixtures in the flaskr style, against real services.

- PostgreSQL: the database at TEST_DATABASE_URL (default: database ``test`` on 127.0.0.1),
  migrated once per run with ``flask db upgrade``; every table truncated before each test.
- Redis: the db at TEST_REDIS_URL (default: db 15), flushed before each test.
- Tokens: signed with a test RSA key whose JWKS is served over real HTTP by a local server,
  found through a real discovery document, exactly as the provider's would be.

Tests take everything from fixtures, never by importing a module of the suite: the
settings (``make_config``, ``test_database_url``, ``test_redis_url``), one factory per kind
of row (``make_user``, ``make_package``, ``make_session``), billing events (``billing``), a
local stand-in for Stripe's API (``stripe_stand_in``, ``stripe_app``), servers and sockets
(``two_web_processes``, ``socket_process``, ``serve_in_process``, ``own_redis``,
``connect_ws``), time
(``set_clock``) and polling (``wait_for``), Web Push (``push_service``, ``browser``,
``push_app``, ``push_client``). Only ``live_server.py`` and ``fault_jobs.py`` are modules, for
the processes that load them by import path, and ``push_service.py``, which the reminder bench
loads too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import redis as redis_lib
import websocket
from joserfc import jwt
from joserfc.jwk import RSAKey
from processes import free_port, wait_until_up
from sqlalchemy import text
from werkzeug.serving import make_server

from sonicus import clock, create_app
from sonicus.caller_cache import get_caller_cache
from sonicus.realtime.broker import stop_running_brokers


def pytest_sessionfinish(session, exitstatus):
    """Stop the live-update subscribers of every app the run made before pytest closes its
    output: one retrying against a Redis a test stopped would log into a closed stream."""
    stop_running_brokers(wait=1.5)


TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL",
                                   "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AUDIENCE = "sonicus-test"
ROOT = Path(__file__).resolve().parent.parent
USER_GROUPS = ("sonicus-user",)
ADMIN_GROUPS = ("sonicus-user", "sonicus-super-admin")
WEBHOOK_SECRET = "whsec_test"


class IdentityProvider:
    """A tiny OIDC provider: discovery + JWKS over HTTP, keys that can rotate."""

    def __init__(self):
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "key-1"})]
        self.jwks_requests = 0
        self.requests_received = 0  # counted on arrival, before ``delay``
        self.fail = False
        self.delay = 0.0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                provider.requests_received += 1
                if provider.delay:
                    time.sleep(provider.delay)
                if provider.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                if self.path.endswith("/.well-known/openid-configuration"):
                    body = {"issuer": provider.issuer, "jwks_uri": provider.issuer + "jwks/"}
                elif self.path.endswith("/jwks/"):
                    provider.jwks_requests += 1
                    body = {"keys": [k.as_dict(private=False) for k in provider.keys]}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}/application/o/sonicus/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def key(self) -> RSAKey:
        return self.keys[0]

    def rotate(self) -> RSAKey:
        new = RSAKey.generate_key(2048, parameters={"kid": f"key-{uuid.uuid4().hex[:8]}"})
        self.keys = [new]
        return new

    def claims(self, *, sub=None, email="listener@example.com", name="Listener",
               groups=USER_GROUPS, email_verified=True, lifetime=3600, **overrides) -> dict:
        """A token's claims (a claim given as None is left out); ``make_user`` creates users
        from these too."""
        now = int(time.time())
        claims = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": sub or f"sub-{email}",
            "iat": now, "auth_time": now, "exp": now + lifetime, "azp": AUDIENCE,
            "email": email, "email_verified": email_verified, "name": name,
            "preferred_username": email.split("@")[0], "groups": list(groups),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, *, key=None, header=None, **claims) -> str:
        key = key or self.key
        hdr = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        hdr.update(header or {})
        return jwt.encode(hdr, self.claims(**claims), key)


@pytest.fixture(scope="session")
def idp():
    provider = IdentityProvider()
    yield provider
    provider.server.shutdown()


def _config(idp, **extra) -> dict:
    """The test app's settings, with ``extra`` changed."""
    config = {
        "SONICUS_ENV": "testing",
        "DATABASE_URL": TEST_DATABASE_URL,
        "REDIS_URL": TEST_REDIS_URL,
        "OIDC_ISSUER": idp.issuer,
        "OIDC_AUDIENCE": AUDIENCE,
        "OIDC_JWKS_URL": None,
        "OIDC_JWKS_MIN_REFRESH_SECONDS": 0,
        "DEV_TOKEN_ISSUER": False,
        "MEDIA_BASE_URL": "https://media.example.com",
        "MEDIA_URL_SECRET": "test-media-secret",
        "BILLING_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RATELIMIT_ENABLED": False,
    }
    config.update(extra)
    return config


def _reset_database(app) -> None:
    from flask_migrate import upgrade

    from sonicus.extensions import db

    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS sonicus CASCADE"))
        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def make_config(idp):
    """``make_config(**settings)`` → the test app's settings with these changed, for a second
    app (``create_app(make_config(REDIS_URL=None))``)."""

    def make(**extra) -> dict:
        return _config(idp, **extra)

    return make


@pytest.fixture(scope="session")
def test_database_url():
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def test_redis_url():
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def app(idp):
    app = create_app(_config(idp))
    _reset_database(app)
    _SESSION_APPS.append(app)
    return app


_SESSION_APPS: list = []  # the suite's shared app, whose subscriber runs all along


@pytest.fixture(autouse=True, scope="module")
def _database_connections_given_back():
    """When a test module ends, every app still alive closes its idle database connections
    (its pool, the idempotency keys' engine and connections). An app a test made keeps them
    until it is collected, and over the whole suite those pools outgrew PostgreSQL's
    ``max_connections`` ("too many clients" in later modules). Their subscribers stop too:
    one whose Redis a test took away retried (and logged into later tests' output) for ever."""
    yield
    import gc

    from sonicus.extensions import db
    from sonicus.realtime.broker import _RUNNING
    from sonicus.services.idempotency import CONNECTIONS_KEY, ENGINE_KEY

    gc.collect()
    for broker in list(_RUNNING):
        if not any(broker.app is shared for shared in _SESSION_APPS):
            broker.stop()
    for flask_app, engines in list(db._app_engines.items()):
        for engine in list(engines.values()):
            engine.dispose()
        keys_engine = flask_app.extensions.get(ENGINE_KEY)
        if keys_engine is not None:
            keys_engine.dispose()
        connections = flask_app.extensions.get(CONNECTIONS_KEY)
        if connections is not None:
            connections.close_idle()


@pytest.fixture(scope="session")
def table_names(app):
    from sonicus.extensions import db

    return [f"sonicus.{t.name}" for t in db.metadata.sorted_tables]


@pytest.fixture(autouse=True)
def clean_state(request, app, table_names):
    """Every test starts with empty tables and an empty Redis db."""
    from sonicus.extensions import db

    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(table_names)} RESTART IDENTITY CASCADE"))
    redis_lib.Redis.from_url(TEST_REDIS_URL).flushdb()
    app.extensions.pop("sonicus_memory_cache", None)
    get_caller_cache(app).clear()  # the tables were emptied behind the ORM's back
    yield
    with app.app_context():
        db.session.remove()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def redis_client():
    return redis_lib.Redis.from_url(TEST_REDIS_URL)


@pytest.fixture
def token_for(idp):
    """``token_for(email, groups=..., **claims)`` → a signed access token."""

    def make(email="listener@example.com", groups=USER_GROUPS, **claims):
        return idp.token(email=email, groups=groups, **claims)

    return make


@pytest.fixture
def auth(token_for):
    """``auth(email, ...)`` → headers with a Bearer token for that user."""

    def make(email="listener@example.com", **kwargs):
        return {"Authorization": f"Bearer {token_for(email, **kwargs)}"}

    return make


@pytest.fixture
def admin_auth(auth):
    def make(email="admin@example.com", **kwargs):
        return auth(email, groups=ADMIN_GROUPS, **kwargs)

    return make


@pytest.fixture
def db_session(app):
    """The app's session inside an app context, for arranging and checking rows."""
    from sonicus.extensions import db

    with app.app_context():
        yield db.session


# ---- factories: users, packages, listening sessions -----------------------------------------
# Each writes through the session of whichever app context is current (the test app's, from
# ``db_session``, or a second app's inside ``with other.app_context()``) and commits.

@pytest.fixture
def make_user(idp, db_session):
    """``make_user(email, ...)`` → the ``User``, created as the app creates one on a first
    request (``sync_user_from_claims``, from the claims ``auth(email)`` / ``admin_auth(email)``
    send, so that request changes nothing), then given the state asked for:

    - ``name``: the provider's name for them (default: the test provider's, "Listener");
      ``sub``: their subject (default ``sub-<email>``, as the tokens have); ``admin``: in the
      admin group.
    - ``is_active``, ``timezone``, ``day_start_hour``: the profile columns.
    - ``tier``, ``status`` and any other ``UserSubscription`` column (``trial_used=True``,
      ``payment_method_on_file=True``, ...); ``with_subscription=False`` leaves the user
      without a subscription row at all.
    """
    from sqlalchemy import select

    from sonicus.extensions import db
    from sonicus.models import UserSubscription
    from sonicus.services.users import sync_user_from_claims

    def make(email="listener@example.com", *, name=None, sub=None, admin=False,
             is_active=True, timezone="UTC", day_start_hour=0, tier="starter",
             status="active", with_subscription=True, **subscription):
        claims = idp.claims(email=email, sub=sub, groups=ADMIN_GROUPS if admin else USER_GROUPS,
                            **({"name": name} if name is not None else {}))
        user, _subscription = sync_user_from_claims(claims)
        user.is_active, user.timezone, user.day_start_hour = is_active, timezone, day_start_hour
        row = db.session.execute(
            select(UserSubscription).where(UserSubscription.user_id == user.id)).scalar_one()
        if with_subscription:
            row.tier, row.status = tier, status
            for column, value in subscription.items():
                setattr(row, column, value)
        else:
            db.session.delete(row)
        db.session.commit()
        return user

    return make


@pytest.fixture
def make_package(db_session):
    """``make_package(slug, ...)`` → a published, public ``SoundPackage`` with one track per
    length in ``tracks`` (seconds); any column can be given (``minimum_tier``, ``category``,
    ``popularity``, ``published``, ``archived_at``, ``title``, ``description``)."""
    from sonicus.extensions import db
    from sonicus.models import SoundPackage, Track

    def make(slug="rain", *, title=None, description="", category="sleep",
             minimum_tier="public", published=True, archived_at=None, popularity=0,
             tracks=(600,)):
        package = SoundPackage(slug=slug, title=title or slug.replace("-", " ").title(),
                               description=description, category=category,
                               minimum_tier=minimum_tier, published=published,
                               archived_at=archived_at, popularity=popularity,
                               track_count=len(tracks), duration_seconds=sum(tracks))
        for position, length in enumerate(tracks):
            package.tracks.append(Track(position=position, title=f"Part {position + 1}",
                                        duration_seconds=length,
                                        media_path=f"{category}/{slug}/{position + 1:02d}.mp3"))
        db.session.add(package)
        db.session.commit()
        return package

    return make


@pytest.fixture
def make_session(db_session):
    """``make_session(user, package, day, ...)`` → a ``ListeningSession`` row (a starter
    one), written straight to the database.

    ``user`` and ``package`` are rows or ids (``user=None``: an erased user's session). When
    it happened: ``day`` (the user's day; it starts at 12:00 UTC that day) and/or
    ``started_at`` (the day is then its UTC date). ``minutes`` listened; ``status`` "ended"
    (it ended ``minutes`` after it started, completed unless ``completed=False``) or "open".
    """
    from sonicus.extensions import db
    from sonicus.models import ListeningSession

    def make(user, package, day=None, *, started_at=None, minutes=10, status="ended",
             completed=None, counts_toward_quota=True, mood_before=None, mood_after=None,
             note=None):
        if started_at is None:
            started_at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
        session = ListeningSession(
            user_id=getattr(user, "id", user), package_id=getattr(package, "id", package),
            tier="starter", status=status, started_at=started_at,
            local_day=day or started_at.astimezone(UTC).date(),
            ended_at=None if status == "open" else started_at + timedelta(minutes=minutes),
            listened_seconds=int(minutes * 60),
            completed=status == "ended" if completed is None else completed,
            counts_toward_quota=counts_toward_quota, mood_before=mood_before,
            mood_after=mood_after, note=note)
        db.session.add(session)
        db.session.commit()
        return session

    return make


# ---- billing: Stripe-format webhooks and the subscriptions they change -----------------------

def _stamp(moment: datetime) -> int:
    return int(moment.timestamp())


class Billing:
    """The billing provider's side (Stripe-format events, signed and delivered to the webhook
    as Stripe would) and the subscription rows they change, for the test app's database."""

    def __init__(self, app):
        self.app = app

    # ---- events and their delivery

    @staticmethod
    def sign(body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
        """A ``Stripe-Signature`` header, computed by hand exactly as the scheme says."""
        timestamp = int(time.time()) if timestamp is None else timestamp
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        return f"t={timestamp},v1={mac.hexdigest()}"

    def stripe_header_matches_library(self, body: bytes) -> bool:
        """Our hand-made header is what the stripe library itself would produce."""
        import stripe

        ts = int(time.time())
        return self.sign(body, WEBHOOK_SECRET, ts) == \
            stripe.WebhookSignature.generate_signature_header(body.decode(), WEBHOOK_SECRET, ts)

    def post_webhook(self, client, event: dict, *, secret: str = WEBHOOK_SECRET,
                     timestamp: int | None = None, header: str | None = None,
                     body: bytes | None = None):
        body = body if body is not None else json.dumps(event).encode()
        header = header if header is not None else self.sign(body, secret, timestamp)
        return client.post("/api/billing/webhook", data=body,
                           headers={"Stripe-Signature": header,
                                    "Content-Type": "application/json"})

    @staticmethod
    def checkout_completed(event_id: str, *, user_id: int, tier: str,
                           reference: str | None = None, amount: int = 999,
                           created: datetime | None = None, customer: str = "cus_1",
                           subscription: str = "sub_1") -> dict:
        meta = {"sonicus_user_id": str(user_id), "sonicus_tier": tier}
        if reference:
            meta["sonicus_reference"] = reference
        return {"id": event_id, "object": "event", "type": "checkout.session.completed",
                "created": _stamp(created or clock.now()),
                "data": {"object": {"id": f"cs_{event_id}", "object": "checkout.session",
                                    "mode": "subscription", "payment_status": "paid",
                                    "client_reference_id": reference, "customer": customer,
                                    "subscription": subscription, "amount_total": amount,
                                    "metadata": meta}}}

    @staticmethod
    def invoice_event(event_id: str, type_: str, *, user_id: int | None, tier: str | None,
                      period_start: datetime, period_end: datetime, amount: int = 999,
                      created: datetime | None = None, customer: str = "cus_1",
                      subscription: str = "sub_1", price: str | None = None) -> dict:
        meta = {}
        if user_id is not None:
            meta["sonicus_user_id"] = str(user_id)
        if tier is not None:
            meta["sonicus_tier"] = tier
        line = {"id": "il_1", "object": "line_item", "amount": amount,
                "period": {"start": _stamp(period_start), "end": _stamp(period_end)},
                "metadata": meta}
        if price:
            line["pricing"] = {"price_details": {"price": price}}
        return {"id": event_id, "object": "event", "type": type_,
                "created": _stamp(created or clock.now()),
                "data": {"object": {
                    "id": f"in_{event_id}", "object": "invoice", "customer": customer,
                    "billing_reason": "subscription_cycle",
                    "amount_paid": amount if type_ != "invoice.payment_failed" else 0,
                    "amount_due": amount,
                    "parent": {"subscription_details": {
                        "subscription": subscription, "metadata": meta}},
                    "lines": {"object": "list", "data": [line]}}}}

    @staticmethod
    def subscription_deleted(event_id: str, *, subscription: str = "sub_1",
                             customer: str = "cus_1", created: datetime | None = None) -> dict:
        return {"id": event_id, "object": "event", "type": "customer.subscription.deleted",
                "created": _stamp(created or clock.now()),
                "data": {"object": {"id": subscription, "object": "subscription",
                                    "customer": customer, "status": "canceled",
                                    "ended_at": _stamp(created or clock.now()),
                                    "metadata": {}}}}

    @staticmethod
    def subscription_updated(event_id: str, *, price: str, subscription: str = "sub_1",
                             customer: str = "cus_1", cancel_at_period_end: bool = False,
                             previous: dict | None = None, created: datetime | None = None,
                             metadata: dict | None = None) -> dict:
        """``customer.subscription.updated`` as the billing portal causes it: the item's
        price now, ``cancel_at_period_end`` now, and ``previous`` (the changed fields' former
        values: ``previous_attributes``; default: the plan changed)."""
        if previous is None:
            previous = {"items": {"object": "list", "data": []}}
        return {"id": event_id, "object": "event", "type": "customer.subscription.updated",
                "created": _stamp(created or clock.now()),
                "data": {"object": {"id": subscription, "object": "subscription",
                                    "customer": customer, "status": "active",
                                    "cancel_at_period_end": cancel_at_period_end,
                                    "items": {"object": "list", "data": [{
                                        "id": "si_1", "object": "subscription_item",
                                        "price": {"id": price, "object": "price"}}]},
                                    "metadata": metadata or {}},
                         "previous_attributes": previous}}

    # ---- the subscription, through the API and in the database

    @staticmethod
    def subscription(client, headers) -> dict:
        resp = client.get("/api/user/subscription", headers=headers)
        assert resp.status_code == 200, resp.get_json()
        return resp.get_json()["data"]

    def buy(self, client, headers, tier: str = "premium") -> dict:
        """Start a paid checkout and confirm it in the sandbox; the subscription afterwards."""
        resp = client.post("/api/user/subscription", json={"tier": tier}, headers=headers)
        assert resp.status_code == 200, resp.get_json()
        reference = resp.get_json()["data"]["checkout"]["reference"]
        confirm = client.post(f"/api/billing/sandbox/{reference}/confirm")
        assert confirm.status_code == 200, confirm.get_json()
        return self.subscription(client, headers)

    def user_id(self, email: str) -> int:
        from sqlalchemy import select

        from sonicus.extensions import db
        from sonicus.models import User

        with self.app.app_context():
            return db.session.execute(select(User.id).where(User.email == email)).scalar_one()

    def arrange(self, email: str, **fields) -> None:
        """Set subscription columns directly (e.g. move a deadline into the past)."""
        from sqlalchemy import select

        from sonicus.extensions import db
        from sonicus.models import User, UserSubscription

        with self.app.app_context():
            sub = db.session.execute(
                select(UserSubscription).join(User, User.id == UserSubscription.user_id)
                .where(User.email == email)).scalar_one()
            for name, value in fields.items():
                setattr(sub, name, value)
            db.session.commit()
            db.session.remove()

    def events_of(self, email: str, type_: str | None = None) -> list[dict]:
        """The user's subscription events, oldest first (optionally of one type)."""
        from sqlalchemy import select

        from sonicus.extensions import db
        from sonicus.models import SubscriptionEvent, User

        with self.app.app_context():
            q = (select(SubscriptionEvent).join(User, User.id == SubscriptionEvent.user_id)
                 .where(User.email == email).order_by(SubscriptionEvent.id))
            if type_:
                q = q.where(SubscriptionEvent.type == type_)
            out = [{"type": e.type, "from_tier": e.from_tier, "to_tier": e.to_tier,
                    "amount_cents": e.amount_cents, "details": dict(e.details or {}),
                    "at": e.at}
                   for e in db.session.execute(q).scalars()]
            db.session.remove()
            return out

    def count_billing_events(self) -> int:
        from sqlalchemy import func, select

        from sonicus.extensions import db
        from sonicus.models import BillingEvent

        with self.app.app_context():
            n = db.session.execute(select(func.count(BillingEvent.id))).scalar_one()
            db.session.remove()
            return n


@pytest.fixture
def billing(app):
    """Stripe-format events and webhook delivery, and the subscriptions they change
    (``Billing``)."""
    return Billing(app)


# ---- a local stand-in for api.stripe.com -----------------------------------------------------

class StripeStandIn:
    """Stripe's API as the official client speaks it, over real HTTP on a free port
    (``STRIPE_API_BASE``). ``requests``: every request received, as ``(method, path, form,
    Authorization)``. ``down``: answer everything 503 (with ``Stripe-Should-Retry: false``, so
    the client gives up at once). ``decline_charges``: an upgrade's charge is declined.
    ``canceled``: the subscriptions canceled here (canceling one again is refused, as Stripe
    does); ``missing``: subscription ids Stripe does not know.

    Checkout Sessions are kept (``sessions``, by id): each created one is ``open`` with its own
    id; ``POST /v1/checkout/sessions/<id>/expire`` expires an open one and refuses any other,
    as Stripe does. ``complete(session_id, subscription)`` is the customer paying one (only an
    open one can be): it makes the subscription, its paid invoice and that invoice's payment,
    which ``GET /v1/invoices?subscription=`` and ``GET /v1/invoice_payments?invoice=`` list;
    ``POST /v1/refunds {payment_intent}`` refunds it once (``refunds``: the payment intents
    refunded). A subscription's ``cancel_at_period_end`` is the last one posted to it
    (``cancel_flags``; a test may set it, as a change made in the billing portal)."""

    def __init__(self):
        self.cancel_flags: dict[str, bool] = {}
        self.requests = []
        self.decline_charges = False
        self.down = False
        self.canceled: set[str] = set()
        self.missing: set[str] = set()
        self.sessions: dict[str, dict] = {}
        self.invoices: list[dict] = []
        self.invoice_payments: list[dict] = []
        self.refunds: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, body, status=200, headers=()):
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def _received(self, method) -> bool:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode()) if length else {}
                fake.requests.append((method, self.path, form,
                                      self.headers.get("Authorization")))
                if fake.down:
                    self._reply({"error": {"type": "api_error", "message": "unavailable"}}, 503,
                                headers=[("Stripe-Should-Retry", "false")])
                    return False
                return True

            def _missing(self, sid):
                self._reply({"error": {"type": "invalid_request_error",
                                       "code": "resource_missing",
                                       "message": f"No such subscription: '{sid}'"}}, 404)

            def _subscription(self, sid, **fields):
                return {"id": sid, "object": "subscription",
                        "status": "canceled" if sid in fake.canceled else "active",
                        "cancel_at_period_end": fake.cancel_flags.get(sid, False),
                        "items": {"object": "list", "data": [
                            {"id": "si_1", "object": "subscription_item"}]}, **fields}

            def _list(self, url, data):
                return self._reply({"object": "list", "url": url, "has_more": False,
                                    "data": data})

            def do_GET(self):
                if not self._received("GET"):
                    return
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/v1/invoices":
                    return self._list(url.path, [
                        i for i in fake.invoices
                        if i["parent"]["subscription_details"]["subscription"]
                        == query.get("subscription")
                        and query.get("status") in (None, i["status"])])
                if url.path == "/v1/invoice_payments":
                    return self._list(url.path, [
                        p for p in fake.invoice_payments if p["invoice"] == query.get("invoice")
                        and query.get("status") in (None, p["status"])])
                if self.path.startswith("/v1/subscriptions/"):
                    sid = self.path.rsplit("/", 1)[1]
                    if sid in fake.missing:
                        return self._missing(sid)
                    return self._reply(self._subscription(sid))
                self._reply({"error": {"message": "no"}}, 404)

            def do_DELETE(self):
                if not self._received("DELETE"):
                    return
                if self.path.startswith("/v1/subscriptions/"):
                    sid = self.path.rsplit("/", 1)[1]
                    if sid in fake.missing:
                        return self._missing(sid)
                    if sid in fake.canceled:
                        return self._reply({"error": {
                            "type": "invalid_request_error",
                            "message": "A canceled subscription can only update its "
                                       "cancellation_details and metadata."}}, 400)
                    fake.canceled.add(sid)
                    return self._reply(self._subscription(sid))
                self._reply({"error": {"message": "no"}}, 404)

            def do_POST(self):
                if not self._received("POST"):
                    return
                form = fake.requests[-1][2]
                if self.path == "/v1/checkout/sessions":
                    sid = f"cs_test_{len(fake.sessions) + 1}"
                    fake.sessions[sid] = {
                        "id": sid, "object": "checkout.session", "status": "open",
                        "mode": "subscription",
                        "client_reference_id": form.get("client_reference_id", [None])[0],
                        "url": f"https://checkout.stripe.test/c/{sid}"}
                    return self._reply(fake.sessions[sid])
                if self.path.startswith("/v1/checkout/sessions/") \
                        and self.path.endswith("/expire"):
                    sid = self.path.split("/")[-2]
                    session = fake.sessions.get(sid)
                    if session is None:
                        return self._reply({"error": {
                            "type": "invalid_request_error", "code": "resource_missing",
                            "message": f"No such checkout.session: '{sid}'"}}, 404)
                    if session["status"] != "open":
                        return self._reply({"error": {
                            "type": "invalid_request_error",
                            "message": "Only Checkout Sessions with a status in [\"open\"] "
                                       "can be expired."}}, 400)
                    session.update(status="expired", url=None)
                    return self._reply(session)
                if self.path == "/v1/refunds":
                    intent = form.get("payment_intent", [None])[0]
                    if intent in fake.refunds:
                        return self._reply({"error": {
                            "type": "invalid_request_error", "code": "charge_already_refunded",
                            "message": "Charge has already been refunded."}}, 400)
                    fake.refunds.append(intent)
                    return self._reply({"id": f"re_{len(fake.refunds)}", "object": "refund",
                                        "payment_intent": intent, "status": "succeeded"})
                if self.path == "/v1/billing_portal/sessions":
                    return self._reply({"id": "bps_1", "object": "billing_portal.session",
                                        "customer": form.get("customer", [None])[0],
                                        "return_url": form.get("return_url", [None])[0],
                                        "url": "https://billing.stripe.test/p/session_1"})
                if self.path.startswith("/v1/subscriptions/"):
                    if fake.decline_charges and "payment_behavior" in form:
                        return self._reply({"error": {
                            "type": "card_error", "code": "card_declined",
                            "message": "Your card was declined."}}, 402)
                    sid = self.path.rsplit("/", 1)[1]
                    if "cancel_at_period_end" in form:
                        fake.cancel_flags[sid] = form["cancel_at_period_end"][0] == "true"
                    return self._reply(self._subscription(sid))
                self._reply({"error": {"message": "no"}}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def complete(self, session_id: str, subscription: str, amount: int = 999) -> bool:
        """The customer pays the session (only an open one can be paid): its subscription,
        paid invoice and payment now exist. False when the session was not open."""
        session = self.sessions[session_id]
        if session["status"] != "open":
            return False
        session.update(status="complete", payment_status="paid", subscription=subscription)
        invoice = f"in_{subscription}"
        self.invoices.append({
            "id": invoice, "object": "invoice", "status": "paid", "amount_paid": amount,
            "parent": {"type": "subscription_details",
                       "subscription_details": {"subscription": subscription}}})
        self.invoice_payments.append({
            "id": f"inpay_{subscription}", "object": "invoice_payment", "invoice": invoice,
            "status": "paid", "is_default": True, "amount_paid": amount,
            "payment": {"type": "payment_intent", "payment_intent": f"pi_{subscription}"}})
        return True

    def received(self, method: str, path: str) -> list[dict]:
        """The forms of the requests received with this method and path."""
        return [form for m, p, form, _ in self.requests if (m, p) == (method, path)]


@pytest.fixture
def stripe_stand_in():
    """A ``StripeStandIn`` on a free port; stopped after the test."""
    fake = StripeStandIn()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def stripe_app(make_config, stripe_stand_in):
    """``(app, stand_in)``: an app with the stripe provider talking to the stand-in
    (``STRIPE_API_BASE``), prices ``premium=price_prem`` and ``pro=price_pro``, on the test
    database."""
    from sonicus.extensions import db

    app = create_app(make_config(BILLING_PROVIDER="stripe", STRIPE_API_KEY="sk_test_123",
                                 STRIPE_PRICE_IDS=["premium=price_prem", "pro=price_pro"],
                                 STRIPE_API_BASE=stripe_stand_in.base))
    yield app, stripe_stand_in
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # its connections go now, not whenever the app is collected


# ---- time ------------------------------------------------------------------------------------

@pytest.fixture
def set_clock(monkeypatch):
    """``set_clock(moment)`` → ``moment``, which the app's one clock (``sonicus.clock.now``)
    reads from then on; call again to move time. Undone after the test."""

    def set_to(moment: datetime) -> datetime:
        monkeypatch.setattr(clock, "now", lambda: moment)
        return moment

    return set_to


@pytest.fixture
def sql_statements():
    """``sql_statements(app, action)`` → the SQL statements ``action()`` sent through the
    app's engine, in order."""
    from sqlalchemy import event

    from sonicus.extensions import db

    def run(app, action) -> list[str]:
        with app.app_context():
            engine = db.engine
        statements = []

        def record(conn, cursor, statement, *args):
            statements.append(statement)

        event.listen(engine, "before_cursor_execute", record)
        try:
            action()
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return statements

    return run


# ---- waiting for asynchronous work -----------------------------------------------------------

@pytest.fixture
def wait_for():
    """``wait_for(predicate, timeout=5)`` → the predicate's first truthy value, polled every
    20 ms; fails the test if there is none within ``timeout`` seconds."""

    def wait(predicate, timeout=5.0, interval=0.02):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")
            time.sleep(interval)

    return wait


# ---- servers of our own ----------------------------------------------------------------------

class LiveServer:
    """One web process (``python -m tests.live_server``) on a free port it picks itself."""

    def __init__(self, env: dict):
        full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.live_server"], cwd=ROOT,
                                     env=full_env, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"live server did not start: {line!r}")
        self.port = int(line.split()[1])

    def ws_url(self, path="/ws/analytics") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http_url(self, path) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def two_web_processes(idp):
    """Two real web processes on free ports, on the test database and Redis."""
    env = {"SONICUS_ENV": "testing", "DATABASE_URL": TEST_DATABASE_URL,
           "REDIS_URL": TEST_REDIS_URL, "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": AUDIENCE,
           "OIDC_JWKS_MIN_REFRESH_SECONDS": "0", "RATELIMIT_ENABLED": "false",
           "DEV_TOKEN_ISSUER": "false", "LOG_LEVEL": "WARNING",
           "BILLING_WEBHOOK_SECRET": WEBHOOK_SECRET}
    servers = [LiveServer(env), LiveServer(env)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def socket_process(idp, tmp_path):
    """``socket_process(**env)`` → (process, port, path of its output): one socket process
    (``SONICUS_PROCESS=ws``: gunicorn's gevent worker, started the production way) on the test
    database and Redis db, ``env`` added to its environment; killed after the test."""
    started = []

    def start(**extra):
        port = free_port()
        output = tmp_path / f"ws-{port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SONICUS_ENV": "testing",
               "SONICUS_PROCESS": "ws", "SONICUS_WS_BIND": f"127.0.0.1:{port}",
               "DATABASE_URL": TEST_DATABASE_URL, "REDIS_URL": TEST_REDIS_URL,
               "OIDC_ISSUER": idp.issuer, "OIDC_AUDIENCE": "sonicus-test",
               "RATELIMIT_ENABLED": "false", "DEV_TOKEN_ISSUER": "false",
               "LOG_LEVEL": "WARNING", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
               **extra}
        with open(output, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc)
        return proc, port, output

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


class InProcessServer:
    """A Flask app served on a thread of the test process (to look inside its registries)."""

    def __init__(self, flask_app):
        self.app = flask_app
        self.server = make_server("127.0.0.1", 0, flask_app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path="/ws/analytics"):
        return f"ws://127.0.0.1:{self.server.server_port}{path}"

    def http_url(self, path):
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def serve_in_process():
    """``serve_in_process(flask_app)`` → an ``InProcessServer``; stopped after the test (or
    earlier, by ``server.stop()``)."""
    servers = []

    def serve(flask_app):
        server = InProcessServer(flask_app)
        servers.append(server)
        return server

    yield serve
    for server in servers:
        server.stop()


class RedisServer:
    """A throwaway redis-server of our own, to stop and start at will."""

    def __init__(self):
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                redis_lib.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis_lib.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis():
    """A redis-server of the test's own (not the shared one), running; ``.stop()`` and
    ``.start()`` it at will."""
    server = RedisServer().start()
    yield server
    server.stop()


# ---- WebSockets ------------------------------------------------------------------------------

class Socket(websocket.WebSocket):
    """A client WebSocket with the reads the realtime tests need."""

    def receive_json(self):
        opcode, data = self.recv_data(control_frame=False)
        return json.loads(data)

    def close_code(self) -> int:
        """Read until the server's close frame; its status code."""
        while True:
            opcode, data = self.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return struct.unpack("!H", data[:2])[0]

    def nothing_arrives(self, seconds=1.0) -> bool:
        timeout = self.gettimeout()
        self.settimeout(seconds)
        try:
            self.recv()
        except websocket.WebSocketTimeoutException:
            return True
        finally:
            self.settimeout(timeout)
        return False


@pytest.fixture
def connect_ws():
    """``connect_ws(url, token=None, subprotocol=False)`` → a connected ``Socket``; the token
    goes in the query string, or as the ``bearer`` subprotocol. Closed after the test."""
    sockets = []

    def connect(url, token=None, *, subprotocol=False, timeout=10):
        ws = Socket()
        sockets.append(ws)
        ws.settimeout(timeout)
        if token and subprotocol:
            ws.connect(url, subprotocols=["bearer", token])
        elif token:
            ws.connect(f"{url}?access_token={token}")
        else:
            ws.connect(url)
        return ws

    yield connect
    for ws in sockets:
        ws.shutdown()  # whatever the test left open; no closing handshake to wait for


# ---- Web Push: a push service on 127.0.0.1 and browsers with real keys ----------------------

PUSH_VAPID_KEY = "4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4"


@pytest.fixture
def push_service():
    """A push service stand-in (``tests/push_service.py``) on a free port of 127.0.0.1: checks
    each post's VAPID JWT, answers 201 or what ``answer(endpoint, 410, ...)`` queued;
    ``posts_to(endpoint)`` → what it received. Stopped after the test."""
    from tests.push_service import PushServiceStandIn

    stand_in = PushServiceStandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def browser():
    """``browser(endpoint)`` → a ``Browser``: a W3C PushSubscription with its own P-256 key
    pair and auth secret (``subscription()``), that decrypts what it is sent
    (``decrypt(body)``)."""
    from tests.push_service import Browser

    return Browser


@pytest.fixture(scope="session")
def push_app(app, idp):
    """An app that may post to a push service on ``http://127.0.0.1:`` (besides the browsers'
    own), with a fixed VAPID key and quick retries (0 s, then 1 s); the test database and
    Redis db."""
    from sonicus.extensions import db

    push = create_app(_config(idp, VAPID_PRIVATE_KEY=PUSH_VAPID_KEY,
                              WEBPUSH_ALLOWED_ENDPOINTS=["https://fcm.googleapis.com/",
                                                         "http://127.0.0.1:"],
                              WEBPUSH_RETRY_SECONDS=[0, 1],
                              SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 8}))
    _SESSION_APPS.append(push)
    yield push
    with push.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def push_client(push_app):
    """A test client of ``push_app``, with its caches emptied (the tables were emptied)."""
    push_app.extensions.pop("sonicus_memory_cache", None)
    get_caller_cache(push_app).clear()
    return push_app.test_client()
