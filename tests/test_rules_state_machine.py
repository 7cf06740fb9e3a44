"""The rules under any sequence of actions: a Hypothesis state machine drives the API (the test
client, PostgreSQL, an injected clock) for several users at once and, after every step, holds the
stored state against the pure model in rules_model.py.

CI runs a fixed budget; ``python -m bench.rules_soak`` runs it for as long as one likes
(``RULES_EXAMPLES`` and ``RULES_STEPS`` set the budget here too).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from rules_model import (
    DAILY_SESSIONS,
    LEVELS,
    DaySettings,
    SessionRow,
    completion_violations,
    derive_from_events,
    mood_outcomes,
)
from rules_model import quota_violations as quota_problems
from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from sonicus import clock
from sonicus.caller_cache import get_caller_cache
from sonicus.extensions import db
from sonicus.models import (
    ListeningSession,
    SoundPackage,
    SubscriptionEvent,
    Track,
    User,
    UserAnalytics,
    UserPackageOutcome,
    UserSubscription,
)
from sonicus.services.analytics import compute_user_analytics
from sonicus.services.subscriptions import process_due_subscriptions

IDENTITIES = ("ana", "ben")
TIMEZONES = ("UTC", "Etc/GMT+12", "Etc/GMT-12", "Pacific/Auckland", "America/Los_Angeles")
# A new UTC date while it is still yesterday out west; US daylight saving starts a day later.
START = datetime(2026, 3, 7, 3, 30, tzinfo=UTC)
EXAMPLES = int(os.environ.get("RULES_EXAMPLES", "100"))
STEPS = int(os.environ.get("RULES_STEPS", "30"))
DERANDOMIZE = not os.environ.get("RULES_RANDOM")  # CI explores the same sequences every run


class Identity:
    """One person at the identity provider: a token, and what the model knows of them."""

    def __init__(self, name, token):
        self.name, self.token = name, token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.user_id = None          # the current account (None before sign-in, after erasure)
        self.days = DaySettings()
        self.trials_started = 0      # ever, across erasures


def build_machine(app, idp, table_names, billing):
    client = app.test_client()
    admin = {"Authorization": "Bearer " + idp.token(
        email="admin@example.com", groups=("sonicus-user", "sonicus-super-admin"))}

    class RulesMachine(RuleBasedStateMachine):
        sessions = Bundle("sessions")

        def __init__(self):
            super().__init__()
            self.now = START
            clock.now = lambda: self.now
            with app.app_context():
                with db.engine.begin() as conn:
                    conn.execute(text(f"TRUNCATE {', '.join(table_names)} "
                                      "RESTART IDENTITY CASCADE"))
                self.packages = _seed_packages()
            get_caller_cache(app).clear()  # the tables were emptied behind the app's back
            app.extensions.pop("sonicus_memory_cache", None)
            self.webhooks = 0
            self.assignments = {}  # (user id, level) -> expires_at (None: no end)
            self.people = {name: Identity(name, idp.token(email=f"{name}@example.com"))
                           for name in IDENTITIES}

        # ---- the API, always enveloped, never 5xx ------------------------------------------
        def call(self, method, path, headers=None, **kwargs):
            res = client.open(path, method=method, headers=headers, **kwargs)
            body = res.get_json(silent=True)
            assert res.status_code < 500, (method, path, res.status_code, body)
            assert isinstance(body, dict) and set(body) >= {"success", "data", "errors"}, body
            if res.status_code >= 400:
                assert body["success"] is False and body["errors"], body
            return res.status_code, body

        def person(self, name):
            person = self.people[name]
            if person.user_id is None:
                status, body = self.call("GET", "/api/user/profile", person.headers)
                assert status == 200, body
                person.user_id = body["data"]["id"]
                person.days = DaySettings()
            return person

        # ---- time ------------------------------------------------------------------------
        @rule(seconds=st.sampled_from([5, 40, 90, 600, 3600, 5 * 3600, 86400, 3 * 86400,
                                       15 * 86400, 32 * 86400]))
        def time_passes(self, seconds):
            self.now += timedelta(seconds=seconds)

        # ---- profile ---------------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES))
        def sign_in(self, name):
            self.person(name)

        @rule(name=st.sampled_from(IDENTITIES), tz=st.sampled_from(TIMEZONES),
              hour=st.integers(0, 6))
        def change_day_settings(self, name, tz, hour):
            person = self.person(name)
            status, body = self.call("PUT", "/api/user/profile", person.headers,
                                     json={"timezone": tz, "day_start_hour": hour})
            if status == 403:
                return  # suspended
            assert status == 200, body
            person.days.change(self.now, tz, hour)
            data = body["data"]
            assert (data["timezone"], data["day_start_hour"]) == (tz, hour)
            assert (data["timezone"], data["day_start_hour"]) == person.days.shown()

        @rule(name=st.sampled_from(IDENTITIES))
        def erase(self, name):
            person = self.person(name)
            status, body = self.call("DELETE", "/api/user/profile", person.headers)
            if status == 403:
                return
            assert status == 200, body
            person.user_id = None

        # ---- listening -------------------------------------------------------------------
        @rule(target=sessions, name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["public", "premium", "pro_exclusive"]),
              mood=st.none() | st.integers(1, 10))
        def start(self, name, level, mood):
            person = self.person(name)
            tier, active = self.tier_of(person)
            status, body = self.call("POST", "/api/user/sessions", person.headers,
                                     json={"package_id": self.packages[level],
                                           "mood_before": mood})
            assert status in (201, 403, 429), body
            if active:
                opens = level in LEVELS[tier] or self.assigned(person, level)
                assert (status == 403) == (not opens), (tier, level, status, body)
                if status == 429:  # refused only when the model's day is really full
                    used = sum(1 for r in self.rows(person) if r.counts_toward_quota
                               and person.days.day_of(r.started_at)
                               == person.days.day_of(self.now))
                    assert used >= DAILY_SESSIONS[tier], (used, tier)
            return (name, body["data"]["id"]) if status == 201 else (name, None)

        @rule(name=st.sampled_from(IDENTITIES), count=st.integers(2, 4))
        def starts_in_a_row(self, name, count):
            """Several starts at once: what a user racing the daily limit does."""
            for _ in range(count):
                self.start(name, "public", None)

        @rule(name=st.sampled_from(IDENTITIES), tz=st.sampled_from(TIMEZONES),
              hour=st.integers(0, 6))
        def move_and_start(self, name, tz, hour):
            """A new day setting, then as many starts as a day allows: the quota attack."""
            self.change_day_settings(name, tz, hour)
            self.starts_in_a_row(name, 3)

        def tier_of(self, person):
            with app.app_context():
                user = db.session.get(User, person.user_id)
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one()
                found = (sub.tier, user.is_active)
                db.session.remove()
            return found

        def assigned(self, person, level):
            expires = self.assignments.get((person.user_id, level), False)
            return expires is None or (expires is not False and expires > self.now)

        def rows(self, person) -> list[SessionRow]:
            with app.app_context():
                found = [_row(s) for s in db.session.execute(
                    select(ListeningSession).where(ListeningSession.user_id == person.user_id)
                ).scalars()]
                db.session.remove()
            return found

        @rule(session=sessions, claim=st.sampled_from(["honest", "inflated", "tap"]),
              mood=st.none() | st.integers(1, 10), finish=st.booleans())
        def end(self, session, claim, mood, finish):
            name, session_id = session
            person = self.people[name]
            if session_id is None or person.user_id is None:
                return
            row = self.session_row(session_id)
            if row is None:
                return
            elapsed = int((self.now - row.started_at).total_seconds())
            listened = {"honest": elapsed, "inflated": 100000, "tap": 3}[claim]
            if finish:
                status, body = self.call(
                    "POST", f"/api/user/sessions/{session_id}/complete", person.headers,
                    json={"listened_seconds": listened, "completed": claim != "tap",
                          "mood_after": mood})
                assert status in (200, 403, 404, 409), body
                if status == 200:
                    self.check_stored_analytics(person)
            else:
                status, body = self.call("PATCH", f"/api/user/sessions/{session_id}",
                                         person.headers, json={"listened_seconds": listened})
                assert status in (200, 403, 404, 409), body

        @rule(session=sessions, other=st.sampled_from(IDENTITIES))
        def someone_else_tries(self, session, other):
            """Another user's session id is 404 and changes nothing."""
            owner, session_id = session
            if session_id is None or owner == other:
                return
            intruder = self.person(other)
            before = self.session_row(session_id)
            for method, suffix, body in (("GET", "", None),
                                         ("PATCH", "", {"listened_seconds": 10}),
                                         ("POST", "/complete", {"listened_seconds": 10,
                                                                "completed": True})):
                status, _ = self.call(method, f"/api/user/sessions/{session_id}{suffix}",
                                      intruder.headers, json=body)
                assert status in (404, 403), (method, status)
            assert self.session_row(session_id) == before

        # ---- the subscription --------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES), tier=st.sampled_from(["premium", "pro"]))
        def start_trial(self, name, tier):
            person = self.person(name)
            status, body = self.call("POST", "/api/user/subscription", person.headers,
                                     json={"tier": tier, "start_trial": True})
            assert status in (200, 403, 409), body
            if status == 200:
                person.trials_started += 1

        @rule(name=st.sampled_from(IDENTITIES), tier=st.sampled_from(["starter", "premium",
                                                                     "pro"]),
              pay=st.booleans())
        def choose_tier(self, name, tier, pay):
            person = self.person(name)
            status, body = self.call("POST", "/api/user/subscription", person.headers,
                                     json={"tier": tier})
            assert status in (200, 402, 403, 409), body
            checkout = (body["data"] or {}).get("checkout") if status == 200 else None
            if pay and checkout:
                status, body = self.call("POST",
                                         f"/api/billing/sandbox/{checkout['reference']}/confirm")
                assert status in (200, 404), body

        @rule(name=st.sampled_from(IDENTITIES))
        def cancel(self, name):
            person = self.person(name)
            status, body = self.call("DELETE", "/api/user/subscription", person.headers)
            assert status in (200, 403, 409), body

        @rule(name=st.sampled_from(IDENTITIES))
        def resume(self, name):
            person = self.person(name)
            status, body = self.call("POST", "/api/user/subscription/resume", person.headers)
            assert status in (200, 403, 409), body

        @rule(name=st.sampled_from(IDENTITIES), paid=st.booleans())
        def renewal_webhook(self, name, paid):
            """The provider's invoice for the period that follows the current one."""
            person = self.people[name]
            if person.user_id is None:
                return
            with app.app_context():
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one()
                start, tier = sub.current_period_end, sub.tier
                db.session.remove()
            if start is None or tier == "starter":
                return
            self.webhooks += 1
            event = billing.invoice_event(
                f"evt_{self.webhooks}", "invoice.paid" if paid else "invoice.payment_failed",
                user_id=person.user_id, tier=tier, period_start=start,
                period_end=start + timedelta(days=30), created=self.now)
            status, body = self.call_webhook(event)
            assert status == 200, body

        def call_webhook(self, event):
            res = billing.post_webhook(client, event)
            body = res.get_json(silent=True)
            assert res.status_code < 500 and isinstance(body, dict), (res.status_code, body)
            return res.status_code, body

        @rule()
        def expiry_job_runs(self):
            with app.app_context():
                process_due_subscriptions(now=self.now)
                db.session.remove()
            self.check_no_deadline_left_behind()

        # ---- administrators ----------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES), tier=st.sampled_from(["starter", "premium",
                                                                     "pro"]))
        def admin_grants(self, name, tier):
            person = self.person(name)
            status, body = self.call("PATCH", f"/api/admin/users/{person.user_id}", admin,
                                     json={"tier": tier})
            assert status == 200, body

        @rule(name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["premium", "pro_exclusive"]),
              days=st.none() | st.integers(1, 40))
        def admin_assigns(self, name, level, days):
            person = self.person(name)
            expires = None if days is None else self.now + timedelta(days=days)
            payload = {"package_id": self.packages[level]}
            if expires is not None:
                payload["expires_at"] = expires.isoformat()
            status, body = self.call("POST", f"/api/admin/users/{person.user_id}/packages",
                                     admin, json=payload)
            assert status in (200, 201), body
            self.assignments[(person.user_id, level)] = expires

        @rule(name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["premium", "pro_exclusive"]))
        def admin_revokes(self, name, level):
            person = self.person(name)
            status, body = self.call(
                "DELETE", f"/api/admin/users/{person.user_id}/packages/{self.packages[level]}",
                admin)
            live = self.assigned(person, level)
            assert status == (200 if live else 404), (status, body, live)
            self.assignments.pop((person.user_id, level), None)

        @rule(name=st.sampled_from(IDENTITIES), active=st.booleans())
        def admin_suspends(self, name, active):
            person = self.person(name) if self.people[name].user_id is None or active \
                else self.people[name]
            status, body = self.call("PATCH", f"/api/admin/users/{person.user_id}", admin,
                                     json={"is_active": active})
            assert status == 200, body
            if not active:
                status, body = self.call("GET", "/api/user/profile", person.headers)
                assert status == 403 and body["code"] == "account_suspended", body

        # ---- what is stored ----------------------------------------------------------------
        def session_row(self, session_id) -> SessionRow | None:
            with app.app_context():
                session = db.session.get(ListeningSession, session_id)
                row = None if session is None else _row(session)
                db.session.remove()
            return row

        def check_stored_analytics(self, person):
            """Right after a completion refreshed them, the stored analytics equal a fresh
            computation from the rows, and the user's own figures behind their
            recommendations hold only the sessions that count (the model's rule)."""
            with app.app_context():
                stored = db.session.get(UserAnalytics, person.user_id)
                user = db.session.get(User, person.user_id)
                fresh = compute_user_analytics(user, self.now)
                outcomes = {o.package_id: (o.sessions, round(o.lift_sum))
                            for o in db.session.execute(select(UserPackageOutcome).where(
                                UserPackageOutcome.user_id == person.user_id)).scalars()}
                db.session.remove()
            assert stored is not None and stored.stale_since is None
            assert {k: v for k, v in stored.data.items() if k != "computed_at"} == \
                {k: v for k, v in fresh.items() if k != "computed_at"}
            assert outcomes == mood_outcomes(self.rows(person)), person.name

        def check_no_deadline_left_behind(self):
            with app.app_context():
                subs = db.session.execute(select(UserSubscription)).scalars().all()
                for sub in subs:
                    if sub.status == "trialing":
                        assert sub.trial_ends_at > self.now, sub.user_id
                    elif sub.status == "past_due":
                        assert sub.past_due_since + timedelta(days=3) > self.now
                    elif sub.tier != "starter" and not sub.complimentary:
                        assert sub.current_period_end is not None
                        assert sub.current_period_end > self.now - timedelta(days=3)
                db.session.remove()

        @invariant()
        def the_rules_hold(self):
            """After every step: quota per user day, completion from the server's time, one
            trial per identity, and the tier in force as the subscription's history tells it."""
            accounts = {p.user_id: p for p in self.people.values() if p.user_id is not None}
            with app.app_context():
                rows: dict[int, list[SessionRow]] = {uid: [] for uid in accounts}
                for session in db.session.execute(
                        select(ListeningSession)
                        .options(selectinload(ListeningSession.track),
                                 selectinload(ListeningSession.package))
                        .where(ListeningSession.user_id.in_(accounts))).scalars():
                    rows[session.user_id].append(_row(session))
                subs = {s.user_id: s for s in db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id.in_(accounts))).scalars()}
                events: dict[int, list[dict]] = {uid: [] for uid in accounts}
                for e in db.session.execute(select(SubscriptionEvent).where(
                        SubscriptionEvent.user_id.in_(accounts))
                        .order_by(SubscriptionEvent.id)).scalars():
                    events[e.user_id].append({"type": e.type, "to_tier": e.to_tier,
                                              "details": e.details})
                db.session.remove()
            for user_id, person in accounts.items():
                problems = quota_problems(rows[user_id], person.days)
                problems += completion_violations(rows[user_id])
                assert not problems, (person.name, problems)
                sub, derived = subs[user_id], derive_from_events(events[user_id])
                assert (sub.tier, sub.status, sub.pending_tier) == \
                    (derived.tier, derived.status, derived.pending_tier), \
                    (person.name, [e["type"] for e in events[user_id]])
            for person in self.people.values():
                assert person.trials_started <= 1, person.name

    return RulesMachine


