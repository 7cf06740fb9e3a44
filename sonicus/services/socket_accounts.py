"""What a socket process asks of the accounts it holds sockets for, one query per batch of
users (``realtime.accounts`` and ``realtime.versions`` call these through the callables given
to ``register_realtime``: the realtime package never imports services)."""

from __future__ import annotations

from sqlalchemy import Integer, any_, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY

from ..extensions import db
from ..models import User
from ..realtime.publish import CLOSE_FORBIDDEN, CLOSE_INVALID_TOKEN
from .analytics_cache import settings_version


def _among(user_ids: list[int]):
    if db.session.get_bind().dialect.name == "postgresql":
        # one array parameter: half the CPU of an IN list of 1,000 (~2 ms), which a socket
        # process's event loop waits behind
        return User.id == any_(bindparam("user_ids", user_ids, type_=ARRAY(Integer)))
    return User.id.in_(user_ids)


def socket_close_codes(user_ids) -> dict[int, int]:
    """Which of these users' open sockets must close now, and why: 4401 once erased, 4403
    while suspended; a user whose account stands is left out. One query for all of them (a
    socket process checks the accounts it holds sockets for after a gap in the closes other
    processes publish, and every ``WS_ACCOUNT_CHECK_SECONDS``)."""
    user_ids = list(user_ids)
    if not user_ids:
        return {}
    active = dict(db.session.execute(
        select(User.id, User.is_active).where(_among(user_ids))).all())
    codes = {}
    for user_id in user_ids:
        standing = active.get(user_id)
        if standing is None:
            codes[user_id] = CLOSE_INVALID_TOKEN
        elif not standing:
            codes[user_id] = CLOSE_FORBIDDEN
    return codes


def socket_settings_versions(user_ids) -> dict[int, int]:
    """The settings version (``analytics_cache.settings_version``) of each of these users whose
    account stands: what a process that may have missed a settings change's announcement (a
    gap in its subscription) catches up on."""
    user_ids = list(user_ids)
    if not user_ids:
        return {}
    rows = db.session.execute(select(User.id, User.updated_at).where(_among(user_ids)))
    return {row.id: settings_version(row) for row in rows}
