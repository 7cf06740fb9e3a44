"""The rules under any sequence of actions: a Hypothesis state machine drives the API (the test
client, PostgreSQL, an injected clock) for several users at once and, after every step, holds the
stored state against the pure model in rules_model.py and rules_subscription.py.

CI runs a fixed budget; ``python -m bench.rules_soak`` runs it for as long as one likes
(``RULES_EXAMPLES`` and ``RULES_STEPS`` set the budget here too).
"""

from __future__ import annotations

import base64
import os
import unicodedata
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
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
    KeyedWrite,
    ReminderRow,
    SessionRow,
    completion_violations,
    mood_outcomes,
    offline_violations,
    refusal_status,
    reminder_violations,
    retry_violations,
    sessions_of_day,
    streak_figures,
)
from rules_model import quota_violations as quota_problems
from rules_subscription import (
    cancel_flag_violations,
    derive_from_events,
    dispute_won_violations,
    free_month_violations,
    grant_renewal_violations,
    purchase_violations,
    refund_amount_violations,
    refund_violations,
    renewal_period_violations,
    renewal_price_violations,
    renewal_violations,
    renewing_window_cancel_violations,
    repeated_cancellations,
    replaced_subscriptions_charging,
    restored_change_violations,
    tier_at,
    trial_shown_violations,
    trials_per_person,
    unmatched_refund_violations,
)
from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from sonicus import clock
from sonicus.billing.sandbox import SandboxProvider
from sonicus.cache import cache_get_raw
from sonicus.caller_cache import get_caller_cache
from sonicus.extensions import db
from sonicus.models import (
    ListeningSession,
    PushSubscription,
    ReminderDelivery,
    SoundPackage,
    SubscriptionEvent,
    Track,
    User,
    UserAnalytics,
    UserPackageOutcome,
    UserSubscription,
)
from sonicus.services import analytics_cache, idempotency, reminder_claims
from sonicus.services.analytics import compute_user_analytics
from sonicus.services.subscriptions import changes as subscription_changes
from sonicus.services.subscriptions import payments as subscription_payments
from sonicus.services.subscriptions import process_due_subscriptions
from sonicus.tiers import TIERS, can_access_level

IDENTITIES = ("ana", "ben")
# ana's second identity at the identity provider (same email): used by fixed sequences
SECOND_IDENTITY = "ana_second"
TIMEZONES = ("UTC", "Etc/GMT+12", "Etc/GMT-12", "Pacific/Auckland", "America/Los_Angeles")
# A new UTC date while it is still yesterday out west; US daylight saving starts a day later.
START = datetime(2026, 3, 7, 3, 30, tzinfo=UTC)
EXAMPLES = int(os.environ.get("RULES_EXAMPLES", "100"))
STEPS = int(os.environ.get("RULES_STEPS", "30"))
DERANDOMIZE = not os.environ.get("RULES_RANDOM")  # CI explores the same sequences every run


# Addresses the provider may move a person to (all verified): another person's, one two
# people share, and that one again in another Unicode form and case.
EMAILS = ("ana@example.com", "ben@example.com", "shared@example.com", "ＳＨＡＲＥＤ@Example.com")


def email_form(email: str) -> str:
    """The model's one form of an address (the app compares its own ``email_key``)."""
    return unicodedata.normalize("NFKC", email).casefold()


class Identity:
    """One person at the identity provider: a token, and what the model knows of them."""

    def __init__(self, name, token, email=None):
        self.name, self.token = name, token
        self.email = email or f"{name}@example.com"
        self.emails = {email_form(self.email)}  # every one it was verified with, ever
        self.headers = {"Authorization": f"Bearer {token}"}
        self.user_id = None          # the current account (None before sign-in, after erasure)
        self.days = DaySettings()
        self.trials_started = 0      # ever, across erasures
        self.keyed = None            # the last start sent with an Idempotency-Key
        self.remind_minute = None    # the reminder time asked for (None: no reminders)
        self.claimed_for = {}        # (user id, user day) claimed -> remind_minute at the claim
        self.claim_ids = {}          # (user id, user day) claimed -> the delivery's id
        self.trial_checkout = None   # (reference, tier) of the last checkout opened in a trial
        self.has_had_an_account = False  # its addresses link others (live or erased)


