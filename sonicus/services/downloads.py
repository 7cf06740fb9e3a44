"""Offline downloads: a licence per user and package, and signed download URLs.

A tier with ``offline_downloads`` (``tiers.check_offline_downloads``), or a live assignment of
the package, may keep it on a device. ``POST`` grants or renews the licence for
``OFFLINE_LICENCE_DAYS`` (one row per user and package: an upsert under the unique
constraint) and answers a signed URL per track, the stream URLs' HMAC scheme with the
``MEDIA_DOWNLOAD_URL_TTL_SECONDS`` lifetime (2 hours: the media server cannot tell a URL of
an ended licence or an erased account from another, so a URL is withdrawn only by expiring;
``GET`` signs fresh ones for the licences live then).

A licence is live while its own window holds (``granted_at <= t < expires_at``, not ended by
``DELETE``) AND the package is kept offline now, by the tier in force (it has downloads and
opens the package: ``tiers.keeps_offline``) or a live assignment: a downgrade at its period's
end, an assignment's expiry or revocation, the package's archive end it with no write of
their own. Its ``expires_at`` is set at the grant to the earliest end known then (30 days,
the end of the period before a scheduled downgrade or cancel, the end of a trial, or of a
failed renewal's grace, that falls back to a tier that does not keep it, the assignment's
``expires_at`` when only the assignment keeps it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from .. import clock, media
from ..api_errors import not_found
from ..extensions import db
from ..models import OfflineLicence, PackageAssignment, SoundPackage, UserSubscription
from ..models.subscription import tier_awaiting_payment
from ..pagination import Page
from ..tiers import (
    OFFLINE_LICENCE_DAYS,
    check_offline_downloads,
    check_package_access,
    keeps_offline,
)
from .assignments import live_assignment, live_assignments
from .catalog import get_catalog_package, in_catalog
from .subscriptions import (
    get_subscription,
    lock_or_create_subscription,
    scheduled_change,
    tier_in_force,
)
from .transaction import dialect_insert, unit_of_work


@dataclass(frozen=True)
class DownloadTrack:
    track_id: int
    title: str
    duration_seconds: int
    download_url: str | None
    expires_at: datetime


@dataclass(frozen=True)
class Download:
    """A live licence and what to fetch (``DownloadSchema``)."""

    package_id: int
    package: SoundPackage
    granted_at: datetime
    licence_expires_at: datetime
    tracks: tuple[DownloadTrack, ...]


def _licence_end(tier: str, change: tuple[datetime, str] | None,
                 package: SoundPackage, assignment, now: datetime) -> datetime:
    """The earliest end of a licence granted now that is known now."""
    end = now + timedelta(days=OFFLINE_LICENCE_DAYS)
    if keeps_offline(tier, package.minimum_tier):
        if change is not None and not keeps_offline(change[1], package.minimum_tier):
            changes_at = change[0]
            if assignment is None:
                end = min(end, changes_at)
            elif assignment.expires_at is not None:
                end = min(end, max(changes_at, assignment.expires_at))
    elif assignment is not None and assignment.expires_at is not None:
        end = min(end, assignment.expires_at)
    return end


def _tracks(package: SoundPackage, now: datetime,
            licence_expires_at: datetime) -> tuple[DownloadTrack, ...]:
    """A download URL per track, none valid past the licence's end."""
    out = []
    for track in package.tracks:
        url, expires_at = media.download_url(track.media_path, now, licence_expires_at)
        out.append(DownloadTrack(track.id, track.title, track.duration_seconds, url,
                                 expires_at))
    return tuple(out)


