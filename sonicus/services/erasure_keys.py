"""The ``Idempotency-Key`` of an erasure, past the account (API.md "Retry-safe writes").

A key belongs to its user and goes with them; the erasure's own key would go with the account
it erases, and a retry of the erasure (same token, same key: its answer was lost) would sign up
a new account from the token and erase that. So the erasure keeps its key's row, in its own
transaction, under the tombstone's salted hash of the OIDC subject instead of the user
(``keep_past_erasure``). Until the key expires (24 h):

- a keyed write of that subject with no account (``answer_before_sign_up``, asked before a new
  account is created) is decided by that row, as a claim would be: the kept answer replayed,
  409 while the erasure still runs, 422 for another request; nothing is created;
- an account created for the subject meanwhile (an unkeyed request) takes the rows over
  (``adopt_erasure_keys``): the erasure's retry is then replayed by the ordinary claim.

The row holds the hash (the tombstone has it too), the client's key, the request's fingerprint
and the answer (no personal data): see ``erasure.KEPT_AFTER_ERASURE``.
"""

from __future__ import annotations

import time

from sqlalchemy import or_, select, update

from .. import clock
from ..extensions import db
from ..models.idempotency import DONE, IdempotencyKey
from . import idempotency
from .erasure import subject_hash
from .idempotency_answers import KeptAnswer, kept_answer, key_in_use, key_reused

_c = IdempotencyKey.__table__.c


def keep_past_erasure(user_id: int, claim: int | None, subject: str) -> None:
    """In the erasure's transaction, before the user's row goes: the erasure's own key
    (``claim``: its row's id, None without a key) and the keys of an earlier erasure this
    account took over stay, under the subject's hash, instead of going with the account."""
    kept = IdempotencyKey.subject_hash.is_not(None)
    if claim is not None:
        kept = or_(IdempotencyKey.id == claim, kept)
    db.session.execute(update(IdempotencyKey).where(IdempotencyKey.user_id == user_id, kept)
                       .values(user_id=None, subject_hash=subject_hash(subject)))


def adopt_erasure_keys(user_id: int, subject: str) -> None:
    """In a new account's transaction: the keys an erasure of its subject left are its own."""
    db.session.execute(update(IdempotencyKey)
                       .where(IdempotencyKey.subject_hash == subject_hash(subject),
                              IdempotencyKey.user_id.is_(None))
                       .values(user_id=user_id))


def answer_before_sign_up(subject: str, key: str, fingerprint: str) -> KeptAnswer | None:
    """For a keyed write of ``subject``, which has no account: the kept answer of the erasure
    that sent ``key``, or None when no erasure of this subject kept it (or it expired, or its
    request died before answering): the account is created and the write runs. Raises 422
    ``idempotency_key_reused`` for another request, 409 ``idempotency_key_in_use`` while the
    erasure has not answered (read again for up to ``idempotency.ANSWER_WAIT`` first)."""
    hashed, now = subject_hash(subject), clock.now()
    deadline = time.monotonic() + idempotency.ANSWER_WAIT.total_seconds()
    engine = idempotency._engine()
    while True:
        with engine.connect() as conn:
            row = conn.execute(
                select(_c.fingerprint, _c.state, _c.response_status, _c.response_body,
                       _c.response_headers, _c.created_at, _c.expires_at)
                .where(_c.subject_hash == hashed, _c.key == key, _c.user_id.is_(None))
            ).one_or_none()
        if row is None or idempotency._is_takeable(row, now):
            return None
        if row.fingerprint != fingerprint:
            raise key_reused()
        if row.state == DONE:
            return kept_answer(row)
        if time.monotonic() >= deadline:
            raise key_in_use()
        time.sleep(idempotency.ANSWER_POLL)
