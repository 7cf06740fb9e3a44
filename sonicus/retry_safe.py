"""Retry-safe writes in the request: the ``Idempotency-Key`` of a signed-in write claimed once
the caller is known (``claim_idempotency_key``, called by ``auth.require_user`` and
``require_super_admin``: a 401, a 403 of the admin check and a rate limit's 429 come before and
are never kept), and the answer kept by an after-request hook, which sees the final answer
whether the view returned or raised. The rules and the table: ``services/idempotency.py``.

Where the database allows (``idempotency.send_claim``), the claim is sent and read only just
before the view function runs (``envelope.Blueprint.response`` calls ``g.before_view``), so
that it travels while the request's body is parsed; the view never runs before the claim is
read. A request that ends before that (its body refused, say) reads it in the after-request
hook: its answer is kept if the key was its own, and replaced by what the key decided (a
replay, 409, 422) if it was not.
"""

from __future__ import annotations

import logging

from flask import current_app, g

from .api_errors import ApiError
from .extensions import api
from .idempotency_http import idempotency_key, kept_headers, replay_response, request_fingerprint
from .services import idempotency

log = logging.getLogger(__name__)


def claim_idempotency_key(user_id: int, settles_later: bool = False):
    """None when the view is to run (having claimed the request's key, if it sends one, or
    left the claim to be read before the view when ``settles_later``), or the answer to give
    instead."""
    key = idempotency_key()
    if key is None:
        return None
    outcome = idempotency.send_claim(user_id, key, request_fingerprint())
    if isinstance(outcome, idempotency.PendingClaim):
        if settles_later:
            state = g._get_current_object().__dict__
            state["idempotency_pending"] = outcome
            state["before_view"] = _read_pending_claim
            return None
        outcome = outcome.outcome()
    return _claimed(outcome)


def _claimed(outcome):
    if isinstance(outcome, idempotency.KeptAnswer):
        return replay_response(outcome.status, outcome.body, outcome.headers)
    g.idempotency_claim = outcome
    return None


def _read_pending_claim():
    """``g.before_view``: None when the view is to run, or the answer to give instead."""
    pending = g._get_current_object().__dict__.pop("idempotency_pending", None)
    return None if pending is None else _claimed(pending.outcome())


def _keep_idempotent_answer(response):
    """Keep the answer of a request that claimed a key (below 500), or give the key back.
    Never fails the request: the write may have committed (API.md: a committed write never
    answers 5xx); a key that could not be kept stays ``running`` until it is stale."""
    state = g._get_current_object().__dict__
    if "idempotency_pending" in state:  # the view did not run: read the claim now
        state.pop("before_view", None)
        try:
            instead = _read_pending_claim()
        except ApiError as exc:
            return current_app.make_response(api.handle_http_exception(exc))
        except Exception as exc:  # the database went away: the view did not run anyway
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
                                     response.get_data(as_text=True), kept_headers(response))
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
