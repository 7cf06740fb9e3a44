"""The email addresses a person's accounts have been verified with, and the free trial: one
per person, not per account nor per address.

Every address an account has been verified with counts for it for as long as it lives
(``VerifiedEmail``, noted at sign-in, kept when the provider's claims move it to another
address), and for good once it is erased (a tombstone per address,
``erasure.add_tombstone``). An account may not start a trial while another account that
shares one of its addresses, live or erased, has used one; an address never verified on an
account is not that account's to speak for and burns nothing.

Trials of one address are serialised by a transaction-scoped advisory lock per address
(PostgreSQL): two accounts of a person asking at once cannot both start a trial. A trial
share-locks its own account's row, so an address a sign-in adds to the account meanwhile is
decided with it. An address another account gains while a trial is being decided needs no
lock: the trial is decided as if it came first.
"""

from __future__ import annotations

from sqlalchemy import func, or_, select

from ..extensions import db
from ..models import ErasureTombstone, User, UserSubscription, VerifiedEmail
from .erasure import email_hash, subject_hash, tombstone_email_hashes
from .transaction import dialect_insert


def note_verified_email(user_id: int, email: str | None) -> None:
    """``email`` is verified on the account (the token says so): noted, in the caller's
    transaction (which holds the user's row)."""
    hashed = email_hash(email)
    if hashed is not None:
        _insert(user_id, hashed)


def _insert(user_id: int, hashed: str) -> None:
    db.session.execute(dialect_insert()(VerifiedEmail).values(user_id=user_id, email_hash=hashed)
                       .on_conflict_do_nothing(index_elements=["user_id", "email_hash"]))


def adopt_erased_emails(user_id: int, subject: str) -> None:
    """A new account of a sign-in subject erased before: every address the erased accounts
    were verified with (their tombstones) counts for it too, in the caller's transaction. The
    identity is the same person whatever its account became."""
    hashes = select(ErasureTombstone.email_hash).where(
        ErasureTombstone.subject_hash == subject_hash(subject),
        ErasureTombstone.email_hash.is_not(None)).distinct()
    for hashed in db.session.execute(hashes).scalars():
        _insert(user_id, hashed)


def lock_trials_of_account(user: User) -> None:
    """Take the trial locks of every address of the account (its current one and every one
    it has been verified with), in one order, for a trial about to be decided. The user's
    row is share-locked first (and read again): an address a sign-in is adding to it
    meanwhile is committed before, or waits until the trial is decided."""
    db.session.execute(select(User).where(User.id == user.id).with_for_update(read=True)
                       .execution_options(populate_existing=True))
    hashes = set(db.session.execute(select(VerifiedEmail.email_hash)
                                    .where(VerifiedEmail.user_id == user.id)).scalars())
    current = email_hash(user.email)
    if current is not None:
        hashes.add(current)
    if db.session.get_bind().dialect.name != "postgresql":
        return
    for hashed in sorted(hashes):
        db.session.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended(f"sonicus-trial:{hashed}", 0))))


def trial_used_by_the_person(user_id: int, email: str | None,
                             subject: str | None = None) -> bool:
    """Another account of the person, live or erased, used the trial (one statement)."""
    return bool(db.session.execute(
        select(trial_used_by_the_person_clause(user_id, email, subject))).scalar())


def trial_used_by_the_person_clause(user_id: int, email: str | None,
                                    subject: str | None = None):
    """``trial_used_by_the_person`` as a condition to ask with others in one statement. The
    person's addresses: every one the account has been verified with, and its current one
    (verified or not: an address someone else verified and used the trial with is shown
    used). ``subject``: also an erased account of that sign-in subject."""
    mine = select(VerifiedEmail.email_hash).where(VerifiedEmail.user_id == user_id)
    current = email_hash(email)

    def shares_an_address(column):
        return or_(column.in_(mine), column == current) if current else column.in_(mine)

    live = select(VerifiedEmail.user_id).join(
        UserSubscription, UserSubscription.user_id == VerifiedEmail.user_id).where(
        VerifiedEmail.user_id != user_id, UserSubscription.trial_used.is_(True),
        shares_an_address(VerifiedEmail.email_hash)).exists()
    erased = or_(ErasureTombstone.email_hash.in_(mine),
                 ErasureTombstone.email_hash.in_(tombstone_email_hashes(email)))
    if subject is not None:
        erased = or_(erased, ErasureTombstone.subject_hash == subject_hash(subject))
    tombstone = select(ErasureTombstone.id).where(
        ErasureTombstone.trial_used.is_(True), erased).exists()
    return or_(live, tombstone)
