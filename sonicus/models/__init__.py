"""All models, importable from one place."""

from .analytics import AuditLog, PlatformStats, UserAnalytics
from .base import SCHEMA, Base, utcnow
from .catalog import PackageAssignment, SoundPackage, Track, UserSoundPackage
from .erasure import ErasureTombstone, OwedCancellation
from .idempotency import IdempotencyKey
from .listening import ListeningSession
from .offline import OfflineLicence
from .recommendations import (
    CohortOutcome,
    PackageOutcome,
    RecommendationParams,
    UserOutcomeProfile,
    UserPackageOutcome,
)
from .reminders import PushSubscription, ReminderDelivery, ReminderPreferences
from .subscription import BillingEvent, HeldReversal, SubscriptionEvent, UserSubscription
from .user import User, VerifiedEmail

__all__ = [
    "SCHEMA", "AuditLog", "Base", "BillingEvent", "CohortOutcome", "ErasureTombstone",
    "HeldReversal",
    "IdempotencyKey", "ListeningSession", "OfflineLicence", "OwedCancellation",
    "PackageAssignment", "PackageOutcome", "PlatformStats", "PushSubscription",
    "RecommendationParams", "ReminderDelivery", "ReminderPreferences", "SoundPackage",
    "SubscriptionEvent", "Track", "User", "UserAnalytics", "UserOutcomeProfile",
    "UserPackageOutcome", "UserSoundPackage",
    "UserSubscription", "VerifiedEmail", "utcnow",
]
