"""The email addresses a person's accounts have been verified with, and the free trial: one
per person, not per account nor per address.

Every address an account has been verified with counts for it for as long as it lives
(``VerifiedEmail``, noted at sign-in, kept when the provider's claims move it to another
address), and for good once it is erased (a tombstone per address,
``erasure.add_tombstone``). The person is every account linked to this one through shared
addresses, however many links away (A and B share a@, B and C share b@: A, B and C are one
person), live or erased (an erased sign-in subject is one account: all its tombstones). An
account may not start a trial while another account of its person has used one; an address
never verified on an account is not that account's to speak for and burns nothing.

The person is found by one walk (a recursive CTE over accounts and addresses, each met once,
nearest first) that stops after ``PERSON_LIMIT`` of them: a person with more is refused the
trial (shown used), so that a chain of accounts made to slow the walk down costs its maker
the trial and nobody a slow query.

Trials of one person are serialised by a transaction-scoped advisory lock per address of the
person (PostgreSQL), taken in one order, after a first walk; the decision walks again. A trial
share-locks its own account's row first, so its own addresses stay as they are until it is
decided (a sign-in adding one waits). Two accounts of a person asking at once, however far
apart: the first walk of either reaches the other through one of the other's own addresses,
which both lock, so one waits for the other's decision and then sees its trial. Links are
never taken away (an erasure turns an account's addresses into its tombstones), so a link
committed after both first walks only makes them one person after both trials were decided:
as if they came first, as a link made the next day would.
"""

from __future__ import annotations

from functools import cache

from sqlalchemy import (
    BindParameter,
    Integer,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    union,
    union_all,
)

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


# The walk's nodes: (key, account). An address: its hash, ADDRESS. A live account: "",
# its id. An erased sign-in subject: its hash, ERASED.
ADDRESS, ERASED = 0, -1
PERSON_LIMIT = 100  # accounts and addresses of one person walked at most
KEY = String(64)  # the hashes' type: the walk's keys are compared with them as they are


def _key(value):
    return cast(value if isinstance(value, BindParameter) else literal(value), KEY)


def _account(value):
    return cast(value if isinstance(value, BindParameter) else literal(value), Integer)


def _edges():
    """Each link both ways: an address and a live account verified with it; an address and
    the erased subject whose tombstone names it. Plain columns and typed constants, no
    filter: PostgreSQL then looks each step up in the tables' indexes."""
    live, tomb = VerifiedEmail, ErasureTombstone
    return union_all(
        _edge(live.email_hash, _account(ADDRESS), _key(""), live.user_id),
        _edge(_key(""), live.user_id, live.email_hash, _account(ADDRESS)),
        _edge(tomb.email_hash, _account(ADDRESS), tomb.subject_hash, _account(ERASED)),
        _edge(tomb.subject_hash, _account(ERASED), tomb.email_hash, _account(ADDRESS)),
    ).subquery("link")


def _edge(from_key, from_account, to_key, to_account):
    return select(from_key.label("from_key"), from_account.label("from_account"),
                  to_key.label("to_key"), to_account.label("to_account"))


def _values(user_id: int, email: str | None, subject: str | None) -> tuple[tuple, dict]:
    """The shape of the walk from this account (how many hashes its current address has,
    whether a subject is asked for) and the values of its parameters."""
    hashes = tombstone_email_hashes(email)
    values = {"person_account": user_id, "person_limit": PERSON_LIMIT,
              **{f"person_address_{i}": hashed for i, hashed in enumerate(hashes)}}
    if subject is not None:
        values["person_subject"] = subject_hash(subject)
    return (len(hashes), subject is not None), values


def _unbound(name: str, type_):
    """A parameter of a statement built once and run with its values (building it costs
    more than running it)."""
    return bindparam(name, type_=type_)