def build_machine(app, idp, table_names, billing, cancels, prices):
    """``cancels``: every provider subscription id the provider is asked to cancel at once
    (filled by ``recording_cancels``); ``prices``: the tier each user's provider
    subscription renews at, where known (filled by ``recording_prices``)."""
    client = app.test_client()
    admin = {"Authorization": "Bearer " + idp.token(
        email="admin@example.com", groups=("sonicus-user", "sonicus-super-admin"))}
    admins = {email: {"Authorization": "Bearer " + idp.token(
        email=email, groups=("sonicus-user", "sonicus-super-admin"))}
        for email in ("admin@example.com", "second-admin@example.com")}

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
            self.provider_ids = 0
            cancels.clear()
            prices.clear()
            self.keys = 0
            self.uploaded_at = {}  # session id -> when the batch that stored it was posted
            self.assignments = {}  # (user id, level) -> expires_at (None: no end)
            self.people = {name: Identity(name, idp.token(email=f"{name}@example.com"))
                           for name in IDENTITIES}
            # a second identity of ana at the provider (its own account here), same email
            self.people[SECOND_IDENTITY] = Identity(
                SECOND_IDENTITY, idp.token(email="ana@example.com", sub="sub-ana-second"),
                email="ana@example.com")
            self.trials_by_email = {}  # address -> trials started by accounts verified with it
            self.running = {}   # user id -> the provider subscription id last seen on the row
            self.replaced = []  # (older, newer) provider subscription ids, as the row changed
            self.charges = {}   # user id -> [(charge id, the period end it paid)], in order
            # refunds made at the provider: charge id -> its refunds, newest first ({id,
            # amount}); the notices it holds back (delivered late, newest first:
            # ``late_refund_notices_arrive``); the refunds notified, by id -> own amount
            self.refunds_made = {}
            self.late_refund_notices = []
            self.refunds_notified = {}
            self.ended_at_provider = set()  # provider subscription ids the provider ended
            self.given_back = {}  # user id -> the end of a period a won dispute gave back

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
                person.has_had_an_account = True
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
            """What a user is shown is the tier in force, before the expiry job has run."""
            person = self.person(name)
            expected, active = self.tier_of(person)
            status, body = self.call("GET", "/api/user/subscription", person.headers)
            if active:
                assert status == 200 and body["data"]["tier"] == expected, (expected, body)

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

        # ---- reminders -------------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES), hour=st.integers(0, 23),
              origin=st.sampled_from(PUSH_ORIGIN_SPELLINGS))
        def wants_reminders(self, name, hour, origin):
            person = self.person(name)
            status, body = self.call("POST", "/api/user/push-subscriptions", person.headers,
                                     json=_subscription(name, origin))
            if status == 403:
                return  # suspended
            assert status in (200, 201), body
            status, body = self.call("PUT", "/api/user/reminders", person.headers,
                                     json={"enabled": True, "time": f"{hour:02d}:00"})
            assert status == 200, body
            person.remind_minute = hour * 60

        @rule(name=st.sampled_from(IDENTITIES))
        def turns_reminders_off(self, name):
            """Off (and on again by ``wants_reminders``, maybe within the hour): the day
            claimed stays claimed, one reminder per user day whatever the toggling."""
            person = self.person(name)
            status, body = self.call("PUT", "/api/user/reminders", person.headers,
                                     json={"enabled": False})
            if status == 403:
                return  # suspended
            assert status == 200, body

        @rule()
        def reminder_scan_runs(self):
            accounts = {p.user_id: p for p in self.people.values() if p.user_id is not None}
            with app.app_context():
                reminder_claims.claim_due_reminders(self.now)
                claimed = db.session.execute(
                    select(ReminderDelivery.user_id, ReminderDelivery.local_day,
                           ReminderDelivery.id)
                    .where(ReminderDelivery.user_id.in_(accounts))).all()
                db.session.remove()
            for user_id, day, delivery_id in claimed:  # the time asked for at the claim
                person = accounts[user_id]
                person.claimed_for.setdefault((user_id, day), person.remind_minute)
                # a user day is claimed once: never forgotten and claimed again (off, on)
                first = person.claim_ids.setdefault((user_id, day), delivery_id)
                assert first == delivery_id, ("claimed again", person.name, day)

        @rule(name=st.sampled_from(IDENTITIES))
        def erase(self, name):
            person = self.person(name)
            status, body = self.call("GET", "/api/user/export", person.headers)
            if status == 200:  # what is erased was in the export: the assignments too
                exported = {a["package_id"] for a in body["data"]["assignments"]}
                given = {self.packages[level] for (user_id, level) in self.assignments
                         if user_id == person.user_id}
                assert given <= exported, (given, exported)
            self.keys += 1
            headers = {**person.headers, "Idempotency-Key": f"erase-{self.keys}"}
            status, body = self.call("DELETE", "/api/user/profile", headers)
            if status == 403:
                return
            assert status == 200, body
            erased = person.user_id
            person.user_id, person.remind_minute = None, None
            # Its answer lost: the retry is that answer again, and signs nobody up.
            with app.app_context():
                idempotency.settle_answers()
            res = client.delete("/api/user/profile", headers=headers)
            assert res.status_code == 200 and res.get_json() == body, res.get_json()
            assert res.headers.get("Idempotent-Replayed") == "true"
            with app.app_context():
                account = db.session.execute(select(User.id).where(
                    User.oidc_sub == f"sub-{name}@example.com")).scalar_one_or_none()
                db.session.remove()
                # nothing of the account's figures stays cached once it is gone
                assert cache_get_raw(analytics_cache.cache_key(erased)) is None, name
            assert account is None, ("an erasure's retry signed up", name)

        # ---- listening -------------------------------------------------------------------
        @rule(target=sessions, name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["public", "premium", "pro_exclusive"]),
              mood=st.none() | st.integers(1, 10))
        def start(self, name, level, mood):
            person = self.person(name)
            tier, active = self.tier_of(person)
            awaiting = self.awaiting_payment(person)
            status, body = self.call("POST", "/api/user/sessions", person.headers,
                                     json={"package_id": self.packages[level],
                                           "mood_before": mood})
            assert status in (201, 402, 403, 429), body
            if active:
                opens = level in LEVELS[tier] or self.assigned(person, level)
                assert (status in (402, 403)) == (not opens), (tier, level, status, body)
                if not opens:  # 402 when the tier whose payment is awaited would open it
                    assert status == refusal_status(awaiting, lambda t: level in LEVELS[t]), \
                        (tier, awaiting, level, status, body)
                if status == 429:  # refused only when the model's day is really full
                    used = sum(1 for r in self.rows(person) if r.counts_toward_quota
                               and person.days.day_of(r.started_at)
                               == person.days.day_of(self.now))
                    assert used >= DAILY_SESSIONS[tier], (used, tier)
                if status == 201:  # judged, and recorded, by the tier in force
                    assert body["data"]["tier"] == tier, (tier, body)
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

        # ---- retry-safe writes ------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES), level=st.sampled_from(["public", "premium"]))
        def start_with_a_key(self, name, level):
            """A start sent with an Idempotency-Key whose answer is lost: retried at once (and
            maybe again later, by ``retry_keyed_start``)."""
            person = self.person(name)
            self.keys += 1
            headers = {**person.headers, "Idempotency-Key": f"start-{self.keys}"}
            payload = {"package_id": self.packages[level]}
            self.send_keyed_start(person, headers, payload)
            self.retry_keyed_start(name)

        @rule(name=st.sampled_from(IDENTITIES))
        def retry_keyed_start(self, name):
            """The last keyed start again: within 24 h, by the same account, the first answer
            is replayed and the quota count is unchanged (rules_model.retry_violations)."""
            person = self.people[name]
            if person.keyed is None:
                return
            headers, payload, first = person.keyed
            person = self.person(name)
            before = len(self.rows(person))
            res = self.send_keyed_start(person, headers, payload, record=False)
            if res is None:
                return
            problems = retry_violations(first, self.now, person.user_id, res.status_code,
                                        res.get_data(), res.headers.get("Idempotent-Replayed")
                                        == "true", before, len(self.rows(person)),
                                        res.headers.get("Retry-After"))
            assert not problems, problems
            if res.headers.get("Idempotent-Replayed") is None:  # a new write: its key now
                person.keyed = (headers, payload, KeyedWrite(self.now, person.user_id,
                                                             res.status_code, res.get_data()))

        def send_keyed_start(self, person, headers, payload, *, record=True):
            res = client.post("/api/user/sessions", headers=headers, json=payload)
            body = res.get_json(silent=True)
            assert res.status_code in (201, 402, 403, 404, 429), (res.status_code, body)
            if body.get("code") == "account_suspended":  # refused before the key is read
                assert "Idempotent-Replayed" not in res.headers
                return None
            if record:
                assert "Idempotent-Replayed" not in res.headers
                person.keyed = (headers, payload, KeyedWrite(self.now, person.user_id,
                                                             res.status_code, res.get_data()))
            return res

        def tier_of(self, person):
            with app.app_context():
                user = db.session.get(User, person.user_id)
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one()
                found = (tier_at(sub, self.now), user.is_active)
                db.session.remove()
            return found

        def awaiting_payment(self, person):
            """The tier chosen whose payment has not arrived (a checkout pending), or None."""
            sub = self.subscription_row(person)
            return sub.checkout_tier if sub.status == "incomplete" else None

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
            listened = {"honest": min(elapsed, 7 * 24 * 3600), "inflated": 100000,
                        "tap": 3}[claim]  # a claim is at most a week (the schema's bound)
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
                                         person.headers, json={"listened_seconds": listened,
                                                               "position_seconds": 30})
                assert status in (200, 403, 404, 409), body

        @rule(name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["public", "premium"]),
              ago=st.sampled_from([300, 3600, 5 * 3600, 86400, 3 * 86400, 20 * 86400]),
              minutes=st.sampled_from([0.5, 5, 25]), count=st.integers(1, 4),
              spacing=st.sampled_from([0.5, 1, 2]), retry=st.booleans())
        def sync_offline(self, name, level, ago, minutes, count, spacing, retry):
            """A batch of sessions played offline, uploaded later (perhaps twice)."""
            person = self.person(name)
            first = self.now - timedelta(seconds=ago)
            items = []
            for index in range(count):
                started = first + timedelta(minutes=index * minutes * spacing)
                items.append({"client_id": str(uuid.uuid4()),
                              "package_id": self.packages[level],
                              "started_at": started.isoformat(),
                              "ended_at": (started + timedelta(minutes=minutes)).isoformat(),
                              "listened_seconds": int(minutes * 60) + 30,
                              "completed": True})
            status, body = self.call("POST", "/api/user/sessions/sync", person.headers,
                                     json={"sessions": items})
            if status == 403:
                return  # suspended
            assert status == 200, body
            results = body["data"]["results"]
            assert [r["client_id"] for r in results] == [i["client_id"] for i in items]
            for result in results:
                assert result["status"] in ("created", "rejected"), result
                if result["status"] == "created":
                    self.uploaded_at[result["session_id"]] = self.now
            if ago > 14 * 86400:
                assert all(r.get("code") == "started_at_out_of_range" for r in results)
            if retry:
                status, again = self.call("POST", "/api/user/sessions/sync", person.headers,
                                          json={"sessions": items})
                assert status == 200, again
                for before, after in zip(results, again["data"]["results"], strict=True):
                    if before["status"] == "created":
                        assert (after["status"], after["session_id"]) == \
                            ("unchanged", before["session_id"])
                    else:
                        assert after["status"] == "rejected", (before, after)

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
            used = self.trial_used_by(person)
            status, body = self.call("POST", "/api/user/subscription", person.headers,
                                     json={"tier": tier, "start_trial": True})
            assert status in (200, 403, 409), body
            if status == 200:
                # one trial per person: no account linked to it through shared addresses,
                # however far, used one
                assert not used, (name, person.emails)
                person.trials_started += 1
                for email in self.addresses_of_the_person(person):
                    self.trials_by_email[email] = self.trials_by_email.get(email, 0) + 1

        def addresses_of_the_person(self, person) -> set[str]:
            """Every address of the accounts linked to this one through shared addresses,
            however many links away (A and B share one, B and C another: one person), live
            or erased."""
            emails, grown = set(person.emails), True
            while grown:
                linked = [p.emails for p in self.people.values()
                          if p.has_had_an_account and p.emails & emails]
                grown = not set().union(*linked) <= emails
                emails = emails.union(*linked)
            return emails

        def trial_used_by(self, person) -> bool:
            """An account of the person (itself included, across erasures) used the trial
            (``rules_subscription.trials_per_person``)."""
            emails = self.addresses_of_the_person(person)
            return any(p.trials_started for p in self.people.values() if p.emails & emails)

        @rule(name=st.sampled_from(IDENTITIES), email=st.sampled_from(EMAILS))
        def the_provider_changes_the_email(self, name, email):
            """The provider's claims move the person to another verified address: the ones
            before still count for the trial."""
            person = self.person(name)
            person.token = idp.token(email=email, sub=f"sub-{name}@example.com")
            person.headers = {"Authorization": f"Bearer {person.token}"}
            person.email = email
            person.emails.add(email_form(email))
            status, body = self.call("GET", "/api/user/profile", person.headers)
            assert status in (200, 403), body

        @rule(name=st.sampled_from(IDENTITIES), tier=st.sampled_from(["starter", "premium",
                                                                     "pro"]),
              pay=st.booleans())
        def choose_tier(self, name, tier, pay):
            """Nothing is charged again for a tier the user has, pays for or is given
            (rules_subscription.purchase_violations)."""
            person = self.person(name)
            before = self.subscription_row(person)
            in_force, active = self.tier_of(person)
            status, body = self.call("POST", "/api/user/subscription", person.headers,
                                     json={"tier": tier})
            assert status in (200, 402, 403, 409), body
            checkout = (body["data"] or {}).get("checkout") if status == 200 else None
            if active and in_force == before.tier:  # no deadline passed unwritten
                paid_period = before.status == "active" and before.tier != "starter" \
                    and before.payment_method_on_file \
                    and before.current_period_end is not None \
                    and before.current_period_end > self.now
                problems = purchase_violations(in_force, before.status, before.complimentary,
                                               tier, status, checkout and checkout["tier"],
                                               paid_period)
                assert not problems, (person.name, problems, body)
            if checkout and before.status == "trialing":
                person.trial_checkout = (checkout["reference"], checkout["tier"])
            if pay and checkout:
                status, body = self.call("POST",
                                         f"/api/billing/sandbox/{checkout['reference']}/confirm")
                assert status in (200, 404), body

        @rule(name=st.sampled_from(IDENTITIES))
        def cancel(self, name):
            """A cancel never takes away a day paid for: under a grant over a period the user
            paid for, the granted tier stays until that period's end."""
            person = self.person(name)
            before = self.paid_period_under_grant(person)
            sub = self.subscription_row(person)
            in_window = sub.status == "active" and sub.payment_method_on_file \
                and not sub.complimentary and sub.tier != "starter" \
                and sub.current_period_end is not None and sub.current_period_end <= self.now \
                and tier_at(sub, self.now) == sub.tier and sub.provider != "sandbox"
            # (this machine's provider is the sandbox, which renews itself at the period's
            # end: the window arises with Stripe, test_billing_renewal covers it)
            status, body = self.call("DELETE", "/api/user/subscription", person.headers)
            assert status in (200, 403, 409), body
            after = self.subscription_row(person)
            problems = renewing_window_cancel_violations(
                in_window, status, sub.tier, after.tier, after.cancel_at_period_end)
            assert not problems, (person.name, problems)
            if before is not None and status == 200:
                data = body["data"]
                assert (data["tier"], data["complimentary"], data["cancel_at_period_end"]) \
                    == (before[0], True, True), (person.name, data)
                shown = datetime.fromisoformat(data["current_period_end"])
                assert abs(shown - before[1]) < timedelta(seconds=1), (person.name, data)

        def subscription_row(self, person) -> UserSubscription:
            with app.app_context():
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one()
                db.session.expunge(sub)
                db.session.remove()
            return sub

        def paid_period_under_grant(self, person):
            """(tier, end) of a grant over a period paid for that runs now; else None."""
            if person.user_id is None:
                return None
            with app.app_context():
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one_or_none()
                under = sub is not None and sub.complimentary and sub.status == "active" \
                    and sub.current_period_end is not None \
                    and sub.current_period_end > self.now
                result = (sub.tier, sub.current_period_end) if under else None
                db.session.remove()
            return result

        @rule(name=st.sampled_from(IDENTITIES))
        def resume(self, name):
            """A resume; of a period a won dispute gave back (which nothing renews) it is 409
            and changes nothing (rules_subscription.restored_change_violations)."""
            person = self.person(name)
            before = self.subscription_row(person) if person.user_id else None
            restored = before is not None and self.is_given_back(before)
            status, body = self.call("POST", "/api/user/subscription/resume", person.headers)
            assert status in (200, 403, 409), body
            if before is not None:
                problems = restored_change_violations(restored, status, before,
                                                      self.subscription_row(person))
                assert not problems, (name, problems, body)

        def is_given_back(self, sub) -> bool:
            """The row's paid period is one a won dispute gave back, still in force."""
            end = self.given_back.get(sub.user_id)
            return end is not None and sub.current_period_end == end \
                and sub.tier != "starter" and not sub.complimentary \
                and sub.cancel_at_period_end and tier_at(sub, self.now) == sub.tier

        @rule(name=st.sampled_from(IDENTITIES), paid=st.booleans(), prorated=st.booleans())
        def renewal_webhook(self, name, paid, prorated=False):
            """The provider's invoice for the period that follows the current one. It never
            ends a grant in force (rules_subscription.grant_renewal_violations): the provider
            renews what a grant stopped renewing when the cancel undone in its billing portal
            was never notified, which this machine's provider is free to do. ``prorated``: it
            carries a plan change's proration over the rest of the current period (the
            billing portal prorates onto the next invoice), which never makes it a payment of
            that period (rules_subscription.renewal_period_violations)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            start, tier = sub.current_period_end, sub.tier
            if start is None or tier == "starter" \
                    or sub.provider_subscription_id in self.ended_at_provider:
                return  # (an ended subscription is invoiced no more)
            granted = tier if sub.complimentary and sub.status == "active" \
                and tier_at(sub, self.now) == tier else None
            self.webhooks += 1
            subscription, customer = self.provider_subscription_of(sub)
            event = billing.invoice_event(
                f"evt_{self.webhooks}", "invoice.paid" if paid else "invoice.payment_failed",
                user_id=person.user_id, tier=tier, period_start=start,
                period_end=start + timedelta(days=30), created=self.now,
                subscription=subscription, customer=customer)
            charge = f"ch_{self.webhooks}"
            event["data"]["object"]["charge"] = charge
            if prorated:
                rest = max(self.now, start - timedelta(days=10))
                event["data"]["object"]["lines"]["data"][:0] = [
                    _proration_line(-300, rest, start), _proration_line(600, rest, start)]
            status, body = self.call_webhook(event)
            assert status == 200, body
            after = self.subscription_row(person)
            if paid and body["data"]["outcome"] in ("renewed", "activated"):
                self.charges.setdefault(person.user_id, []).append(
                    (charge, after.current_period_end))
            problems = grant_renewal_violations(granted, after.tier, after.complimentary)
            if paid and sub.status == "active" and not sub.complimentary and start > self.now \
                    and tier_at(sub, self.now) == tier:
                problems += renewal_period_violations(
                    body["data"]["outcome"], start + timedelta(days=30),
                    after.current_period_end)
            assert not problems, (person.name, problems, body)

        @rule(name=st.sampled_from(IDENTITIES), latest=st.booleans(),
              how=st.sampled_from(["full", "partial", "dispute", "unmatched"]),
              late=st.booleans())
        def provider_refunds(self, name, latest, how, late=False):
            """A charge of the user's is refunded (in full or in part) in the provider's
            dashboard, or disputed: a full refund or a dispute of the charge that paid the
            period in force ends the paid tier, anything else changes no tier
            (rules_subscription.refund_violations); a dispute notified after its win took
            nothing, so it ends nothing. ``partial`` gives back 3.00 more of the
            charge (the last of it: in full), ``full`` the rest; nothing left to give back,
            the last refund is notified again. ``late``: the provider holds the refund's
            notice back, to deliver it after later ones (``late_refund_notices_arrive``).
            ``unmatched``: a 3.00 charge made now that no payment here matches, refunded in
            full: it never ends the paid tier
            (rules_subscription.unmatched_refund_violations)."""
            person = self.people[name]
            charges = self.charges.get(person.user_id) if person.user_id else None
            if not charges:
                return
            charge, paid_until = charges[-1] if latest else charges[0]
            sub = self.subscription_row(person)
            won = how == "dispute" and self.won_already(person, charge)
            self.webhooks += 1
            if how in ("full", "partial"):
                event, new = self.refund_notice(sub, charge, how)
                if late and new:
                    self.late_refund_notices.insert(0, (person.user_id, charge, paid_until,
                                                        event))
                    return
                self.deliver_refund(person, charge, paid_until, event)
                return
            obj = {"id": f"dp_{charge}", "object": "dispute", "charge": charge,
                   "amount": 999}
            if how == "unmatched":
                obj = {"id": f"ch_other_{self.webhooks}", "object": "charge",
                       "customer": sub.provider_customer_id, "amount": 300,
                       "amount_refunded": 300, "refunded": True,
                       "created": int(self.now.timestamp())}
            event = {"id": f"evt_{self.webhooks}", "object": "event",
                     "type": "charge.dispute.created" if how == "dispute"
                     else "charge.refunded", "created": int(self.now.timestamp()),
                     "data": {"object": obj}}
            status, body = self.call_webhook(event)
            assert status == 200, body
            after = self.subscription_row(person)
            if how == "unmatched":
                problems = unmatched_refund_violations(tier_at(sub, self.now), after.tier)
            else:
                # a dispute notified after its win took nothing: it ends nothing
                problems = refund_violations(True, self.pays_the_period(sub, paid_until)
                                             and not won, tier_at(sub, self.now), after.tier)
                problems += refund_amount_violations(
                    self.refunds_shown(person, charge), 999,
                    list(self.refunds_notified.get(charge, {}).values()))
            assert not problems, (person.name, problems, body)

        def pays_the_period(self, sub, paid_until) -> bool:
            """The charge that paid ``paid_until`` paid the period in force (not over)."""
            return sub.tier != "starter" and not sub.complimentary \
                and sub.status in ("active", "past_due") \
                and tier_at(sub, self.now) == sub.tier and sub.current_period_end is not None \
                and abs(sub.current_period_end - paid_until) < timedelta(seconds=1) \
                and sub.current_period_end > self.now  # a period over has nothing left

        def refund_notice(self, sub, charge, how) -> tuple[dict, bool]:
            """The provider's ``charge.refunded`` notice of a new refund of ``charge`` (the
            charge as it stands after it, the running total before it in
            ``previous_attributes``) and True; with nothing left to refund, the last refund's
            notice again (another notice of it) and False."""
            made = self.refunds_made.setdefault(charge, [])
            before = sum(refund["amount"] for refund in made)
            given = min(300 if how == "partial" else 999, 999 - before)
            if given:
                made.insert(0, {"id": f"re_{self.webhooks}", "object": "refund",
                                "amount": given})
            total = before + given
            previous = total - made[0]["amount"]
            obj = {"id": charge, "object": "charge", "customer": sub.provider_customer_id,
                   "amount": 999, "amount_refunded": total, "refunded": total >= 999,
                   "refunds": {"object": "list",
                               "data": [dict(refund) for refund in made]}}
            return {"id": f"evt_{self.webhooks}", "object": "event", "type": "charge.refunded",
                    "created": int(self.now.timestamp()),
                    "data": {"object": obj,
                             "previous_attributes": {"amount_refunded": previous}}}, \
                bool(given)

        def deliver_refund(self, person, charge, paid_until, event):
            """A refund's notice delivered: a full one of the period in force ends it, a
            partial one changes no tier; the history shows each refund of the charge with
            its own amount (rules_subscription.refund_amount_violations)."""
            sub = self.subscription_row(person)
            status, body = self.call_webhook(event)
            assert status == 200, body
            obj = event["data"]["object"]
            own = obj["refunds"]["data"][0]
            self.refunds_notified.setdefault(charge, {})[own["id"]] = own["amount"]
            after = self.subscription_row(person)
            full = obj["amount_refunded"] >= obj["amount"]
            problems = refund_violations(full, self.pays_the_period(sub, paid_until),
                                         tier_at(sub, self.now), after.tier)
            problems += refund_amount_violations(
                self.refunds_shown(person, charge), 999,
                list(self.refunds_notified[charge].values()))
            assert not problems, (person.name, problems, body)

        @rule(retried=st.booleans())
        def late_refund_notices_arrive(self, retried):
            """The refund notices the provider held back arrive, the newest first (after the
            notices of the refunds made since); ``retried``: each sent twice (a retry)."""
            notices, self.late_refund_notices = self.late_refund_notices, []
            for user_id, charge, paid_until, event in notices:
                person = next((p for p in self.people.values() if p.user_id == user_id), None)
                if person is None:  # the account is gone: the notice changes no one's
                    status, body = self.call_webhook(event)
                    assert status == 200, body
                    continue
                for _ in range(2 if retried else 1):
                    self.deliver_refund(person, charge, paid_until, event)

        @rule(name=st.sampled_from(IDENTITIES), latest=st.booleans(),
              how=st.sampled_from(["closed", "funds_reinstated", "lost"]))
        def provider_dispute_won(self, name, latest, how):
            """A dispute of a charge of the user's ends: won (``closed`` won, or its funds
            reinstated) it gives back the tier the dispute ended, to the end of the period
            the charge paid, renewing nothing; lost it changes nothing
            (rules_subscription.dispute_won_violations). Sent for any charge: one never
            disputed, or whose dispute took nothing, gets nothing."""
            person = self.people[name]
            charges = self.charges.get(person.user_id) if person.user_id else None
            if not charges:
                return
            charge, paid_until = charges[-1] if latest else charges[0]
            sub = self.subscription_row(person)
            took = self.taken_by_a_dispute(person, charge) if how != "lost" else None
            self.webhooks += 1
            event = {"id": f"evt_{self.webhooks}", "object": "event",
                     "type": "charge.dispute.funds_reinstated" if how == "funds_reinstated"
                     else "charge.dispute.closed", "created": int(self.now.timestamp()),
                     "data": {"object": {"id": f"dp_{charge}", "object": "dispute",
                                         "charge": charge, "amount": 999,
                                         "status": "lost" if how == "lost" else "won"}}}
            status, body = self.call_webhook(event)
            assert status == 200, body
            after = self.subscription_row(person)
            problems = dispute_won_violations(took, paid_until, self.now,
                                              tier_at(sub, self.now), sub.status,
                                              sub.complimentary, after)
            assert not problems, (person.name, problems, body)
            if body["data"]["outcome"] == "access_restored":
                self.given_back[person.user_id] = after.current_period_end

        def disputes_of(self, person, charge) -> list[dict]:
            """The ``disputed`` events of ``charge`` in the user's history (their details and
            the tier they came from)."""
            with app.app_context():
                events = [{**(e.details or {}), "from_tier": e.from_tier}
                          for e in db.session.execute(select(SubscriptionEvent).where(
                              SubscriptionEvent.user_id == person.user_id,
                              SubscriptionEvent.type == "disputed",
                              SubscriptionEvent.details["charge_id"].as_string() == charge))
                          .scalars()]
                db.session.remove()
            return events

        def won_already(self, person, charge) -> bool:
            return any(e.get("outcome") == "won" for e in self.disputes_of(person, charge))

        def taken_by_a_dispute(self, person, charge) -> str | None:
            """The tier a dispute of ``charge`` ended that no win gave back yet."""
            events = self.disputes_of(person, charge)
            if any(e.get("outcome") == "won" for e in events):
                return None
            return next((e["from_tier"] for e in events if e.get("ended_access")), None)

        def refunds_shown(self, person, charge) -> list[int]:
            """The amounts the history shows for the refunds of ``charge``."""
            with app.app_context():
                amounts = list(db.session.execute(select(SubscriptionEvent.amount_cents).where(
                    SubscriptionEvent.user_id == person.user_id,
                    SubscriptionEvent.type == "refunded",
                    SubscriptionEvent.details["charge_id"].as_string() == charge)).scalars())
                db.session.remove()
            return [amount or 0 for amount in amounts]

        @rule(name=st.sampled_from(IDENTITIES), late=st.booleans())
        def provider_checkout_paid(self, name, late=False):
            """The checkout open is paid at the provider, which starts a new provider
            subscription of its own: once it takes effect, an older one the provider may still
            charge (kept after a failed renewal's grace or a lapse) is asked to cancel
            (rules_subscription.replaced_subscriptions_charging, in ``the_rules_hold``).
            ``late``: a trial's card checkout (the last one opened during a trial), its $0
            notice delivered now, whatever happened since: it never grants a month nobody
            paid for (rules_subscription.free_month_violations, in ``the_rules_hold``)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            if late and person.trial_checkout is not None:
                self.webhooks += 1
                self.provider_ids += 1
                reference, tier = person.trial_checkout
                status, body = self.call_webhook(billing.checkout_completed(
                    f"evt_{self.webhooks}", user_id=person.user_id, tier=tier,
                    reference=reference, created=self.now, amount=0,
                    customer=f"cus_{sub.user_id}",
                    subscription=f"sub_{sub.user_id}_{self.provider_ids}"))
                assert status == 200, body
                return
            if not sub.checkout_reference:
                return
            self.webhooks += 1
            self.provider_ids += 1
            event = billing.checkout_completed(
                f"evt_{self.webhooks}", user_id=person.user_id, tier=sub.checkout_tier,
                reference=sub.checkout_reference, created=self.now,
                amount=0 if sub.status == "trialing" else TIERS[sub.checkout_tier].price_cents,
                customer=f"cus_{sub.user_id}",
                subscription=f"sub_{sub.user_id}_{self.provider_ids}")
            status, body = self.call_webhook(event)
            assert status == 200, body

        def provider_subscription_of(self, sub):
            """The provider subscription running for this row (ids never shared between
            accounts), or a new one."""
            if sub.provider_subscription_id:
                return sub.provider_subscription_id, sub.provider_customer_id or "cus_x"
            self.provider_ids += 1
            return f"sub_{sub.user_id}_{self.provider_ids}", f"cus_{sub.user_id}"

        @rule(name=st.sampled_from(IDENTITIES), cancel=st.booleans())
        def portal_changes_the_cancel(self, name, cancel):
            """The user cancels in the provider's billing portal, or undoes the cancel there:
            once the provider says it renews, the subscription shown says so too
            (rules_subscription.renewal_violations)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            if not sub.provider_subscription_id or sub.tier == "starter" \
                    or sub.provider_subscription_id in self.ended_at_provider:
                return
            self.webhooks += 1
            # the provider's subscription as it is: the price it renews at, where known
            price = prices.get(person.user_id)
            event = billing.subscription_updated(
                f"evt_{self.webhooks}", price="price_unknown",
                subscription=sub.provider_subscription_id,
                customer=sub.provider_customer_id or "cus_x", cancel_at_period_end=cancel,
                previous={"cancel_at_period_end": not cancel}, created=self.now,
                metadata={"sonicus_tier": price} if price else None)
            status, body = self.call_webhook(event)
            assert status == 200, body
            if not cancel:
                after = self.subscription_row(person)
                problems = renewal_violations(body["data"]["outcome"],
                                              after.cancel_at_period_end, after.pending_tier)
                assert not problems, (person.name, problems)

        @rule(name=st.sampled_from(IDENTITIES))
        def portal_undoes_our_change_in_the_same_second(self, name):
            """Right after a cancel or resume here, the user does the opposite in the billing
            portal in the same second; the provider's two notices (of our change, of the
            portal's) carry that second and arrive the wrong way round. The cancel flag
            shown is the provider's last (rules_subscription.cancel_flag_violations)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            sid, flags = sub.provider_subscription_id, self.provider_flags
            if not sid or sid not in flags or sid in self.ended_at_provider \
                    or sub.tier == "starter" or sub.complimentary \
                    or sub.provider_state_at != self.now.replace(microsecond=0):
                return
            ours = flags[sid]
            flags[sid] = not ours  # the portal's change
            price = prices.get(person.user_id)
            outcomes = []
            for flag in (not ours, ours):  # the portal's notice first, then our change's
                self.webhooks += 1
                status, body = self.call_webhook(billing.subscription_updated(
                    f"evt_{self.webhooks}", price="price_unknown", subscription=sid,
                    customer=sub.provider_customer_id or "cus_x", cancel_at_period_end=flag,
                    previous={"cancel_at_period_end": not flag}, created=self.now,
                    metadata={"sonicus_tier": price} if price else None))
                assert status == 200, body
                outcomes.append(body["data"]["outcome"])
            after = self.subscription_row(person)
            problems = cancel_flag_violations(outcomes, after.cancel_at_period_end,
                                              flags[sid])
            assert not problems, (person.name, problems)

        @rule(name=st.sampled_from(IDENTITIES))
        def provider_ends_the_subscription(self, name):
            """The provider ends the running subscription (``customer.subscription.deleted``):
            its retries of a failed charge gave up, or the user canceled at once in its
            billing portal. It charges nothing after that, so nothing shown renews on it
            (``nothing_renews_on_an_ended_subscription``), and a grant in force stays
            (rules_subscription.grant_renewal_violations)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            sid = sub.provider_subscription_id
            if not sid or sid in self.ended_at_provider:
                return
            granted = sub.tier if sub.complimentary and sub.status == "active" \
                and tier_at(sub, self.now) == sub.tier else None
            self.webhooks += 1
            status, body = self.call_webhook(billing.subscription_deleted(
                f"evt_{self.webhooks}", subscription=sid,
                customer=sub.provider_customer_id or "cus_x", created=self.now))
            assert status == 200, body
            self.ended_at_provider.add(sid)
            prices.pop(person.user_id, None)  # the provider renews nothing now
            after = self.subscription_row(person)
            problems = grant_renewal_violations(granted, after.tier, after.complimentary)
            assert not problems, (person.name, problems, body)

        @rule(name=st.sampled_from(IDENTITIES), tier=st.sampled_from(["premium", "pro"]))
        def portal_changes_the_plan(self, name, tier):
            """The user switches plan in the provider's billing portal (its price changes at
            once, prorated there): the tier shown renewing is the one the provider now bills
            (``the_provider_renews_what_is_shown``)."""
            person = self.people[name]
            if person.user_id is None:
                return
            sub = self.subscription_row(person)
            sid = sub.provider_subscription_id
            if not sid or sid in self.ended_at_provider or sub.tier == "starter" \
                    or sub.complimentary or sub.status not in ("active", "past_due", "trialing") \
                    or prices.get(person.user_id) == tier:
                return
            self.webhooks += 1
            status, body = self.call_webhook(billing.subscription_updated(
                f"evt_{self.webhooks}", price="price_unknown", subscription=sid,
                customer=sub.provider_customer_id or "cus_x",
                cancel_at_period_end=bool(self.provider_flags.get(sid,
                                                                  sub.cancel_at_period_end)),
                created=self.now, metadata={"sonicus_tier": tier}))
            assert status == 200, body
            prices[person.user_id] = tier

        @invariant()
        def nothing_renews_on_an_ended_subscription(self):
            """A paid subscription whose provider subscription ended is not shown renewing
            (nor a trial converting on the card that went with it): nothing would charge for
            the month shown."""
            for person in self.people.values():
                if person.user_id is None:
                    continue
                sub = self.subscription_row(person)
                if sub.provider_subscription_id in self.ended_at_provider \
                        and sub.status in ("active", "trialing") and not sub.complimentary \
                        and sub.tier != "starter":
                    assert sub.cancel_at_period_end or sub.pending_tier == "starter" \
                        or (sub.status == "trialing" and not sub.payment_method_on_file), \
                        (person.name, sub.tier, sub.status)

        # ---- offline downloads ---------------------------------------------------------------
        @rule(name=st.sampled_from(IDENTITIES),
              level=st.sampled_from(["public", "premium", "pro_exclusive"]),
              ends=st.booleans())
        def downloads(self, name, level, ends):
            """A package kept offline: a licence only where the tier in force has downloads and
            opens the package, or an assignment opens it (403 else); the licences listed are
            only of packages kept offline now (``the_licences_listed_are_open``)."""
            person = self.person(name)
            tier, active = self.tier_of(person)
            awaiting = self.awaiting_payment(person)
            package = self.packages[level]
            status, body = self.call("POST", "/api/user/downloads", person.headers,
                                     json={"package_id": package})
            assert status in (201, 402, 403), body
            if active:
                allowed = self.assigned(person, level) or (
                    TIERS[tier].offline_downloads and can_access_level(tier, level))
                assert (status == 201) == bool(allowed), (person.name, tier, level, body)
                if not allowed:  # 402 when the tier whose payment is awaited would keep it
                    assert status == refusal_status(awaiting, lambda t: TIERS[t].offline_downloads
                                                    and can_access_level(t, level)), \
                        (person.name, tier, awaiting, level, body)
            if status == 201 and ends:
                status, body = self.call("DELETE", f"/api/user/downloads/{package}",
                                         person.headers)
                assert status == 200, body
            self.the_licences_listed_are_open(person)

        def the_licences_listed_are_open(self, person):
            tier, active = self.tier_of(person)
            if not active:
                return
            status, body = self.call("GET", "/api/user/downloads?per_page=50", person.headers)
            assert status == 200, body
            levels = {v: k for k, v in self.packages.items()}
            for item in body["data"]:
                level = levels[item["package_id"]]
                assert self.assigned(person, level) or (
                    TIERS[tier].offline_downloads and can_access_level(tier, level)), \
                    (person.name, tier, level, item)
                assert datetime.fromisoformat(item["licence_expires_at"]) > self.now, item

        @rule(name=st.sampled_from(IDENTITIES))
        def lists_downloads(self, name):
            person = self.people[name]
            if person.user_id is not None:
                self.the_licences_listed_are_open(person)

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
            """A grant never takes away part of a period the user paid for: one below the
            tier of a paid period running (the user's own, or one kept under an earlier
            grant) is 409."""
            person = self.person(name)
            with app.app_context():
                sub = db.session.execute(select(UserSubscription).where(
                    UserSubscription.user_id == person.user_id)).scalar_one_or_none()
                paid_above = sub is not None and sub.status == "active" \
                    and sub.current_period_end is not None \
                    and sub.current_period_end > self.now \
                    and TIERS[sub.tier].rank > TIERS[tier].rank
                db.session.remove()
            status, body = self.call("PATCH", f"/api/admin/users/{person.user_id}", admin,
                                     json={"tier": tier})
            assert status == (409 if paid_above else 200), body

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

        @rule(by=st.sampled_from(sorted(admins)), whom=st.sampled_from(sorted(admins)),
              active=st.booleans())
        def admin_changes_an_admins_status(self, by, whom, active):
            """An administrator's account is the operator's: through the API an admin
            suspends neither themselves nor another admin (nor reactivates one): 409."""
            for email in (by, whom):
                status, body = self.call("GET", "/api/user/profile", admins[email])
                assert status == 200, body
            with app.app_context():
                target = db.session.execute(
                    select(User.id).where(User.email == whom)).scalar_one()
                db.session.remove()
            status, body = self.call("PATCH", f"/api/admin/users/{target}", admins[by],
                                     json={"is_active": active})
            if active:
                assert status == 200, body  # every admin is active: nothing to change
            else:
                assert status == 409 and body["code"] == "conflict", body

        @invariant()
        def one_device_is_one_subscription(self):
            """Each identity has one browser: however its endpoint was spelt, one row, in the
            plain spelling (one push per reminder)."""
            with app.app_context():
                stored = db.session.execute(select(PushSubscription.endpoint)).scalars().all()
                db.session.remove()
            assert len(stored) == len(set(stored)) <= len(IDENTITIES), stored
            assert all(e.startswith("https://fcm.googleapis.com/fcm/send/") for e in stored), \
                stored

        @invariant()
        def the_dashboard_offers_to_continue_only_what_plays(self):
            """The dashboard's continue_listening, and every place to resume that
            /api/user/playback lists, is a package the caller can start now: its level
            opened by the tier in force, or a live assignment (never one a downgrade, an
            ended trial or a revoked assignment locked), and not heard to completion since."""
            level_of = {package_id: level for level, package_id in self.packages.items()}
            for person in self.people.values():
                if person.user_id is None:
                    continue
                tier, active = self.tier_of(person)
                if not active:
                    continue
                status, body = self.call("GET", "/api/user/dashboard", person.headers)
                assert status == 200, body
                offered = body["data"]["continue_listening"]
                status, listed = self.call("GET", "/api/user/playback?per_page=100",
                                           person.headers)
                assert status == 200, listed
                rows = {row.id: row for row in self.rows(person)}
                places = [(offered["session_id"], "continue")] if offered is not None else []
                places += [(place["session_id"], "playback") for place in listed["data"]]
                for session_id, where in places:
                    place = rows[session_id]
                    level = level_of[place.package_id]
                    assert can_access_level(tier, level) or self.assigned(person, level), \
                        (where, person.name, tier, level)
                    # never a package heard to completion in a session started after it
                    assert not any(row.package_id == place.package_id and row.completed
                                   and row.started_at > place.started_at
                                   for row in rows.values()), (where, session_id)

        @invariant()
        def the_provider_renews_what_is_shown(self):
            """A paid subscription shown renewing (its tier, or the one a downgrade falls
            to) renews at that tier's price at the provider, whatever was changed here or in
            the billing portal (rules_subscription.renewal_price_violations)."""
            accounts = [p for p in self.people.values() if p.user_id is not None]
            for person in accounts:
                sub = self.subscription_row(person)
                problems = renewal_price_violations(
                    sub.tier, sub.status, sub.complimentary, sub.cancel_at_period_end,
                    sub.pending_tier, prices.get(person.user_id))
                assert not problems, (person.name, problems)

        @invariant()
        def the_trial_is_shown_used_once_the_person_used_it(self):
            """Every account shows ``trial_used`` as the truth of the person: one of its
            accounts (the same verified email), live or erased, used the trial
            (rules_subscription.trial_shown_violations)."""
            shown, used = {}, {}
            for person in self.people.values():
                if person.user_id is None or not self.tier_of(person)[1]:
                    continue  # no account, or a suspended one
                status, body = self.call("GET", "/api/user/subscription", person.headers)
                assert status == 200, body
                shown[person.name] = body["data"]["trial_used"]
                used[person.name] = self.trial_used_by(person)
            assert not trial_shown_violations(shown, used), (shown, used)

        @invariant()
        def no_admin_is_suspended_through_the_api(self):
            with app.app_context():
                suspended = db.session.execute(select(User.email).where(
                    User.role == "admin", User.is_active.is_(False))).scalars().all()
                db.session.remove()
            assert suspended == [], suspended

        # ---- what is stored ----------------------------------------------------------------
        def session_row(self, session_id) -> SessionRow | None:
            with app.app_context():
                session = db.session.get(ListeningSession, session_id)
                row = None if session is None else _row(session)
                db.session.remove()
            return row

        def check_stored_analytics(self, person):
            """Right after a completion refreshed them, the stored analytics equal a fresh
            computation from the rows, the user's own figures behind their recommendations
            hold only the sessions that count (the model's rule), and today's sessions are
            the quota's (the usage's)."""
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
            # Streaks and freezes as the model walks the calendar.
            today = date.fromisoformat(fresh["day"])
            model = streak_figures(self.rows(person), today)
            assert 0 <= fresh["freezes_available"] <= 2
            assert fresh["current_streak_days"] <= fresh["longest_streak_days"]
            since = today - timedelta(days=89)
            assert (fresh["current_streak_days"], fresh["longest_streak_days"],
                    fresh["freezes_available"], fresh["freeze_days"]) == \
                (model.current, model.longest, model.freezes_available,
                 [d.isoformat() for d in model.freeze_days if since <= d])
            assert outcomes == mood_outcomes(self.rows(person)), person.name
            # Sessions of the day: the quota's count, in the analytics as in the usage.
            assert fresh["sessions_today"] == \
                sessions_of_day(self.rows(person), person.days, today), person.name
            status, body = self.call("GET", "/api/user/subscription", person.headers)
            assert status == 200, body
            assert body["data"]["usage"]["sessions_today"] == fresh["sessions_today"]

        def check_no_deadline_left_behind(self):
            with app.app_context():
                subs = db.session.execute(select(UserSubscription)).scalars().all()
                for sub in subs:
                    if sub.status == "trialing":
                        assert sub.trial_ends_at > self.now, sub.user_id
                    elif sub.status == "past_due":
                        assert sub.past_due_since + timedelta(days=3) > self.now
                    elif sub.complimentary and sub.cancel_at_period_end:
                        assert sub.current_period_end > self.now, sub.user_id
                    elif sub.tier != "starter" and not sub.complimentary:
                        assert sub.current_period_end is not None
                        assert sub.current_period_end > self.now - timedelta(days=3)
                db.session.remove()

        @invariant()
        def the_rules_hold(self):
            """After every step: quota per user day (offline uploads included), completion from
            the server's time, uploads within their window and never overlapping, one trial
            per identity, the tier in force as the subscription's history tells it, and no
            provider subscription asked to cancel again once the provider confirmed it."""
            assert not repeated_cancellations(cancels), cancels
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
                                              "details": e.details,
                                              "amount_cents": e.amount_cents})
                claims: dict[int, list] = {}
                for user_id, day, at in db.session.execute(
                        select(ReminderDelivery.user_id, ReminderDelivery.local_day,
                               ReminderDelivery.created_at)
                        .where(ReminderDelivery.user_id.in_(accounts))):
                    claims.setdefault(user_id, []).append((day, at))
                db.session.remove()
            for user_id, person in accounts.items():
                problems = quota_problems(rows[user_id], person.days)
                problems += completion_violations(rows[user_id])
                problems += offline_violations(rows[user_id], self.uploaded_at)
                problems += free_month_violations(events[user_id])
                assert not problems, (person.name, problems)
                sub, derived = subs[user_id], derive_from_events(events[user_id])
                assert (sub.tier, sub.status, sub.pending_tier) == \
                    (derived.tier, derived.status, derived.pending_tier), \
                    (person.name, [e["type"] for e in events[user_id]])
            assert not trials_per_person(self.trials_by_email), self.trials_by_email
            for user_id, sub in subs.items():
                before, now = self.running.get(user_id), sub.provider_subscription_id
                if before and now and before != now:
                    self.replaced.append((before, now))
                self.running[user_id] = now
            assert not replaced_subscriptions_charging(self.replaced, cancels), \
                (self.replaced, cancels)
            for user_id, person in accounts.items():
                claimed = [ReminderRow(day, at, person.claimed_for.get((user_id, day)))
                           for day, at in claims.get(user_id, [])]
                problems = reminder_violations(claimed, rows[user_id], person.days,
                                               uploaded_at=self.uploaded_at)
                assert not problems, (person.name, problems)

    return RulesMachine


def _proration_line(amount: int, start: datetime, end: datetime) -> dict:
    """An invoice line prorating a plan change over ``start``..``end`` (Stripe's shape)."""
    return {"id": f"il_proration_{amount}", "object": "line_item", "amount": amount,
            "period": {"start": int(start.timestamp()), "end": int(end.timestamp())},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"proration": True}},
            "metadata": {}}


