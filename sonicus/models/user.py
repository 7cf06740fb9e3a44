from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from .. import clock
from ..clock import DaySettings
from .base import Base, UTCDateTime, unicode_key, utcnow

ROLE_USER, ROLE_ADMIN = "user", "admin"
ROLES = (ROLE_USER, ROLE_ADMIN)
DEFAULT_PREFERENCES = {"goals": [], "favorite_categories": [], "daily_goal_minutes": None,
                       "show_streaks": True}


# Dots that separate the labels of a domain name as IDNA reads them (UTS #46): the full stop,
# and the ideographic, fullwidth and halfwidth ones.
_DOMAIN_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def email_key(email) -> str:
    """THE form in which email addresses are compared (sign-in, the trial's one per person,
    admin search, erasure tombstones): stripped, ``base.unicode_key`` (NFKC, full case
    folding: fullwidth "ＡＮＮ＠ＥＸＡＭＰＬＥ.ＣＯＭ" is "ann@example.com"), and the domain's
    labels written in Unicode (an IDN's "xn--bcher-kva.example" is "bücher.example"), without
    a trailing dot. "" for no address (None, not a string, blank)."""
    if not isinstance(email, str):
        return ""
    key = unicode_key(email.strip())
    local, at, domain = key.rpartition("@")
    if not at:
        return key
    labels = [_unicode_label(label) for label in domain.translate(_DOMAIN_DOTS).split(".")]
    return f"{local}@{'.'.join(labels).rstrip('.')}"


def email_search_key(text: str) -> str:
    """What an admin search typed as ``text`` looks for among ``email_key``s: the ``email_key``
    of it, or, without an "@", of it as a piece of a domain ("XN--BCHER-KVA" is "bücher")."""
    if "@" in text:
        return email_key(text)
    return ".".join(_unicode_label(label)
                    for label in unicode_key(text).translate(_DOMAIN_DOTS).split("."))


def _unicode_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return unicode_key(label[4:].encode("ascii").decode("punycode"))
        except (UnicodeError, ValueError):
            return label  # not punycode after all: compared as written
    return label


GOAL_MAX_LENGTH = 40  # a goal as typed (``schemas.profile.PreferencesSchema``)
GOAL_KEY_MAX_LENGTH = 160  # longer keys (only from compatibility characters) group no one


def goal_key(goal) -> str | None:
    """THE form in which goals are compared, grouped into cohorts and matched (recommendations):
    ``base.unicode_key`` (NFKC, then full case folding, the Turkic fold of U+0130 "İ" to "i"
    first, then NFKC again). "ΎΠΝΟΣ" and "ύπνος" (final
    sigma), "İYİ UYKU" and "iyi uyku", "Straße" and "STRASSE" are one goal. None for what is
    not a goal (not a string of 1..40 characters) or too long a key. The preferences keep the
    goal as typed."""
    if not isinstance(goal, str) or not 1 <= len(goal) <= GOAL_MAX_LENGTH:
        return None
    key = unicode_key(goal)
    return key if 1 <= len(key) <= GOAL_KEY_MAX_LENGTH else None


def goal_names(goals) -> dict[str, str]:
    """{key: how to name it to the user}: each of their goals by ``goal_key``, named by the
    first goal typed with that key, in lower case (the final sigma kept, "İ" as "i")."""
    names: dict[str, str] = {}
    for goal in goals if isinstance(goals, list) else ():
        key = goal_key(goal)
        if key is not None and key not in names:
            names[key] = goal.replace("\u0130", "i").lower()
    return names