def _row(session) -> SessionRow:
    content = session.track.duration_seconds if session.track is not None \
        else (session.package.duration_seconds or None)
    return SessionRow(session.id, session.started_at, session.ended_at, session.tier,
                      session.counts_toward_quota, session.completed, session.listened_seconds,
                      content, session.package_id, session.mood_before, session.mood_after)


def _seed_packages() -> dict[str, int]:
    ids = {}
    for level, minutes in (("public", 10), ("premium", 20), ("pro_exclusive", 30)):
        package = SoundPackage(slug=f"{level.replace('_', '-')}-pkg", title=level,
                               category="sleep", minimum_tier=level, published=True,
                               duration_seconds=minutes * 60, track_count=1, popularity=0)
        package.tracks.append(Track(position=0, title=level, duration_seconds=minutes * 60,
                                    media_path=f"{level}/one.mp3"))
        db.session.add(package)
        db.session.flush()
        ids[level] = package.id
    db.session.commit()
    return ids


def test_the_rules_hold_under_any_sequence_of_actions(idp, make_config, table_names, billing,
                                                      monkeypatch):
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL=None, LOG_LEVEL="WARNING"))  # jobs inline
    monkeypatch.setattr(clock, "now", clock.now)   # whatever the machine sets is undone
    machine = build_machine(app, idp, table_names, billing)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=DERANDOMIZE,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), database=None))


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
