"""Helpers for the catalog, library and session tests: users with tiers, packages."""

from __future__ import annotations

from sqlalchemy import select

from sonicus.extensions import db
from sonicus.models import SoundPackage, Track, User


def make_package(slug: str, *, minimum_tier: str = "public", category: str = "sleep",
                 tracks=(600,), published: bool = True, title: str | None = None,
                 description: str = "", popularity: int = 0, archived_at=None) -> int:
    """Insert a package with tracks of the given lengths; returns its id."""
    package = SoundPackage(slug=slug, title=title or slug.replace("-", " ").title(),
                           description=description, category=category,
                           minimum_tier=minimum_tier, published=published,
                           popularity=popularity, archived_at=archived_at,
                           track_count=len(tracks), duration_seconds=sum(tracks))
    for position, length in enumerate(tracks):
        package.tracks.append(Track(position=position, title=f"Part {position + 1}",
                                    duration_seconds=length,
                                    media_path=f"{category}/{slug}/{position + 1:02d}.mp3"))
    db.session.add(package)
    db.session.commit()
    return package.id


def track_ids(package_id: int) -> list[int]:
    return list(db.session.execute(select(Track.id).where(Track.package_id == package_id)
                                   .order_by(Track.position)).scalars())


def signup(client, auth, email: str, *, tier: str | None = None, timezone: str | None = None,
           day_start_hour: int | None = None, admin: bool = False) -> dict:
    """Create the user through the API (first request), optionally set tier and day; returns
    the auth headers."""
    headers = auth(email, groups=("sonicus-user", "sonicus-super-admin") if admin
                   else ("sonicus-user",))
    assert client.get("/api/user/profile", headers=headers).status_code == 200
    changes = {}
    if timezone is not None:
        changes["timezone"] = timezone
    if day_start_hour is not None:
        changes["day_start_hour"] = day_start_hour
    if changes:
        assert client.put("/api/user/profile", json=changes, headers=headers).status_code == 200
    if tier is not None:
        from sonicus.services.admin_users import grant_tier_from_cli

        grant_tier_from_cli(get_user(email).id, tier)
    return headers


def get_user(email: str) -> User:
    return db.session.execute(select(User).where(User.email == email)).scalar_one()