def recording_prices(prices: dict[int, str]):
    """Wrappers noting, per user, the tier the provider's subscription renews at: the plan
    the provider is switched to (``change_tier``), the tier a payment starts (a new paid
    tier, a trial's card); a trial starts a subscription whose price is not known yet."""

    def plan_changed(provider, sub, tier, *, prorate):
        prices[sub.user_id] = tier

    def paying(apply):
        def applied(sub, payment, *args):
            outcome = apply(sub, payment, *args)
            prices[sub.user_id] = sub.tier
            return outcome
        return applied

    def trial_started(start):
        def started(user, sub, *args):
            prices.pop(sub.user_id, None)
            return start(user, sub, *args)
        return started

    return plan_changed, paying, trial_started


def recording_cancels(cancel_now, cancels: list[str]):
    """The provider's ``cancel_now``, unchanged, noting each subscription id it confirms."""

    def recorded(provider, customer_id, subscription_id):
        outcome = cancel_now(provider, customer_id, subscription_id)
        if subscription_id:
            cancels.append(subscription_id)
        return outcome

    return recorded


# One push service in the spellings a client library may give it: one device each way.
PUSH_ORIGIN_SPELLINGS = ("https://fcm.googleapis.com", "https://FCM.googleapis.com",
                         "https://fcm.googleapis.com.", "https://fcm.googleapis.com:443",
                         "HTTPS://Fcm.GoogleAPIs.com.:443")


