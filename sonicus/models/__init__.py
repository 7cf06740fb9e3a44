"""All models, importable from one place."""

from .analytics import AuditLog, PlatformStats, UserAnalytics
from .base import SCHEMA, Base, utcnow
from .catalog import PackageAssignment, SoundPackage, Track, UserSoundPackage
from .erasure import ErasureTombstone, OwedCancellation
from .listening import ListeningSession
from .recommendations import (
    CohortOutcome,
    PackageOutcome,
    RecommendationParams,
    UserOutcomeProfile,
    UserPackageOutcome,
)
from .subscription import BillingEvent, SubscriptionEvent, UserSubscription
from .user import User

__all__ = [
    "SCHEMA", "AuditLog", "Base", "BillingEvent", "CohortOutcome", "ErasureTombstone",
    "ListeningSession", "OwedCancellation", "PackageAssignment", "PackageOutcome",
    "PlatformStats", "RecommendationParams", "SoundPackage", "SubscriptionEvent", "Track",
    "User", "UserAnalytics", "UserOutcomeProfile", "UserPackageOutcome", "UserSoundPackage",
    "UserSubscription", "utcnow",
]