def _person(shape: tuple, param):
    """The accounts and addresses of the person, from the account ``person_account`` (its
    current address's hashes, verified or not, and the erased accounts of the subject
    ``person_subject``, as ``shape`` says), nearest first: a subquery of (key, account) rows,
    at most ``person_limit`` + 1 of them (one more: the person is larger than the limit).
    ``param(name, type)``: the parameter of that name."""
    addresses, erased = shape
    seeds = [select(_key("").label("key"),
                    _account(param("person_account", Integer)).label("account"))]
    seeds += [select(_key(param(f"person_address_{i}", KEY)).label("key"),
                     _account(ADDRESS).label("account")) for i in range(addresses)]
    if erased:  # where it was erased before
        seeds.append(select(ErasureTombstone.subject_hash, _account(ERASED)).where(
            ErasureTombstone.subject_hash == param("person_subject", KEY)).distinct())
    seed = union(*seeds).subquery("seed")
    walk = select(seed.c.key, seed.c.account).cte("person_walk", recursive=True, nesting=True)
    link = _edges()
    walk = walk.union(
        select(link.c.to_key, link.c.to_account).select_from(walk.join(
            link, and_(link.c.from_key == walk.c.key, link.c.from_account == walk.c.account)))
        .where(link.c.to_key.is_not(None)))  # a tombstone of no address links nothing
    # Read lazily: the walk stops once the limit's rows are read (referenced once only, so
    # that SQLite does not walk it all first either).
    return select(walk.c.key, walk.c.account) \
        .limit(param("person_limit", Integer) + 1).subquery("person")


@cache
def _addresses_of_the_person(shape: tuple):
    person = _person(shape, _unbound)
    return select(person.c.key).where(person.c.account == ADDRESS).distinct() \
        .order_by(person.c.key)


def lock_trials_of_account(user: User) -> None:
    """Take the trial locks of every address of the person (its account's current one, every
    one it has been verified with, and those of every account linked to it), in one order,
    for a trial about to be decided. The user's row is share-locked first (and read again):
    an address a sign-in is adding to it meanwhile is committed before, or waits until the
    trial is decided."""
    db.session.execute(select(User).where(User.id == user.id).with_for_update(read=True)
                       .execution_options(populate_existing=True))
    if db.session.get_bind().dialect.name != "postgresql":
        return
    shape, values = _values(user.id, user.email, user.oidc_sub)
    hashes = db.session.execute(_addresses_of_the_person(shape), values).scalars().all()
    for hashed in hashes:
        db.session.execute(select(func.pg_advisory_xact_lock(
            func.hashtextextended(f"sonicus-trial:{hashed}", 0))))


def trial_used_by_the_person(user_id: int, email: str | None,
                             subject: str | None = None) -> bool:
    """Another account of the person, live or erased, used the trial, or the person is larger
    than the walk goes (one statement)."""
    shape, values = _values(user_id, email, subject)
    return bool(db.session.execute(_trial_used_statement(shape), values).scalar())


@cache
def _trial_used_statement(shape: tuple):
    return select(_trial_used(shape, _unbound))


def trial_used_by_the_person_clause(user_id: int, email: str | None,
                                    subject: str | None = None):
    """``trial_used_by_the_person`` as a condition to ask with others in one statement. The
    person is walked from the account: every address it has been verified with, and its
    current one (verified or not: an address someone else verified and used the trial with
    is shown used); ``subject``: also from the erased accounts of that sign-in subject."""
    shape, values = _values(user_id, email, subject)
    return _trial_used(shape, lambda name, type_: bindparam(name, values[name], type_=type_,
                                                            unique=True))


def _trial_used(shape: tuple, param):
    person = _person(shape, param)
    live = and_(person.c.account > 0, person.c.account != param("person_account", Integer),
                select(UserSubscription.id).where(UserSubscription.user_id == person.c.account,
                                                  UserSubscription.trial_used.is_(True))
                .exists())
    erased = and_(person.c.account == ERASED, select(ErasureTombstone.id).where(
        ErasureTombstone.subject_hash == person.c.key,
        ErasureTombstone.trial_used.is_(True)).exists())
    used = func.coalesce(func.max(case((or_(live, erased), 1), else_=0)), 0)
    return select(or_(func.count() > param("person_limit", Integer), used == 1)) \
        .select_from(person).scalar_subquery()