def _subscription(name: str, origin: str = PUSH_ORIGIN_SPELLINGS[0]) -> dict:
    """A browser's PushSubscription (a real P-256 point) at a push service's address, the
    push service's origin spelt ``origin`` (the device is ``name``'s browser whatever it is)."""
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return {"endpoint": f"{origin}/fcm/send/{name}", "expirationTime": None,
            "keys": {"p256dh": base64.urlsafe_b64encode(point).rstrip(b"=").decode(),
                     "auth": base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode()}}


def _row(session) -> SessionRow:
    content = session.track.duration_seconds if session.track is not None \
        else (session.package.duration_seconds or None)
    return SessionRow(session.id, session.started_at, session.ended_at, session.tier,
                      session.counts_toward_quota, session.completed, session.listened_seconds,
                      content, session.local_day, synced=session.client_id is not None,
                      package_id=session.package_id, mood_before=session.mood_before,
                      mood_after=session.mood_after)


def _seed_packages() -> dict[str, int]:
    ids = {}
    for level, minutes in (("public", 10), ("premium", 20), ("pro_exclusive", 30)):
        package = SoundPackage(slug=f"{level.replace('_', '-')}-pkg", title=level,
                               category="sleep", minimum_tier=level, published=True,
                               duration_seconds=minutes * 60, track_count=1, popularity=0,
                               created_at=START - timedelta(days=30))  # before all listening
        package.tracks.append(Track(position=0, title=level, duration_seconds=minutes * 60,
                                    media_path=f"{level}/one.mp3"))
        db.session.add(package)
        db.session.flush()
        ids[level] = package.id
    db.session.commit()
    return ids


