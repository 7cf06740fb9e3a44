"""Retry-safe writes in the request: the ``Idempotency-Key`` of a signed-in write claimed once
the caller is known (``claim_idempotency_key``, called by ``auth.require_user`` and
``require_super_admin``: a 401, a 403 of the admin check and a rate limit's 429 come before and
are never kept), and the answer kept by an after-request hook, which sees the final answer
whether the view returned or raised. The rules and the table: ``services/idempotency.py``.

Where the database allows (``idempotency.send_claim``), the claim is sent once the caller is
known and read as late as is safe, so that its round trip travels while the request does
other work:

- By default, just before the view function runs (``envelope.Blueprint.response`` calls
  ``g.before_view``): the claim travels while the request's body is parsed; the view never
  runs before the claim is read.
- For a view marked ``@no_effect_before_commit``, just before its transaction first COMMITs
  (a ``before_commit`` hook of the app's session): the claim travels while the view does its
  own database work. Such a view does nothing outside its database transaction before that
  commit (no provider call, no publish, no job, no push, no other session or connection), so
  a request whose claim turns out not to be its own (the key running: 409; done: the replay;
  another request's: 422) has done nothing anyone can see: the commit is refused
  (``ClaimRefused``), the transaction rolled back, and the answer is the one the key decided.
  Every later commit of that request is refused too. A view that commits several times has
  the claim read before the first. Its row locks must not be waited for by a transaction
  that holds the caller's row of ``users`` ``FOR UPDATE`` (the claim's reference to the
  caller waits behind such a lock, and the view would wait for the claim while holding its
  own): see the README.

A request that ends before the claim is read (its body refused, or a marked view that raised
or answered without committing) reads it in the after-request hook: its answer is kept if the
key was its own, and replaced by what the key decided (a replay, 409, 422) if it was not.
"""

from __future__ import annotations

import functools
import logging

from flask import abort, current_app, g, has_app_context
from sqlalchemy import event

from . import clock
from .api_errors import ApiError
from .extensions import api, db
from .idempotency_http import idempotency_key, kept_headers, replay_response, request_fingerprint
from .services import erasure_keys, idempotency

log = logging.getLogger(__name__)

# Set on a view marked ``no_effect_before_commit`` (and, through ``functools.wraps``, on the
# decorators around it): ``auth`` passes it to ``claim_idempotency_key``.
CLAIM_AT_COMMIT = "sonicus_claim_at_commit"


class ClaimRefused(Exception):
    """Raised by a commit of a ``no_effect_before_commit`` view whose request's claim was not
    its own (or could not be read): ``refusal`` is the answer to give instead (a replay) or
    the error to raise (409, 422, 404, the database's)."""

    def __init__(self, refusal):
        super().__init__("the Idempotency-Key was not this request's")
        self.refusal = refusal


def no_effect_before_commit(view):
    """Mark a view (the method itself, innermost decorator) that does nothing outside its
    database transaction before that transaction commits on the app's session: no payment
    provider, no publish, no job, no push, no other session or connection; whatever it does
    beyond its transaction, it does after a commit. Its claim of an ``Idempotency-Key`` is read
    just before its first commit instead of before it runs (see the module's doc); a commit
    refused for the key is answered with what the key decided.

    The view's own row locks must not be waited for by a transaction that holds the caller's
    row of ``users`` ``FOR UPDATE`` (see the README's "Retry-safe writes"): check before
    marking a view."""

    @functools.wraps(view)
    def at_commit(*args, **kwargs):
        state = g._get_current_object().__dict__
        armed = "idempotency_pending" in state
        if armed:
            state["claim_at_commit"] = True
        try:
            return view(*args, **kwargs)
        except ClaimRefused:
            refusal = state.pop("idempotency_refused", None)
            if refusal is None:  # pragma: no cover (raised only with a refusal kept)
                raise
            if isinstance(refusal, BaseException):
                raise refusal from None
            return refusal
        finally:
            if armed:  # not read before the view ended: the after-request hook reads it
                state.pop("claim_at_commit", None)

    setattr(at_commit, CLAIM_AT_COMMIT, True)
    return at_commit


def claim_idempotency_key(user_id: int, settles_later: bool = False,
                          at_commit: bool = False):
    """None when the view is to run (having claimed the request's key, if it sends one, or
    left the claim to be read before the view when ``settles_later``, or before its first
    commit when ``at_commit`` too), or the answer to give instead."""
    key = idempotency_key()
    if key is None:
        return None
    outcome = idempotency.send_claim(user_id, key, request_fingerprint())
    if isinstance(outcome, idempotency.PendingClaim):
        if settles_later:
            state = g._get_current_object().__dict__
            state["idempotency_pending"] = outcome
            if not at_commit:
                state["before_view"] = _read_pending_claim
            return None
        outcome = outcome.outcome()
    return _claimed(outcome)