def merge_preferences(stored: dict | None, changes: dict | None = None) -> dict:
    """The defaults, overlaid with what is stored, overlaid with ``changes``."""
    merged = dict(DEFAULT_PREFERENCES)
    merged.update(stored or {})
    merged.update(changes or {})
    return merged


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    oidc_sub: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    # The email as it is compared (``email_key``): kept with every change of ``email``.
    email_key: Mapped[str] = mapped_column(Text, default="", server_default="")
    email_verified: Mapped[bool] = mapped_column(Boolean, default=False)
    display_name: Mapped[str | None] = mapped_column(String(120))
    # The name last seen in the token: a change there overwrites display_name,
    # an edit by the user in the profile survives until it does.
    oidc_name: Mapped[str | None] = mapped_column(String(120))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    day_start_hour: Mapped[int] = mapped_column(SmallInteger, default=0)
    # ``timezone``/``day_start_hour`` are the settings the user chose last (shown at once);
    # until ``day_settings_effective_at`` the prior ones stay in force (clock.day_settings_at).
    prior_timezone: Mapped[str | None] = mapped_column(String(64))
    prior_day_start_hour: Mapped[int | None] = mapped_column(SmallInteger)
    day_settings_effective_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The settings in force before the prior ones, oldest first, each with the instant it
    # ended: ``[{"until": ISO 8601, "timezone", "day_start_hour"}]``, kept as long as they can
    # still decide a day or a session's local hour: for good (``clock.DAY_SETTINGS_KEPT``).
    earlier_day_settings: Mapped[list] = mapped_column(JSON, default=list, server_default="[]")
    preferences: Mapped[dict] = mapped_column(JSON, default=dict)
    role: Mapped[str] = mapped_column(String(16), default=ROLE_USER)
    # ``iat`` of the token whose claims (email, name, role) were applied last: an older token
    # does not write its claims back (a demoted admin's earlier token grants nothing).
    claims_issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    # Joined into the sign-in query (every request needs the tier in force).
    subscription = relationship("UserSubscription", uselist=False, viewonly=True)

    __table_args__ = (
        Index("ix_users_email_lower", func.lower(email)),
        # equality (``find_users_by_email``) and prefixes (a short admin search)
        Index("ix_users_email_key", "email_key", postgresql_ops={"email_key": "text_pattern_ops"}),
        # substrings (the admin search)
        Index("ix_users_email_key_trgm", "email_key", postgresql_using="gin",
              postgresql_ops={"email_key": "gin_trgm_ops"}),
        Index("ix_users_created_at", "created_at"),
    )

    @validates("email")
    def _keep_email_key(self, _field, value):
        self.email_key = email_key(value)
        return value

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def merged_preferences(self) -> dict:
        return merge_preferences(self.preferences)

    @property
    def pending_day_settings_effective_at(self) -> datetime | None:
        """When the shown day settings take effect; None when they are in force already."""
        return clock.pending_day_settings_at(self, clock.now())

    def change_day_settings(self, timezone: str, day_start_hour: int, now: datetime) -> None:
        """Show the new day settings at once; they take effect for quotas, streaks and
        analytics at the next boundary of the user's day as it is under the settings in force
        now. Until then the old day stands (changing the day never gives quota back).

        A second change before that boundary keeps the boundary and the settings in force;
        changing back to the settings in force cancels the pending change.
        """
        wanted = DaySettings(timezone, day_start_hour)
        if wanted == DaySettings(self.timezone, self.day_start_hour):
            return
        in_force = clock.day_settings_at(self, now)
        if wanted == in_force:
            self.prior_timezone = self.prior_day_start_hour = None
            self.day_settings_effective_at = None
        elif clock.pending_day_settings_at(self, now) is None:
            self.earlier_day_settings = clock.remembered_day_settings(self)
            self.day_settings_effective_at = clock.user_day(self, now).ends_at
            self.prior_timezone, self.prior_day_start_hour = (in_force.timezone,
                                                              in_force.day_start_hour)
        self.timezone, self.day_start_hour = timezone, day_start_hour


class VerifiedEmail(Base):
    """An email address the account has been verified with (a token's ``email_verified``),
    as the salted hash of its ``email_key`` (``services.erasure.email_hash``), for as long as
    the account lives: whatever the email became since, the trial stays one per person
    (``services.subscriptions.row``) and the erasure's tombstones name every one of them."""

    __tablename__ = "verified_emails"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    verified_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