def _rules_machine(idp, make_config, table_names, billing, monkeypatch):
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL=None, LOG_LEVEL="WARNING"))  # jobs inline
    monkeypatch.setattr(clock, "now", clock.now)   # whatever the machine sets is undone
    cancels: list[str] = []
    monkeypatch.setattr(SandboxProvider, "cancel_now",
                        recording_cancels(SandboxProvider.cancel_now, cancels))
    prices: dict[int, str] = {}
    plan_changed, paying, trial_started = recording_prices(prices)
    monkeypatch.setattr(SandboxProvider, "change_tier", plan_changed)
    for name in ("_new_paid_tier", "_trial_card_added"):
        monkeypatch.setattr(subscription_payments, name,
                            paying(getattr(subscription_payments, name)))
    monkeypatch.setattr(subscription_changes, "_start_trial",
                        trial_started(subscription_changes._start_trial))
    flags: dict[str, bool] = {}

    def flag_sent(provider, sub, cancel):
        if sub.provider_subscription_id:
            flags[sub.provider_subscription_id] = cancel

    monkeypatch.setattr(SandboxProvider, "set_cancel_at_period_end", flag_sent)
    monkeypatch.setattr(SandboxProvider, "cancel_at_period_end_now",
                        lambda provider, sid: flags.get(sid))
    machine = build_machine(app, idp, table_names, billing, cancels, prices)
    machine.provider_flags = flags
    return machine