def replay_before_sign_up(subject: str) -> None:
    """Before an account is created for ``subject`` in a request (``auth``): a keyed write
    whose key an erasure of that subject kept is answered as that key decides (its answer
    replayed, 409, 422), and no account is created (``services.erasure_keys``)."""
    key = idempotency_key()
    if key is None:
        return
    kept = erasure_keys.answer_before_sign_up(subject, key, request_fingerprint())
    if kept is not None:
        abort(replay_response(kept.status, kept.body, kept.headers, clock.now()))


def request_claim() -> int | None:
    """The id of the key this request claimed (its row), once the view runs; else None."""
    return g._get_current_object().__dict__.get("idempotency_claim")


def _claimed(outcome):
    if isinstance(outcome, idempotency.KeptAnswer):
        return replay_response(outcome.status, outcome.body, outcome.headers, clock.now())
    g.idempotency_claim = outcome
    return None


def _read_pending_claim():
    """``g.before_view``: None when the view is to run, or the answer to give instead."""
    pending = g._get_current_object().__dict__.pop("idempotency_pending", None)
    return None if pending is None else _claimed(pending.outcome())


def _read_claim_before_commit(session) -> None:
    """The app's session's ``before_commit``: in a ``no_effect_before_commit`` view whose
    claim is not read yet, read it; refuse the commit (``ClaimRefused``: the caller rolls
    back) when the key was not this request's, or its claim could not be read."""
    if not has_app_context():
        return
    state = g._get_current_object().__dict__
    if not state.get("claim_at_commit"):
        return
    refusal = state.get("idempotency_refused")
    if refusal is None:
        try:
            refusal = _read_pending_claim()
        except Exception as exc:  # 404 (the account is gone), the database's error
            refusal = exc
        if refusal is None:  # this request's: the commit goes ahead, and every later one
            state.pop("claim_at_commit", None)
            return
        state["idempotency_refused"] = refusal
    raise ClaimRefused(refusal)


def _refused_answer(refusal):
    """The answer for a refusal that a view caught instead of letting it reach
    ``no_effect_before_commit`` (nothing was committed either way)."""
    if not isinstance(refusal, BaseException):
        return refusal
    if not isinstance(refusal, ApiError):
        log.error("idempotency claim not read: %s", type(refusal).__name__)
        refusal = ApiError(503, "service_unavailable",
                           "The service is briefly unavailable; try again shortly.",
                           headers={"Retry-After": "2"})
    return current_app.make_response(api.handle_http_exception(refusal))


def _keep_idempotent_answer(response):
    """Keep the answer of a request that claimed a key (below 500), or give the key back.
    Never fails the request: the write may have committed (API.md: a committed write never
    answers 5xx); a key that could not be kept stays ``running`` until it is stale."""
    state = g._get_current_object().__dict__
    state.pop("claim_at_commit", None)
    if "idempotency_refused" in state:  # a view caught its refused commit and answered
        return _refused_answer(state.pop("idempotency_refused"))
    if "idempotency_pending" in state:  # not read before the view or a commit: read it now
        state.pop("before_view", None)
        try:
            instead = _read_pending_claim()
        except ApiError as exc:
            return current_app.make_response(api.handle_http_exception(exc))
        except Exception as exc:  # the database went away: nothing was committed anyway
            log.error("idempotency claim not read: %s", type(exc).__name__)
            return response
        if instead is not None:
            return instead
    claim = state.pop("idempotency_claim", None)
    if claim is None:
        return response
    try:
        if response.status_code < 500 and not response.is_streamed:
            idempotency.store_answer(claim, response.status_code,
                                     response.get_data(as_text=True),
                                     kept_headers(response, clock.now()))
        else:
            idempotency.release_key(claim)
    except Exception as exc:  # the database went away after the write: answer anyway
        log.error("idempotency key %s not kept: %s", claim, type(exc).__name__)
    return response


def _release_unanswered_key(error=None):
    """A request that ended in an exception no handler answered gives its key back."""
    state = g._get_current_object().__dict__
    pending = state.pop("idempotency_pending", None)
    claim = state.pop("idempotency_claim", None)
    state.pop("claim_at_commit", None)
    state.pop("idempotency_refused", None)
    try:
        if pending is not None:
            pending.abandon()
        if claim is not None:
            idempotency.release_key(claim)
    except Exception as exc:
        log.error("idempotency key %s not released: %s", claim, type(exc).__name__)


def init_idempotency(app) -> None:
    """After ``init_web``: the answer is kept before the access line is written."""
    app.after_request(_keep_idempotent_answer)
    app.teardown_request(_release_unanswered_key)
    # One listener for the extension's session, whichever app (it reads the request's ``g``).
    if not event.contains(db.session, "before_commit", _read_claim_before_commit):
        event.listen(db.session, "before_commit", _read_claim_before_commit)
