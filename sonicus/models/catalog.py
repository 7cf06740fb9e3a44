from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    or_,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from ..tiers import LEVEL_MIN_TIER
from .base import Base, UTCDateTime, unicode_key, utcnow


class SoundPackage(Base):
    __tablename__ = "sound_packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slug: Mapped[str] = mapped_column(String(120), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str] = mapped_column(String(40))
    minimum_tier: Mapped[str] = mapped_column(String(16), default="public")
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When it last went into (published_at) and out of (unpublished_at) the catalog by its
    # ``published`` flag; null: never since it was made (``in_catalog_at``).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unpublished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_seconds: Mapped[int] = mapped_column(Integer, default=0)
    track_count: Mapped[int] = mapped_column(Integer, default=0)
    popularity: Mapped[int] = mapped_column(Integer, default=0)
    # Artwork, relative to the media root like a track's media_path (``image_url`` in the API).
    image_path: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # What ``?q=`` searches: title and description in their ``unicode_key`` (NFKC and case
    # folded), kept by ``_keep_search_keys`` on every change; the query is folded alike.
    title_key: Mapped[str] = mapped_column(Text, default="")
    description_key: Mapped[str] = mapped_column(Text, default="")

    tracks: Mapped[list[Track]] = relationship(
        back_populates="package", order_by="Track.position", cascade="all, delete-orphan")

    @validates("title", "description")
    def _keep_search_keys(self, field: str, value):
        setattr(self, f"{field}_key", unicode_key(value or ""))
        return value

    @property
    def required_tier(self) -> str:
        """The lowest tier that opens this package."""
        return LEVEL_MIN_TIER[self.minimum_tier]

    def in_catalog_at(self, moment: datetime) -> bool:
        """Whether the catalog offered it at ``moment`` (``services.catalog.in_catalog`` is
        the same now, in SQL): published then, and not archived by then. An archived or
        unpublished package opens to no one from that moment; what was played before keeps
        it. Published then: since its last publication (or since it was made), or before
        its last unpublication (earlier spells out of the catalog are not told apart)."""
        if self.archived_at is not None and moment >= self.archived_at:
            return False
        before_unpublished = self.unpublished_at is not None and moment < self.unpublished_at
        if not self.published:
            return before_unpublished
        return (self.published_at is None or moment >= self.published_at
                or before_unpublished)

    def set_published(self, published: bool, now: datetime) -> None:
        """Publish or unpublish at ``now``, keeping when (``in_catalog_at``)."""
        if published and not self.published:
            self.published_at = now
        elif not published and self.published:
            self.unpublished_at = now
        self.published = published

    __table_args__ = (
        Index("ix_sound_packages_listing", "published", "archived_at", "category"),
        Index("ix_sound_packages_popularity", "popularity"),
        # GET /api/packages?q= (ILIKE '%term%'); migration 0002_catalog, PostgreSQL only.
        Index("ix_sound_packages_title_trgm", "title", postgresql_using="gin",
              postgresql_ops={"title": "gin_trgm_ops"}),
        Index("ix_sound_packages_description_trgm", "description", postgresql_using="gin",
              postgresql_ops={"description": "gin_trgm_ops"}),
        # GET /api/packages?q= (LIKE '%key%' on the folded keys); migration 0021.
        Index("ix_sound_packages_title_key_trgm", "title_key", postgresql_using="gin",
              postgresql_ops={"title_key": "gin_trgm_ops"}),
        Index("ix_sound_packages_description_key_trgm", "description_key",
              postgresql_using="gin", postgresql_ops={"description_key": "gin_trgm_ops"}),
    )


class Track(Base):
    __tablename__ = "tracks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    package_id: Mapped[int] = mapped_column(ForeignKey("sound_packages.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    title: Mapped[str] = mapped_column(String(200))
    duration_seconds: Mapped[int] = mapped_column(Integer)
    media_path: Mapped[str] = mapped_column(String(512))

    package: Mapped[SoundPackage] = relationship(back_populates="tracks")

    __table_args__ = (Index("ix_tracks_package_id_position", "package_id", "position"),)


class UserSoundPackage(Base):
    """A package in a user's personal library."""

    __tablename__ = "user_sound_packages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    package_id: Mapped[int] = mapped_column(ForeignKey("sound_packages.id", ondelete="CASCADE"))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    assigned_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    favorite: Mapped[bool] = mapped_column(Boolean, default=False)

    package: Mapped[SoundPackage] = relationship()

    __table_args__ = (
        UniqueConstraint("user_id", "package_id"),
        Index("ix_user_sound_packages_user_id_assigned_at", "user_id", "assigned_at"),
    )


class PackageAssignment(Base):
    """An administrator's grant of a package to a user: it opens the package whatever the
    user's tier from ``assigned_at`` until ``expires_at`` (optional) or ``revoked_at``.

    Rows are never deleted while the user exists: they are the history that answers "was it
    assigned at time t" (``live_at``). A user's library entry is a separate thing: adding a
    package to one's own library grants nothing, and removing it there revokes nothing.
    """

    __tablename__ = "package_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    package_id: Mapped[int] = mapped_column(ForeignKey("sound_packages.id", ondelete="CASCADE"))
    assigned_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"))

    def is_live(self, moment: datetime) -> bool:
        return (self.assigned_at <= moment
                and (self.expires_at is None or moment < self.expires_at)
                and (self.revoked_at is None or moment < self.revoked_at))

    @classmethod
    def live_at(cls, moment: datetime):
        """SQL: the assignment opens its package at ``moment``."""
        return and_(cls.assigned_at <= moment,
                    or_(cls.expires_at.is_(None), cls.expires_at > moment),
                    or_(cls.revoked_at.is_(None), cls.revoked_at > moment))

    __table_args__ = (
        Index("ix_package_assignments_user_id_package_id", "user_id", "package_id"),
    )