# Sequences through a grant over the user's own billing, each step followed by the invariants
# (random exploration reaches them rarely): a tier paid for chosen again under a higher grant;
# a tier above a grant over a month paid for (prorated, no checkout); a cancel under a grant
# undone in the billing portal; the provider renewing under a grant (the portal's undo never
# notified); a revoke after a grant that canceled a failing renewal's subscription.
GRANT_SEQUENCES = {
    "tier_above_a_grant_over_a_paid_month": [
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("admin_grants", {"tier": "premium"}), ("choose_tier", {"tier": "pro", "pay": True})],
    "renewal_under_a_grant": [
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("renewal_webhook", {"paid": True}), ("admin_grants", {"tier": "premium"}),
        ("renewal_webhook", {"paid": True}), ("admin_grants", {"tier": "pro"}),
        ("renewal_webhook", {"paid": True}), ("time_passes", {"seconds": 32 * 86400}),
        ("sign_in", {})],
    "tier_paid_for_chosen_under_a_grant": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("admin_grants", {"tier": "pro"}),
        ("choose_tier", {"tier": "premium", "pay": True})],
    "tier_below_a_grant_chosen": [
        ("admin_grants", {"tier": "pro"}), ("choose_tier", {"tier": "premium", "pay": True})],
    "cancel_under_a_grant_undone_in_the_portal": [
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("renewal_webhook", {"paid": True}), ("admin_grants", {"tier": "pro"}),
        ("cancel", {}), ("portal_changes_the_cancel", {"cancel": False}),
        ("time_passes", {"seconds": 32 * 86400}), ("sign_in", {})],
    "revoke_after_a_past_due_grant": [
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("renewal_webhook", {"paid": True}), ("renewal_webhook", {"paid": False}),
        ("admin_grants", {"tier": "premium"}), ("admin_grants", {"tier": "starter"}),
        ("admin_grants", {"tier": "pro"}), ("erase", {})],
}


