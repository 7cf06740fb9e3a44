"""The SPA's home in one call: a fixed, small number of queries whatever the data size."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from ..extensions import db
from ..models import ListeningSession, SoundPackage
from ..models.listening import OPEN
from . import subscriptions
from .analytics import get_user_analytics
from .recommendations import Recommendation, recommendations_for

RECOMMENDED_COUNT = 6


@dataclass(frozen=True)
class ContinueListening:
    """The latest unfinished session with its package (``ContinueListeningSchema``)."""

    session: ListeningSession
    package: SoundPackage

    @property
    def session_id(self) -> int:
        return self.session.id

    def __getattr__(self, name):
        return getattr(self.session, name)


@dataclass(frozen=True)
class Dashboard:
    profile: object
    subscription: object
    analytics: dict
    continue_listening: ContinueListening | None
    recommended: list[Recommendation]

    @property
    def onboarding(self):
        return self.profile.onboarding


def continue_listening(user_id: int) -> ContinueListening | None:
    """The caller's latest unfinished session, with its package (one query)."""
    row = db.session.execute(
        select(ListeningSession, SoundPackage)
        .join(SoundPackage, SoundPackage.id == ListeningSession.package_id)
        .where(ListeningSession.user_id == user_id, ListeningSession.status == OPEN)
        .order_by(ListeningSession.started_at.desc(), ListeningSession.id.desc())
        .limit(1)).first()
    return None if row is None else ContinueListening(*row)


def get_dashboard(caller) -> Dashboard:
    return Dashboard(
        profile=caller,
        subscription=subscriptions.overview(caller),
        analytics=get_user_analytics(caller),
        continue_listening=continue_listening(caller.id),
        recommended=recommendations_for(caller.id, caller.tier, caller.preferences,
                                        RECOMMENDED_COUNT))
