"""What an erasure leaves behind, and what it owes.

- A tombstone per erased identity (``ErasureTombstone``): HMAC-SHA256 hashes, keyed with the
  app's ``SECRET_KEY``, of the OIDC subject and of an email the account was verified with
  (its ``models.user.email_key``), with ``trial_used``: one per address the account has been
  verified with, all of one erasure. A later account of the same subject or of any of those
  addresses gets no second trial (``trial_used_before``, ``person_emails``). Nothing in it
  can be read back as a person.
- An owed cancellation (``OwedCancellation``, an outbox row) for a provider subscription:
  inserted in the erasure's own transaction (``owe_cancellation``), tried once right after
  its commit (``attempt_owed_cancellation``), retried with backoff by the periodic job
  ``process_owed_cancellations`` until the provider confirms. One row, one cancellation: the
  row is locked while it is tried and done rows are never tried again.
- Later provider notices about an erased customer or subscription change nothing
  (``is_erased_billing``). A subscription the provider starts for an erased account afterwards
  (a checkout left open in another tab, paid after the erasure) is owed a cancellation too.

Changing ``SECRET_KEY`` makes earlier tombstones unmatchable (the trial becomes available
again to those identities).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Text, and_, cast, func, or_, select

from .. import clock
from ..billing import BillingUnavailable, get_provider
from ..billing.base import ALREADY_CANCELED
from ..extensions import db
from ..models import (
    AuditLog,
    BillingEvent,
    ErasureTombstone,
    OwedCancellation,
    SubscriptionEvent,
    User,
    UserSubscription,
    VerifiedEmail,
)
from ..models.user import email_key
from .transaction import unit_of_work

log = logging.getLogger(__name__)

FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
JOB_BATCH = 50


@dataclass(frozen=True)
class KeptItem:
    what: str
    why: str


# What stays after an erasure, and why: the export says it, the README says the same.
KEPT_AFTER_ERASURE = (
    KeptItem("A tombstone: salted one-way hashes (HMAC-SHA256) of your sign-in subject and of "
             "every email address your account was verified with, whether you used the free "
             "trial, and the date of the erasure.",
             "So that the free trial stays one per person; the hashes cannot be turned back "
             "into your identity or email address."),
    KeptItem("Your listening sessions, anonymised: no account, no notes, no moods.",
             "Aggregate statistics of the platform (how packages are listened to)."),
    KeptItem("For 24 hours, the Idempotency-Key the erasure was sent with and its answer, "
             "under the same salted hash of your sign-in subject.",
             "So that a retry of the erasure repeats its answer instead of creating and "
             "erasing a new account."),
    KeptItem("The payment provider's customer and subscription ids of a paid subscription, "
             "with the state of its cancellation.",
             "To cancel the subscription at the provider at once and until it confirms, and to "
             "recognise the provider's later notices so that nothing is charged again."),
)
ERASURE_STATEMENT = ("Erasing your account deletes everything in this export except what is "
                     "listed under kept.")


# ---- tombstones ---------------------------------------------------------------------------

def _hash(kind: str, value: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def subject_hash(subject: str) -> str:
    return _hash("oidc-subject", subject)


def email_hash(email: str | None) -> str | None:
    key = email_key(email)
    return _hash("email", key) if key else None


def tombstone_email_hashes(email: str | None) -> list[str]:
    """The hashes a tombstone of ``email`` may carry: of its ``email_key``, and of the form
    tombstones were written in before (stripped and lowercased only) where that differs."""
    hashed = email_hash(email)
    if hashed is None:
        return []
    legacy = _hash("email", email.strip().lower())
    return [hashed] if legacy == hashed else [hashed, legacy]


def _matching(subject: str | None, email: str | None):
    """Tombstones of this subject or email (``subject`` None: of the email only)."""
    conditions = [] if subject is None else [ErasureTombstone.subject_hash
                                             == subject_hash(subject)]
    hashed_email = tombstone_email_hashes(email)
    if hashed_email:
        conditions.append(ErasureTombstone.email_hash.in_(hashed_email))
    return or_(*conditions)


def trial_used_before(subject: str | None, email: str | None) -> bool:
    """An erased account of this subject or this email had used its trial."""
    clause = trial_used_before_clause(subject, email)
    return clause is not None and bool(db.session.execute(select(clause)).scalar())


def trial_used_before_clause(subject: str | None, email: str | None):
    """``trial_used_before`` as an EXISTS clause to ask with others in one statement; None
    when there is nothing to match (no subject, no email)."""
    if subject is None and not email_hash(email):
        return None
    return select(ErasureTombstone.id).where(
        _matching(subject, email), ErasureTombstone.trial_used.is_(True)).exists()


def tombstones_of(subject: str, email: str | None) -> list[ErasureTombstone]:
    """The tombstones of earlier erased accounts of this subject or email, oldest first (an
    erasure of an account verified with several addresses left one per address)."""
    return list(db.session.execute(
        select(ErasureTombstone).where(_matching(subject, email))
        .order_by(ErasureTombstone.erased_at, ErasureTombstone.id)).scalars())


def add_tombstone(user: User, sub: UserSubscription | None, now: datetime) -> ErasureTombstone:
    """The tombstones of ``user``, in the caller's (the erasure's) transaction: one per
    address the account has been verified with (``VerifiedEmail``; the first one names its
    current address if verified), each with the subject. The trial counts as used when this
    account used it or an earlier erased one of the same subject or email did (so an erase,
    sign in, erase again cycle cannot shake it off). The first one is returned."""
    used = bool(sub is not None and sub.trial_used) or trial_used_before(user.oidc_sub,
                                                                         user.email)
    # An address the provider has not verified is not this person's to speak for: no hash
    # of it, or its owner's trial would be burned by whoever claimed it.
    current = email_hash(user.email) if user.email_verified else None
    earlier = sorted(set(db.session.execute(select(VerifiedEmail.email_hash).where(
        VerifiedEmail.user_id == user.id)).scalars()) - {current})
    tombstones = [ErasureTombstone(subject_hash=subject_hash(user.oidc_sub), email_hash=hashed,
                                   trial_used=used, erased_at=now)
                  for hashed in [current, *earlier]]
    db.session.add_all(tombstones)
    return tombstones[0]


# ---- what the account did as an administrator ----------------------------------------------

ERASED_ACTOR = "erased user"


def forget_grants_by(actor_id: int) -> int:
    """Other users' tier grants name the administrator who made them by email (their
    subscription event's ``details.by``, in those users' history and export): an erased
    administrator's are renamed ``erased user``, as their audit entries are. In the erasure's
    transaction, before its audit entries are anonymised: the grants are found through them
    (each names its user and the address the grant was signed with, whatever the account's
    address became since), so a grant of another administrator with an address this account
    also had is left as it is."""
    made = db.session.execute(select(AuditLog.target_id, AuditLog.actor_label).where(
        AuditLog.actor_id == actor_id, AuditLog.action == "user.tier_grant").distinct()).all()
    grants = [and_(SubscriptionEvent.user_id == int(target),
                   SubscriptionEvent.details["by"].as_string() == label)
              for target, label in made if target and target.isdigit() and label]
    if not grants:
        return 0
    events = db.session.execute(select(SubscriptionEvent).where(
        SubscriptionEvent.type == "complimentary_grant", or_(*grants))).scalars().all()
    for event in events:
        event.details = {**event.details, "by": ERASED_ACTOR}
    return len(events)


# ---- provider notices received before the erasure ------------------------------------------

def without_content(event: dict, outcome: str | None) -> dict:
    """What is kept of an erased account's provider notice: that it came, not what it said
    (invoices carry the customer's email, name and address)."""
    return {"id": event.get("id"), "type": event.get("type"), "created": event.get("created"),
            "sonicus_outcome": outcome}


def scrub_billing_events(sub: UserSubscription | None, email: str | None) -> int:
    """Empty the stored provider notices of this account, in the erasure's transaction: the
    rows stay (their event ids keep webhook replays harmless), their content goes. A notice is
    the account's when its text names the account's provider customer, subscription or
    checkout, or its email (pass it only when verified: another person's otherwise), as a
    whole JSON string (``"cus_1"`` is not ``"cus_12"``). Erasure
    is rare, so a scan of the notices' text is acceptable."""
    needles = [json.dumps(value) for value in (
        sub.provider_customer_id if sub else None, sub.provider_subscription_id if sub else None,
        sub.checkout_reference if sub else None) if value]
    text = cast(BillingEvent.payload, Text)
    conditions = [text.contains(n, autoescape=True) for n in needles]
    if (email or "").strip():
        # as the customer typed it at the provider: in any case (ASCII letters; other
        # letters are escaped in the stored JSON, compared as written)
        conditions.append(func.lower(text).contains(json.dumps(email.strip()).lower(),
                                                    autoescape=True))
    if not conditions:
        return 0
    events = db.session.execute(select(BillingEvent).where(or_(*conditions))).scalars().all()
    for event in events:
        payload = event.payload or {}
        event.payload = without_content(payload, payload.get("sonicus_outcome"))
    return len(events)


# ---- owed cancellations -------------------------------------------------------------------

def owe_cancellation(sub: UserSubscription | None, now: datetime, *,
                     ended: bool = False) -> OwedCancellation | None:
    """An owed cancellation for the provider subscription of a LOCKED row, in the caller's
    (the erasure's) transaction; None when there is nothing at a provider to cancel (starter,
    complimentary, a trial without a card: no provider subscription). ``ended``: the
    provider confirmed its end already (a grant canceled it): the row is written settled,
    remembering the subscription as an erased account's, and nothing is asked again."""
    if sub is None or not sub.provider_subscription_id:
        return None
    return owe(sub.provider or current_app.config["BILLING_PROVIDER"],
               sub.provider_customer_id, sub.provider_subscription_id, now,
               settled=ALREADY_CANCELED if ended else None)


def owe(provider: str, customer_id: str | None, subscription_id: str,
        now: datetime, settled: str | None = None) -> OwedCancellation:
    """An owed cancellation of this provider subscription, in the caller's transaction
    (flushed: its id is known); ``settled``: the outcome of a cancellation done already (the
    row only remembers the subscription as an erased account's)."""
    owed = OwedCancellation(provider=provider, customer_id=customer_id,
                            subscription_id=subscription_id, attempts=1 if settled else 0,
                            next_attempt_at=now, created_at=now, outcome=settled,
                            done_at=now if settled else None)
    db.session.add(owed)
    db.session.flush()
    return owed


def expire_open_checkout(provider: str | None, session_id: str | None) -> None:
    """After an erasure: the account's open checkout page can no longer be paid. Never
    raises: a payment that races this (or arrives while the provider cannot be reached) is
    refunded when its notice comes (``webhooks``: an erased account's payment)."""
    if not session_id:
        return
    try:
        get_provider(provider or current_app.config["BILLING_PROVIDER"]) \
            .expire_checkout(session_id)
    except BillingUnavailable:
        log.warning("the erased account's checkout was not expired; a payment of it will be "
                    "refunded")


def is_erased_account(user_id: int | None) -> bool:
    """``user_id`` (from our metadata at the provider) named an account that is gone: user
    ids are never reused, and erasure is the only way an account goes."""
    return user_id is not None and db.session.get(User, user_id) is None


def is_erased_billing(customer_id: str | None, subscription_id: str | None) -> bool:
    """The provider customer or subscription belonged to an erased account."""
    conditions = []
    if subscription_id:
        conditions.append(OwedCancellation.subscription_id == subscription_id)
    if customer_id:
        conditions.append(OwedCancellation.customer_id == customer_id)
    if not conditions:
        return False
    return db.session.execute(
        select(OwedCancellation.id).where(or_(*conditions)).limit(1)).first() is not None


def _backoff(attempts: int) -> timedelta:
    """1, 2, 4, ... minutes after the n-th failed attempt, at most an hour."""
    return min(FIRST_RETRY * (2 ** max(attempts - 1, 0)), LONGEST_RETRY)


def _try(owed: OwedCancellation, now: datetime) -> str:
    """Ask the provider to cancel a LOCKED owed row; done when it confirms, else the next
    attempt is scheduled. The outcome."""
    owed.attempts += 1
    try:
        outcome = get_provider(owed.provider).cancel_now(owed.customer_id, owed.subscription_id)
    except Exception as exc:  # BillingUnavailable, or anything unforeseen: try again later
        if not isinstance(exc, BillingUnavailable):
            log.exception("provider cancellation %s failed unexpectedly", owed.id)
        owed.last_error = (str(exc.description) if isinstance(exc, BillingUnavailable)
                           else type(exc).__name__)[:500]
        owed.next_attempt_at = now + _backoff(owed.attempts)
        log.warning("provider cancellation %s not confirmed (attempt %d); next at %s",
                    owed.id, owed.attempts, owed.next_attempt_at.isoformat())
        return "retry_later"
    owed.done_at, owed.outcome, owed.last_error = now, outcome, None
    return outcome


def _lock_owed(condition) -> OwedCancellation | None:
    return db.session.execute(
        select(OwedCancellation).where(OwedCancellation.done_at.is_(None), condition)
        .order_by(OwedCancellation.next_attempt_at, OwedCancellation.id).limit(1)
        .with_for_update(skip_locked=True).execution_options(populate_existing=True)
    ).scalar_one_or_none()


def attempt_owed_cancellation(owed_id: int, now: datetime | None = None) -> str | None:
    """Try one owed cancellation now (right after the erasure committed). Never raises: the
    erasure is done whatever happens here, and the job retries what is still owed."""
    now = now or clock.now()
    try:
        with unit_of_work():
            owed = _lock_owed(OwedCancellation.id == owed_id)
            if owed is None:
                return None  # done already, or being tried by the job right now
            return _try(owed, now)
    except Exception:
        log.exception("provider cancellation %s could not be tried; the job will retry",
                      owed_id)
        return None


def process_owed_cancellations(now: datetime | None = None, batch: int = JOB_BATCH) -> dict:
    """The periodic job: every owed cancellation whose next attempt is due, one transaction
    each (its row locked, ``SKIP LOCKED``: safe on several workers). A failed one is due again
    after its backoff, so it is tried at most once per run."""
    now = now or clock.now()
    counts: dict[str, int] = {}
    for _ in range(batch):
        with unit_of_work():
            owed = _lock_owed(OwedCancellation.next_attempt_at <= now)
            if owed is None:
                break
            outcome = _try(owed, now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return {"attempted": sum(counts.values()), "outcomes": counts, "ran_at": now}