@pytest.mark.parametrize("sequence", sorted(GRANT_SEQUENCES))
def test_the_rules_hold_through_grants_over_the_users_billing(idp, make_config, table_names,
                                                             billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        machine.the_rules_hold()
        for step, arguments in GRANT_SEQUENCES[sequence]:
            getattr(machine, step)(**({} if step == "time_passes" else {"name": "ana"}),
                                   **arguments)
            machine.the_rules_hold()
            machine.the_provider_renews_what_is_shown()
    finally:
        machine.teardown()


# A downgrade asked here, a cancel made in the billing portal (the provider stays on the lower
# tier's price), then the cancel undone here: what is shown renews at the provider's price
# (``the_provider_renews_what_is_shown``), by a resume or by choosing the tier in force again.
PORTAL_SEQUENCES = {
    f"portal_cancel_after_a_downgrade_undone_by_{how}": [
        ("choose_tier", {"tier": "pro", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("choose_tier", {"tier": "premium", "pay": False}),
        ("portal_changes_the_cancel", {"cancel": True}), undo,
        ("time_passes", {"seconds": 32 * 86400}), ("expiry_job_runs", {}),
        ("renewal_webhook", {"paid": True}), ("sign_in", {})]
    for how, undo in (("resume", ("resume", {})),
                      ("choosing_the_tier", ("choose_tier", {"tier": "pro", "pay": False})))
}


@pytest.mark.parametrize("sequence", sorted(PORTAL_SEQUENCES))
def test_the_rules_hold_when_a_cancel_made_in_the_portal_is_undone_here(
        idp, make_config, table_names, billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, arguments in PORTAL_SEQUENCES[sequence]:
            getattr(machine, step)(**({} if step in ("time_passes", "expiry_job_runs")
                                      else {"name": "ana"}), **arguments)
            machine.the_rules_hold()
            machine.the_provider_renews_what_is_shown()
    finally:
        machine.teardown()


# A new provider subscription after a failed renewal's grace ran out (the older one kept: the
# provider may still retry it), and a trial asked from a second identity of the same person:
# the older subscription is asked to cancel (``replaced_subscriptions_charging``), one trial
# between the accounts (``trials_per_person``); a renewal's invoice carrying a plan change's
# proration renews the period (``renewal_period_violations``).
BILLING_SEQUENCES = {
    "buying_again_after_a_failed_renewals_grace": [
        ("choose_tier", {"tier": "premium", "pay": False}), ("provider_checkout_paid", {}),
        ("renewal_webhook", {"paid": False}), ("time_passes", {"seconds": 3 * 86400}),
        ("expiry_job_runs", {}), ("choose_tier", {"tier": "premium", "pay": False}),
        ("provider_checkout_paid", {}), ("renewal_webhook", {"paid": True}), ("erase", {})],
    "buying_another_tier_after_a_failed_renewals_grace": [
        ("choose_tier", {"tier": "pro", "pay": False}), ("provider_checkout_paid", {}),
        ("renewal_webhook", {"paid": False}), ("time_passes", {"seconds": 3 * 86400}),
        ("sign_in", {}),
        ("choose_tier", {"tier": "premium", "pay": False}), ("provider_checkout_paid", {}),
        ("time_passes", {"seconds": 15 * 86400}), ("expiry_job_runs", {})],
    "a_renewal_carrying_a_proration": [
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("renewal_webhook", {"paid": True, "prorated": True}),
        ("renewal_webhook", {"paid": True, "prorated": True})],
    "a_trial_from_a_second_identity": [
        ("start_trial", {"tier": "premium"}),
        ("start_trial", {"tier": "pro", "name": SECOND_IDENTITY}),
        ("time_passes", {"seconds": 15 * 86400}), ("erase", {}),
        ("start_trial", {"tier": "pro", "name": SECOND_IDENTITY})],
    # a trial's card notified after the trial ended (``free_month_violations``)
    "a_trials_card_notified_after_the_trial": [
        ("start_trial", {"tier": "premium"}), ("choose_tier", {"tier": "premium", "pay": False}),
        ("time_passes", {"seconds": 15 * 86400}), ("provider_checkout_paid", {"late": True}),
        ("renewal_webhook", {"paid": True}), ("sign_in", {})],
    # refunds and disputes (``refund_violations``): money given back ends what it paid for
    # a change here undone in the portal in the same second (``cancel_flag_violations``)
    "a_cancel_here_resumed_in_the_portal_in_one_second": [
        ("choose_tier", {"tier": "premium", "pay": False}), ("provider_checkout_paid", {}),
        ("cancel", {}),
        ("portal_undoes_our_change_in_the_same_second", {}), ("sign_in", {})],
    "a_resume_here_canceled_in_the_portal_in_one_second": [
        ("choose_tier", {"tier": "premium", "pay": False}), ("provider_checkout_paid", {}),
        ("cancel", {}),
        ("time_passes", {"seconds": 5}), ("resume", {}),
        ("portal_undoes_our_change_in_the_same_second", {}), ("sign_in", {})],
    "a_partial_then_full_refund_of_the_month": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": True, "how": "partial"}),
        ("provider_refunds", {"latest": True, "how": "full"}),
        ("provider_refunds", {"latest": True, "how": "dispute"}), ("sign_in", {})],
    # a charge's refund notices delivered out of order and again (``refund_amount_violations``)
    "refunds_of_the_month_notified_out_of_order": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": True, "how": "partial", "late": True}),
        ("provider_refunds", {"latest": True, "how": "partial"}),
        ("provider_refunds", {"latest": True, "how": "full", "late": True}),
        ("late_refund_notices_arrive", {"retried": True}),
        ("provider_refunds", {"latest": True, "how": "partial"}), ("sign_in", {})],
    "an_unmatched_refund_after_an_upgrade": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": True, "how": "unmatched"}),
        ("choose_tier", {"tier": "pro", "pay": True}),
        ("provider_refunds", {"latest": True, "how": "unmatched"}), ("sign_in", {})],
    # a dispute won (``dispute_won_violations``): what it took comes back, renewing nothing
    "a_dispute_won_gives_the_month_back": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": True, "how": "dispute"}),
        ("provider_dispute_won", {"latest": True, "how": "closed"}),
        ("provider_dispute_won", {"latest": True, "how": "funds_reinstated"}),
        ("resume", {}), ("time_passes", {"seconds": 40 * 86400}), ("expiry_job_runs", {}),
        ("sign_in", {})],
    "a_refund_of_a_month_a_won_dispute_gave_back": [
        ("choose_tier", {"tier": "premium", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": True, "how": "dispute"}),
        ("provider_dispute_won", {"latest": True, "how": "closed"}),
        ("provider_refunds", {"latest": True, "how": "full"}), ("sign_in", {})],
    "a_dispute_won_before_it_was_notified": [
        ("choose_tier", {"tier": "pro", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("provider_dispute_won", {"latest": True, "how": "closed"}),
        ("provider_refunds", {"latest": True, "how": "dispute"}),
        ("provider_dispute_won", {"latest": True, "how": "lost"}), ("sign_in", {})],
    "a_dispute_of_an_older_month": [
        ("choose_tier", {"tier": "pro", "pay": True}), ("renewal_webhook", {"paid": True}),
        ("time_passes", {"seconds": 32 * 86400}), ("renewal_webhook", {"paid": True}),
        ("provider_refunds", {"latest": False, "how": "dispute"}),
        ("provider_refunds", {"latest": True, "how": "dispute"}), ("expiry_job_runs", {})],
}


@pytest.mark.parametrize("sequence", sorted(BILLING_SEQUENCES))
def test_the_rules_hold_when_the_provider_starts_another_subscription(
        idp, make_config, table_names, billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, arguments in BILLING_SEQUENCES[sequence]:
            if step not in ("time_passes", "expiry_job_runs", "late_refund_notices_arrive"):
                arguments = {"name": "ana", **arguments}
            getattr(machine, step)(**arguments)
            machine.the_rules_hold()
            machine.the_trial_is_shown_used_once_the_person_used_it()
    finally:
        machine.teardown()


# A session left open on a package the user then loses (a downgrade, an assignment running
# out): the dashboard must not offer to continue it (``the_dashboard_offers_to_continue_only_
# what_plays``).
OPEN_SESSION_SEQUENCES = {
    "downgraded_by_an_admin": [
        ("admin_grants", {"tier": "premium"}), ("start", {"level": "premium", "mood": None}),
        ("admin_grants", {"tier": "starter"})],
    "assignment_ran_out": [
        ("admin_assigns", {"level": "pro_exclusive", "days": 1}),
        ("start", {"level": "pro_exclusive", "mood": 5}),
        ("time_passes", {"seconds": 3 * 86400}), ("sign_in", {})],
}


@pytest.mark.parametrize("sequence", sorted(OPEN_SESSION_SEQUENCES))
def test_the_rules_hold_when_an_open_sessions_package_is_lost(idp, make_config, table_names,
                                                              billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, arguments in OPEN_SESSION_SEQUENCES[sequence]:
            getattr(machine, step)(**({} if step == "time_passes" else {"name": "ana"}),
                                   **arguments)
            machine.the_dashboard_offers_to_continue_only_what_plays()
            machine.the_rules_hold()
    finally:
        machine.teardown()


def test_the_rules_hold_when_a_place_to_resume_is_locked(idp, make_config, table_names,
                                                         billing, monkeypatch):
    """A premium package left half-heard (a heartbeat's position), then a downgrade: neither
    the dashboard nor /api/user/playback offers to resume it."""
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        machine.admin_grants(name="ana", tier="premium")
        session = machine.start(name="ana", level="premium", mood=None)
        machine.time_passes(seconds=90)
        machine.end(session=session, claim="honest", mood=None, finish=False)
        machine.admin_grants(name="ana", tier="starter")
        machine.the_dashboard_offers_to_continue_only_what_plays()
        machine.the_rules_hold()
    finally:
        machine.teardown()


def test_the_rules_hold_when_a_place_to_resume_is_heard_to_the_end_later(
        idp, make_config, table_names, billing, monkeypatch):
    """A session left open with a position on one device, then the same package heard to
    completion in another: no place to resume offers the first one any more."""
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        first = machine.start(name="ana", level="public", mood=None)
        machine.time_passes(seconds=90)
        machine.end(session=first, claim="honest", mood=None, finish=False)
        second = machine.start(name="ana", level="public", mood=None)
        machine.time_passes(seconds=600)
        machine.end(session=second, claim="honest", mood=None, finish=True)
        machine.the_dashboard_offers_to_continue_only_what_plays()
        machine.the_rules_hold()
    finally:
        machine.teardown()


# A keyed start refused for the day's quota, retried with its key later in the day and after
# the day rolled over: the replay's Retry-After is the time left then (``retry_violations``).
KEYED_REFUSAL_SEQUENCES = {
    "quota_refusal_replayed_later": [
        ("starts_in_a_row", {"count": 3}), ("start_with_a_key", {"level": "public"}),
        ("time_passes", {"seconds": 3600}), ("retry_keyed_start", {}),
        ("time_passes", {"seconds": 5 * 3600}), ("retry_keyed_start", {}),
        ("time_passes", {"seconds": 86400}), ("retry_keyed_start", {})],
    # a tier chosen and not paid yet: 402 where it would open, 403 where it would not, the
    # keyed 402 replayed after the payment arrived
    "payment_refusal_replayed_after_the_payment": [
        ("choose_tier", {"tier": "premium", "pay": False}),
        ("start", {"level": "premium", "mood": None}),
        ("start", {"level": "pro_exclusive", "mood": None}),
        ("downloads", {"level": "public", "ends": False}),
        ("downloads", {"level": "pro_exclusive", "ends": False}),
        ("start_with_a_key", {"level": "premium"}), ("provider_checkout_paid", {}),
        ("retry_keyed_start", {}), ("start", {"level": "premium", "mood": None})],
    # the checkout given up: 403 again, and its keyed 402 replayed as it was
    "payment_refusal_replayed_after_the_checkout_is_given_up": [
        ("choose_tier", {"tier": "pro", "pay": False}),
        ("start_with_a_key", {"level": "premium"}),
        ("downloads", {"level": "pro_exclusive", "ends": False}), ("cancel", {}),
        ("start", {"level": "premium", "mood": None}),
        ("downloads", {"level": "public", "ends": False}), ("retry_keyed_start", {})],
}


@pytest.mark.parametrize("sequence", sorted(KEYED_REFUSAL_SEQUENCES))
def test_the_rules_hold_when_a_keyed_refusal_is_replayed_later(idp, make_config, table_names,
                                                               billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, arguments in KEYED_REFUSAL_SEQUENCES[sequence]:
            getattr(machine, step)(**({} if step == "time_passes" else {"name": "ana"}),
                                   **arguments)
            machine.the_rules_hold()
    finally:
        machine.teardown()


# The provider moves people between addresses around a trial: every address an account has
# been verified with counts, live or erased, in any Unicode form, and every account linked
# through them however far (one trial per person).
SHARED, SHARED_FULLWIDTH = "shared@example.com", "ＳＨＡＲＥＤ@Example.com"
EMAIL_SEQUENCES = {
    "both_move_to_one_address_after_a_trial": [
        ("start_trial", "ana", {"tier": "premium"}),
        ("the_provider_changes_the_email", "ana", {"email": SHARED}),
        ("the_provider_changes_the_email", "ben", {"email": SHARED_FULLWIDTH}),
        ("start_trial", "ben", {"tier": "pro"})],
    "the_old_address_of_a_trial_taken_by_another": [
        ("start_trial", "ana", {"tier": "premium"}),
        ("the_provider_changes_the_email", "ana", {"email": SHARED}),
        ("the_provider_changes_the_email", "ben", {"email": "ana@example.com"}),
        ("start_trial", "ben", {"tier": "premium"})],
    "moved_after_a_trial_then_erased": [
        ("start_trial", "ana", {"tier": "premium"}),
        ("the_provider_changes_the_email", "ana", {"email": SHARED}),
        ("erase", "ana", {}),
        ("the_provider_changes_the_email", "ben", {"email": "ana@example.com"}),
        ("start_trial", "ben", {"tier": "pro"}), ("sign_in", "ana", {}),
        ("start_trial", "ana", {"tier": "pro"})],
    "an_erased_identity_signing_up_again_keeps_its_addresses": [
        ("start_trial", "ben", {"tier": "premium"}),
        ("the_provider_changes_the_email", "ana", {"email": "ben@example.com"}),
        ("the_provider_changes_the_email", "ana", {"email": SHARED}),
        ("erase", "ana", {}), ("sign_in", "ana", {}), ("start_trial", "ana", {"tier": "pro"})],
    # ana's second identity (ana@) is two links from ben (ben@, shared@) through ana (ana@,
    # shared@): one person, live or erased in the middle or at the end
    "two_links_away_from_a_trial": [
        ("the_provider_changes_the_email", "ben", {"email": SHARED}),
        ("start_trial", "ben", {"tier": "premium"}),
        ("the_provider_changes_the_email", "ana", {"email": SHARED_FULLWIDTH}),
        ("start_trial", SECOND_IDENTITY, {"tier": "pro"}),
        ("erase", "ben", {}), ("start_trial", SECOND_IDENTITY, {"tier": "pro"})],
    "two_links_away_through_an_erased_account": [
        ("the_provider_changes_the_email", "ana", {"email": SHARED}),
        ("the_provider_changes_the_email", "ben", {"email": SHARED}),
        ("start_trial", "ben", {"tier": "premium"}),
        ("erase", "ana", {}), ("start_trial", SECOND_IDENTITY, {"tier": "pro"})],
}


@pytest.mark.parametrize("sequence", sorted(EMAIL_SEQUENCES))
def test_the_rules_hold_when_the_provider_moves_people_between_addresses(
        idp, make_config, table_names, billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, name, arguments in EMAIL_SEQUENCES[sequence]:
            getattr(machine, step)(name=name, **arguments)
            machine.the_rules_hold()
            machine.the_trial_is_shown_used_once_the_person_used_it()
    finally:
        machine.teardown()


def test_the_rules_hold_under_any_sequence_of_actions(idp, make_config, table_names, billing,
                                                      monkeypatch):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, derandomize=DERANDOMIZE,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), database=None))


pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")


# The provider's own changes (its subscription ended, a plan switched in its billing portal)
# and offline licences, each step followed by every invariant (random exploration reaches
# these orders rarely).
PAID_AT_THE_PROVIDER = [("choose_tier", {"tier": "premium", "pay": False}),
                        ("provider_checkout_paid", {})]
PRO_PAID_AT_THE_PROVIDER = [("choose_tier", {"tier": "pro", "pay": False}),
                            ("provider_checkout_paid", {})]
TRIAL_CARD_AT_THE_PROVIDER = [("start_trial", {"tier": "premium"}),
                              ("choose_tier", {"tier": "premium", "pay": False}),
                              ("provider_checkout_paid", {})]
PROVIDER_SEQUENCES = {
    "ended_at_the_provider_while_paid": [
        *PAID_AT_THE_PROVIDER, ("downloads", {"level": "premium", "ends": False}),
        ("provider_ends_the_subscription", {}), ("lists_downloads", {}),
        ("time_passes", {"seconds": 32 * 86400}), ("expiry_job_runs", {}), ("sign_in", {})],
    "ended_at_the_provider_during_a_trial_then_resumed": [
        *TRIAL_CARD_AT_THE_PROVIDER, ("provider_ends_the_subscription", {}), ("resume", {}),
        ("time_passes", {"seconds": 15 * 86400}), ("expiry_job_runs", {}), ("sign_in", {})],
    "ended_at_the_provider_under_a_grant": [
        *PAID_AT_THE_PROVIDER, ("admin_grants", {"tier": "pro"}),
        ("provider_ends_the_subscription", {}), ("cancel", {}), ("resume", {}),
        ("admin_grants", {"tier": "premium"}), ("time_passes", {"seconds": 32 * 86400}),
        ("expiry_job_runs", {}), ("sign_in", {})],
    "ended_at_the_provider_while_past_due": [
        *PRO_PAID_AT_THE_PROVIDER, ("renewal_webhook", {"paid": False}),
        ("provider_ends_the_subscription", {}), ("choose_tier", {"tier": "premium", "pay": True}),
        ("time_passes", {"seconds": 3 * 86400}), ("expiry_job_runs", {})],
    "plan_switched_in_the_portal_both_ways": [
        *PRO_PAID_AT_THE_PROVIDER, ("downloads", {"level": "pro_exclusive", "ends": False}),
        ("portal_changes_the_plan", {"tier": "premium"}), ("lists_downloads", {}),
        ("renewal_webhook", {"paid": True}), ("portal_changes_the_plan", {"tier": "pro"}),
        ("choose_tier", {"tier": "premium", "pay": True}),
        ("portal_changes_the_plan", {"tier": "premium"}),
        ("time_passes", {"seconds": 32 * 86400}), ("expiry_job_runs", {})],
    "plan_switched_in_the_portal_after_a_cancel": [
        *PAID_AT_THE_PROVIDER, ("cancel", {}), ("portal_changes_the_plan", {"tier": "pro"}),
        ("resume", {}), ("portal_changes_the_cancel", {"cancel": False}),
        ("time_passes", {"seconds": 32 * 86400}), ("expiry_job_runs", {})],
    "plan_switched_in_the_portal_during_a_trial": [
        *TRIAL_CARD_AT_THE_PROVIDER, ("portal_changes_the_plan", {"tier": "pro"}),
        ("time_passes", {"seconds": 15 * 86400}), ("expiry_job_runs", {}), ("sign_in", {})],
    "licence_after_a_downgrade_and_a_refund": [
        *PRO_PAID_AT_THE_PROVIDER, ("renewal_webhook", {"paid": True}),
        ("downloads", {"level": "pro_exclusive", "ends": False}),
        ("downloads", {"level": "premium", "ends": False}),
        ("choose_tier", {"tier": "premium", "pay": True}), ("lists_downloads", {}),
        ("provider_refunds", {"latest": True, "how": "full"}), ("lists_downloads", {}),
        ("admin_assigns", {"level": "premium", "days": 1}),
        ("downloads", {"level": "premium", "ends": False}),
        ("time_passes", {"seconds": 3 * 86400}), ("lists_downloads", {})],
}


@pytest.mark.parametrize("sequence", sorted(PROVIDER_SEQUENCES))
def test_the_rules_hold_through_the_providers_own_changes_and_licences(
        idp, make_config, table_names, billing, monkeypatch, sequence):
    machine = _rules_machine(idp, make_config, table_names, billing, monkeypatch)()
    try:
        for step, arguments in PROVIDER_SEQUENCES[sequence]:
            if step not in ("time_passes", "expiry_job_runs"):
                arguments = {"name": "ana", **arguments}
            getattr(machine, step)(**arguments)
            machine.the_rules_hold()
            machine.the_provider_renews_what_is_shown()
            machine.nothing_renews_on_an_ended_subscription()
            machine.the_dashboard_offers_to_continue_only_what_plays()
    finally:
        machine.teardown()
