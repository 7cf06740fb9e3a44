"""Declarative base: every table lives in schema ``sonicus`` (mapped away on SQLite)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

from sqlalchemy import DateTime, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase

SCHEMA = "sonicus"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def unicode_key(text: str) -> str:
    """THE form in which text typed by people is compared (goals, catalog search): NFKC,
    then full case folding (the Turkic fold of U+0130 "İ" to "i" first, which the default
    fold turns into an "i" with a combining dot), then NFKC again. "café" typed as "e" and
    a combining accent (NFD) and as one "é" (NFC), "ΎΠΝΟΣ" and "ύπνος", "Straße" and
    "STRASSE" have one key."""
    folded = unicodedata.normalize("NFKC", text).replace("\u0130", "i").casefold()
    return unicodedata.normalize("NFKC", folded)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on PostgreSQL and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA, naming_convention=NAMING_CONVENTION)