def grant_download(user_id: int, package_id: int, now: datetime | None = None) -> Download:
    """Grant or renew the licence of one package: 404 unknown package, 403
    ``feature_not_in_tier`` when neither the tier allows downloads nor an assignment opens the
    package, 403 ``package_locked`` when the tier does not open it; 402 ``payment_required``
    instead when the tier of a checkout waiting for its payment would allow it."""
    now = now or clock.now()
    with unit_of_work():
        sub = lock_or_create_subscription(user_id)  # the tier, serialised with its changes
        package = get_catalog_package(package_id)
        assignment = live_assignment(user_id, package.id, now)
        change = scheduled_change(sub)
        tier = tier_in_force(sub, now)
        awaiting = tier_awaiting_payment(sub)  # a refusal its payment would lift is a 402
        check_offline_downloads(tier, assignment is not None, awaiting=awaiting,
                                package_level=package.minimum_tier)
        check_package_access(tier, package.minimum_tier, assignment is not None,
                             awaiting=awaiting)
        expires_at = _licence_end(tier, change, package, assignment, now)
        stmt = dialect_insert()(OfflineLicence).values(user_id=user_id, package_id=package.id,
                                             granted_at=now, expires_at=expires_at)
        db.session.execute(stmt.on_conflict_do_update(
            index_elements=["user_id", "package_id"],
            set_={"granted_at": now, "expires_at": expires_at, "ended_at": None}))
        tracks = _tracks(package, now, expires_at)
    return Download(package.id, package, now, expires_at, tracks)


def _live_licences(user_id: int, sub: UserSubscription, now: datetime,
                   package_id: int | None = None
                   ) -> list[tuple[OfflineLicence, PackageAssignment | None]]:
    """The user's licences live now, newest grant first, each with the live assignment of
    its package (or None) (two queries: licences, live assignments): their window holds and
    the tier in force now (``tier_in_force``: a period's, trial's or grace's end that has
    passed counts before the expiry job writes it) keeps the package offline
    (``keeps_offline``) or a live assignment opens it, and the catalog still offers it."""
    tier = tier_in_force(sub, now)
    stmt = (select(OfflineLicence)
            .options(selectinload(OfflineLicence.package).selectinload(SoundPackage.tracks))
            .join(OfflineLicence.package)
            .where(in_catalog(),  # archived or unpublished: over
                   OfflineLicence.user_id == user_id, OfflineLicence.granted_at <= now,
                   OfflineLicence.expires_at > now, OfflineLicence.ended_at.is_(None))
            .order_by(OfflineLicence.granted_at.desc(), OfflineLicence.id.desc()))
    if package_id is not None:
        stmt = stmt.where(OfflineLicence.package_id == package_id)
    licences = list(db.session.execute(stmt).scalars())
    if not licences:
        return []
    assigned = live_assignments(user_id, now, [lic.package_id for lic in licences])
    return [(lic, assigned.get(lic.package_id)) for lic in licences
            if lic.package_id in assigned or keeps_offline(tier, lic.package.minimum_tier)]


def list_downloads(person, args: dict, now: datetime | None = None) -> Page:
    """The caller's live licences with fresh download URLs, newest first. Each ends at the
    earliest end known now (``_licence_end``): a downgrade or cancel scheduled after the
    grant ends it at the period's end, and no download URL outlives that."""
    now = now or clock.now()
    sub = get_subscription(person)
    live = _live_licences(person.id, sub, now)
    tier, change = tier_in_force(sub, now), scheduled_change(sub)
    page, per_page = args["page"], args["per_page"]
    items = []
    for lic, assignment in live[(page - 1) * per_page: page * per_page]:
        ends = min(lic.expires_at, _licence_end(tier, change, lic.package, assignment, now))
        items.append(Download(lic.package_id, lic.package, lic.granted_at, ends,
                              _tracks(lic.package, now, ends)))
    return Page(items, len(live), page, per_page)


def end_download(user_id: int, package_id: int, now: datetime | None = None) -> None:
    """End the caller's live licence of this package; 404 when there is none."""
    now = now or clock.now()
    with unit_of_work():
        sub = lock_or_create_subscription(user_id)
        live = _live_licences(user_id, sub, now, package_id)
        if not live:
            not_found("Download")
        live[0][0].ended_at = now
