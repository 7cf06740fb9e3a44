"""Settings read from the environment, parsed and typed in one place.

Nothing here runs at import time: ``load_config()`` reads the environment when
the app factory asks for it, and ``validate_config()`` refuses unsafe
combinations before the app serves anything.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

ENVIRONMENTS = ("development", "testing", "production")


class ConfigError(RuntimeError):
    """A setting is missing or unsafe; the message says which and why."""


def _str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = env.get(name)
    if value is None:
        return default
    value = value.strip()
    return value


def _number(env: Mapping[str, str], name: str, default, kind, described: str):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be {described}, got {raw!r}") from exc


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> list[str]:
    raw = env.get(name) or ""
    return [item.strip() for item in raw.split(",") if item.strip()]


# The browsers' push services (API.md, Reminders). ``*.`` before a host: any host under it.
DEFAULT_WEBPUSH_ALLOWED_ENDPOINTS = (
    "https://fcm.googleapis.com/",
    "https://updates.push.services.mozilla.com/",
    "https://web.push.apple.com/",
    "https://*.notify.windows.com/",
)
DEVELOPMENT_VAPID_SUBJECT = "mailto:reminders@sonicus.invalid"
# A prefix ends its host with ":" (a port follows) or "/": "https://fcm.googleapis.com" alone
# would also match https://fcm.googleapis.com.example.net/.
_PREFIX = re.compile(r"^https?://(\*\.)?[A-Za-z0-9.\-\[\]]+(:[0-9]*(/.*)?|/.*)$")


def _seconds_list(env: Mapping[str, str], name: str, default: tuple[float, ...]) -> list[float]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return list(default)
    try:
        values = [float(item) for item in raw.split(",") if item.strip()]
    except ValueError as exc:
        raise ConfigError(f"{name} must be comma-separated seconds, got {raw!r}") from exc
    return values


def normalise_database_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg2 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def load_config(env: Mapping[str, str] | None = None) -> dict:
    """Read every setting from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    sonicus_env = (_str(env, "SONICUS_ENV", "development") or "development").lower()
    database_url = _str(env, "DATABASE_URL")
    dev_issuer_default = sonicus_env in ("development", "testing") and not env.get("OIDC_ISSUER")
    return {
        "SONICUS_ENV": sonicus_env,
        "TESTING": sonicus_env == "testing",
        "SECRET_KEY": _str(env, "SECRET_KEY", "dev-only-not-secret"),
        "INSTANCE_PATH": _str(env, "SONICUS_INSTANCE_PATH") or None,
        "DATABASE_URL": normalise_database_url(database_url) if database_url else None,
        # The database connections one process may open (README, "Database connections"):
        # the app's pool, the idempotency keys' pool, and the keys' own connections of a web
        # process (their fast path). The shipped defaults keep every process of the shipped
        # topology together under PostgreSQL's default max_connections (100); a worker's
        # own are set by worker.py (``PROCESS_DATABASE_DEFAULTS``). A request that waits
        # longer than the pool timeout for a connection answers 503 with Retry-After.
        "DATABASE_POOL_SIZE": _int(env, "DATABASE_POOL_SIZE", 4),
        "DATABASE_MAX_OVERFLOW": _int(env, "DATABASE_MAX_OVERFLOW", 4),
        # Whole seconds: SQLAlchemy reads the app pool's timeout as an integer.
        "DATABASE_POOL_TIMEOUT_SECONDS": _int(env, "DATABASE_POOL_TIMEOUT_SECONDS", 3),
        "IDEMPOTENCY_POOL_SIZE": _int(env, "IDEMPOTENCY_POOL_SIZE", 1),
        "IDEMPOTENCY_MAX_OVERFLOW": _int(env, "IDEMPOTENCY_MAX_OVERFLOW", 2),
        "IDEMPOTENCY_CONNECTIONS_MAX_OPEN": _int(env, "IDEMPOTENCY_CONNECTIONS_MAX_OPEN", 6),
        "IDEMPOTENCY_CONNECTIONS_KEEP_IDLE": _int(env, "IDEMPOTENCY_CONNECTIONS_KEEP_IDLE", 4),
        "REDIS_URL": _str(env, "REDIS_URL") or None,
        # A Redis call waits at most this long; after a failure every Redis use of the
        # process (cache, enqueue, rate limits, publishing) is skipped for RETRY seconds.
        "REDIS_SOCKET_TIMEOUT_SECONDS": _float(env, "REDIS_SOCKET_TIMEOUT_SECONDS", 2.0),
        "REDIS_RETRY_SECONDS": _float(env, "REDIS_RETRY_SECONDS", 5.0),
        # Pub/sub channels are namespaced (default: from the Redis URL's db number).
        "REDIS_CHANNEL_PREFIX": _str(env, "REDIS_CHANNEL_PREFIX") or None,
        "OIDC_ISSUER": _str(env, "OIDC_ISSUER") or None,
        "OIDC_AUDIENCE": _str(env, "OIDC_AUDIENCE") or None,
        "OIDC_JWKS_URL": _str(env, "OIDC_JWKS_URL") or None,
        "OIDC_REQUIRED_GROUP": _str(env, "OIDC_REQUIRED_GROUP", "sonicus-user"),
        "OIDC_ADMIN_GROUP": _str(env, "OIDC_ADMIN_GROUP", "sonicus-super-admin"),
        "OIDC_LEEWAY_SECONDS": _int(env, "OIDC_LEEWAY_SECONDS", 30),
        "OIDC_JWKS_MIN_REFRESH_SECONDS": _int(env, "OIDC_JWKS_MIN_REFRESH_SECONDS", 60),
        "OIDC_JWKS_MAX_AGE_SECONDS": _int(env, "OIDC_JWKS_MAX_AGE_SECONDS", 600),
        "OIDC_HTTP_TIMEOUT_SECONDS": _int(env, "OIDC_HTTP_TIMEOUT_SECONDS", 5),
        "AUTH_USER_CACHE_SECONDS": _float(env, "AUTH_USER_CACHE_SECONDS", 2.0),
        "DEV_TOKEN_ISSUER": _bool(env, "DEV_TOKEN_ISSUER", dev_issuer_default),
        "CORS_ORIGINS": _list(env, "CORS_ORIGINS"),
        "BILLING_PROVIDER": (_str(env, "BILLING_PROVIDER", "sandbox") or "sandbox").lower(),
        "BILLING_WEBHOOK_SECRET": _str(env, "BILLING_WEBHOOK_SECRET") or None,
        "STRIPE_API_KEY": _str(env, "STRIPE_API_KEY") or None,
        "STRIPE_PRICE_IDS": _list(env, "STRIPE_PRICE_IDS"),
        # another address for Stripe's API (stripe-mock, a stand-in); honoured everywhere
        "STRIPE_API_BASE": _str(env, "STRIPE_API_BASE") or None,
        # No default in production: checkout return URLs and media links must not point here.
        "PUBLIC_BASE_URL": _str(env, "PUBLIC_BASE_URL") or (
            None if sonicus_env == "production" else "http://127.0.0.1:18100"),
        "MEDIA_BASE_URL": _str(env, "MEDIA_BASE_URL") or None,
        "MEDIA_URL_SECRET": _str(env, "MEDIA_URL_SECRET") or None,
        "MEDIA_URL_TTL_SECONDS": _int(env, "MEDIA_URL_TTL_SECONDS", 3600),
        "MEDIA_DOWNLOAD_URL_TTL_SECONDS": _int(env, "MEDIA_DOWNLOAD_URL_TTL_SECONDS", 7200),
        "TRIAL_DAYS": _int(env, "TRIAL_DAYS", 14),
        # A refund or dispute held for its payment's notice is removed after this many days.
        "HELD_REVERSAL_RETENTION_DAYS": _int(env, "HELD_REVERSAL_RETENTION_DAYS", 90),
        "ANALYTICS_CACHE_TTL_SECONDS": _int(env, "ANALYTICS_CACHE_TTL_SECONDS", 600),
        # A refresh still marked stale after this long is re-enqueued by the periodic sweep.
        "ANALYTICS_STALE_GRACE_SECONDS": _int(env, "ANALYTICS_STALE_GRACE_SECONDS", 30),
        "STATS_CACHE_TTL_SECONDS": _int(env, "STATS_CACHE_TTL_SECONDS", 300),
        # Workers: a running job's registration is renewed every HEARTBEAT seconds and, left
        # unrenewed for ABANDONED seconds (its worker died), retried by another worker.
        "WORKER_HEARTBEAT_SECONDS": _int(env, "WORKER_HEARTBEAT_SECONDS", 10),
        "WORKER_ABANDONED_JOB_SECONDS": _int(env, "WORKER_ABANDONED_JOB_SECONDS", 30),
        "WORKER_RECONNECT_MAX_SECONDS": _float(env, "WORKER_RECONNECT_MAX_SECONDS", 10.0),
        "WS_MAX_SOCKETS_PER_PROCESS": _int(env, "WS_MAX_SOCKETS_PER_PROCESS", 192),
        # Open sockets of one user across every process (Redis; without it, per process).
        "WS_MAX_SOCKETS_PER_USER": _int(env, "WS_MAX_SOCKETS_PER_USER", 10),
        # How often a process checks that the accounts it holds sockets for still stand (one
        # query per pass) and closes those of suspended or erased accounts whose close it
        # missed.
        "WS_ACCOUNT_CHECK_SECONDS": _float(env, "WS_ACCOUNT_CHECK_SECONDS", 30.0),
        "RATELIMIT_ENABLED": _bool(env, "RATELIMIT_ENABLED", True),
        "RATELIMIT_PER_USER": _str(env, "RATELIMIT_PER_USER", "120/second;3000/minute"),
        "RATELIMIT_PER_IP": _str(env, "RATELIMIT_PER_IP", "300/second;12000/minute"),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 64 * 1024),
        # Proxies in front (load balancer, nginx) whose X-Forwarded-For/-Proto are trusted.
        "TRUSTED_PROXY_COUNT": _int(env, "TRUSTED_PROXY_COUNT", 0),
        # Who may read /metrics: callers with this bearer token, or a separate host:port.
        "METRICS_TOKEN": _str(env, "METRICS_TOKEN") or None,
        "METRICS_BIND": _str(env, "METRICS_BIND") or None,
        # Optional error reporting (web and workers); events scrubbed like the logs.
        "SENTRY_DSN": _str(env, "SENTRY_DSN") or None,
        "SENTRY_RELEASE": _str(env, "SENTRY_RELEASE") or None,
        "LOG_LEVEL": (_str(env, "LOG_LEVEL", "INFO") or "INFO").upper(),
        # Web Push (reminders). Without a private key, development and testing generate one
        # in the instance folder on first use; production requires both.
        "VAPID_PRIVATE_KEY": _str(env, "VAPID_PRIVATE_KEY") or None,
        "VAPID_SUBJECT": _str(env, "VAPID_SUBJECT") or (
            None if sonicus_env == "production" else DEVELOPMENT_VAPID_SUBJECT),
        "WEBPUSH_ALLOWED_ENDPOINTS": (_list(env, "WEBPUSH_ALLOWED_ENDPOINTS")
                                      or list(DEFAULT_WEBPUSH_ALLOWED_ENDPOINTS)),
        "WEBPUSH_TIMEOUT_SECONDS": _float(env, "WEBPUSH_TIMEOUT_SECONDS", 10.0),
        # Pushes one worker has in flight at once (threads, each with a keep-alive session).
        "WEBPUSH_CONCURRENCY": _int(env, "WEBPUSH_CONCURRENCY", 8),
        # A push the push service answered 429 or 5xx is tried again after these delays
        # (Retry-After, when longer, wins up to WEBPUSH_RETRY_MAX_SECONDS); then given up.
        "WEBPUSH_RETRY_SECONDS": _seconds_list(env, "WEBPUSH_RETRY_SECONDS", (30, 120, 600)),
        "WEBPUSH_RETRY_MAX_SECONDS": _float(env, "WEBPUSH_RETRY_MAX_SECONDS", 3600.0),
        # How long a push service keeps an undelivered reminder (the TTL header).
        "WEBPUSH_TTL_SECONDS": _int(env, "WEBPUSH_TTL_SECONDS", 4 * 3600),
    }


# A worker runs one job at a time (in its work horse) but pushes reminders from
# WEBPUSH_CONCURRENCY threads (8), each holding a connection while its push is on its way,
# beside the job's own; it
# keeps few idle and uses the keys' pool for the periodic sweep only. Applied by worker.py to
# what the environment leaves unset.
PROCESS_DATABASE_DEFAULTS = {
    "worker": {"DATABASE_POOL_SIZE": "1", "DATABASE_MAX_OVERFLOW": "8",
               "IDEMPOTENCY_POOL_SIZE": "1", "IDEMPOTENCY_MAX_OVERFLOW": "0"},
}
# An RQ worker forks a work horse per job: the worker's pool and the horse's are open at once.
PROCESSES_PER_WORKER = 2


def process_database_defaults(process_type: str, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the database settings of ``process_type`` (web, ws, worker) it leaves
    unset filled in."""
    out = dict(env)
    for name, value in PROCESS_DATABASE_DEFAULTS.get(process_type, {}).items():
        if (out.get(name) or "").strip() == "":
            out[name] = value
    return out


def database_connections_at_most(config: Mapping, process_type: str) -> int:
    """The PostgreSQL connections one process of ``process_type`` may hold at once with
    ``config``: its pool and the keys' pool at their overflow, plus the keys' own connections
    in a web process (a socket process, under gevent, claims through the keys' pool; a
    worker answers no requests). A worker counts its work horse too."""
    pools = (config["DATABASE_POOL_SIZE"] + config["DATABASE_MAX_OVERFLOW"]
             + config["IDEMPOTENCY_POOL_SIZE"] + config["IDEMPOTENCY_MAX_OVERFLOW"])
    if process_type == "web":
        return pools + config["IDEMPOTENCY_CONNECTIONS_MAX_OPEN"]
    if process_type == "worker":
        return pools * PROCESSES_PER_WORKER
    return pools


def _validate_database_pools(config: Mapping) -> None:
    least = {"DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 0, "IDEMPOTENCY_POOL_SIZE": 1,
             "IDEMPOTENCY_MAX_OVERFLOW": 0, "IDEMPOTENCY_CONNECTIONS_MAX_OPEN": 2,
             "IDEMPOTENCY_CONNECTIONS_KEEP_IDLE": 1}
    for name, minimum in least.items():
        if config.get(name, minimum) < minimum:
            raise ConfigError(f"{name} must be at least {minimum}")
    if config.get("IDEMPOTENCY_CONNECTIONS_KEEP_IDLE", 1) > config.get(
            "IDEMPOTENCY_CONNECTIONS_MAX_OPEN", 2):
        raise ConfigError("IDEMPOTENCY_CONNECTIONS_KEEP_IDLE must not exceed "
                          "IDEMPOTENCY_CONNECTIONS_MAX_OPEN")
    timeout = config.get("DATABASE_POOL_TIMEOUT_SECONDS", 3)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
        raise ConfigError("DATABASE_POOL_TIMEOUT_SECONDS must be a whole number of seconds, "
                          "at least 1")


_MEDIA_FOLDER = re.compile(r"(/[A-Za-z0-9._~-]+)*/?")


def _validate_media_base(base: str | None) -> None:
    """``MEDIA_BASE_URL``: an http(s) origin, optionally with a folder (``/media``) made of
    the characters a media_path is, so that the path signed (``sonicus.media``) is the path
    the media server decodes and checks; no query or fragment."""
    if not base:
        return
    parts = urlsplit(base)
    if (parts.scheme not in ("http", "https") or not parts.netloc or parts.query
            or parts.fragment or "?" in base or "#" in base
            or not _MEDIA_FOLDER.fullmatch(parts.path)
            or any(segment in (".", "..") for segment in parts.path.split("/"))):
        raise ConfigError("MEDIA_BASE_URL must be an http(s) address, optionally with a path "
                          "of letters, digits, '-', '_', '.' and '~' between slashes (e.g. "
                          "https://cdn.example.com/media), without a query or fragment")


def validate_config(config: Mapping) -> None:
    """Refuse settings that are unsafe or contradictory, with a clear message."""
    env = config["SONICUS_ENV"]
    if env not in ENVIRONMENTS:
        raise ConfigError(f"SONICUS_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env!r}")
    if config["BILLING_PROVIDER"] not in ("sandbox", "stripe"):
        raise ConfigError("BILLING_PROVIDER must be 'sandbox' or 'stripe'")
    for name in ("MEDIA_URL_TTL_SECONDS", "MEDIA_DOWNLOAD_URL_TTL_SECONDS"):
        if config.get(name, 1) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if config["TRIAL_DAYS"] < 0:
        raise ConfigError("TRIAL_DAYS must not be negative")
    if config.get("HELD_REVERSAL_RETENTION_DAYS", 90) < 1:
        raise ConfigError("HELD_REVERSAL_RETENTION_DAYS must be at least 1")
    if config.get("TRUSTED_PROXY_COUNT", 0) < 0:
        raise ConfigError("TRUSTED_PROXY_COUNT must not be negative")
    if not 0 < config["WORKER_HEARTBEAT_SECONDS"] < config["WORKER_ABANDONED_JOB_SECONDS"]:
        raise ConfigError("WORKER_HEARTBEAT_SECONDS must be positive and below "
                          "WORKER_ABANDONED_JOB_SECONDS")
    _validate_database_pools(config)
    _validate_webpush(config)
    _validate_media_base(config.get("MEDIA_BASE_URL"))
    for name in ("WS_MAX_SOCKETS_PER_PROCESS", "WS_MAX_SOCKETS_PER_USER"):
        if config.get(name, 1) < 1:
            raise ConfigError(f"{name} must be at least 1")
    if not config.get("WS_ACCOUNT_CHECK_SECONDS", 30.0) > 0:
        raise ConfigError("WS_ACCOUNT_CHECK_SECONDS must be positive")
    if env != "production":
        return
    problems = []
    if not config.get("OIDC_ISSUER"):
        problems.append("OIDC_ISSUER is required")
    if not config.get("OIDC_AUDIENCE"):
        problems.append("OIDC_AUDIENCE is required")
    url = config.get("SQLALCHEMY_DATABASE_URI") or config.get("DATABASE_URL") or ""
    if not url or url.startswith("sqlite"):
        problems.append("DATABASE_URL must point at PostgreSQL (SQLite is for development only)")
    if config["BILLING_PROVIDER"] == "sandbox":
        problems.append("BILLING_PROVIDER=sandbox is for development only")
    if config["BILLING_PROVIDER"] == "stripe" and not config.get("BILLING_WEBHOOK_SECRET"):
        problems.append("BILLING_WEBHOOK_SECRET is required with the stripe provider")
    problems.extend(_stripe_problems(config))
    if config.get("DEV_TOKEN_ISSUER"):
        problems.append("DEV_TOKEN_ISSUER cannot be enabled in production")
    public = config.get("PUBLIC_BASE_URL") or ""
    if not public.startswith(("https://", "http://")):
        problems.append("PUBLIC_BASE_URL is required (where the API is reached from outside, "
                        "e.g. https://api.example.com)")
    if config.get("SECRET_KEY") in (None, "", "dev-only-not-secret"):
        problems.append("SECRET_KEY must be set")
    if config.get("TESTING"):
        problems.append("TESTING cannot be on in production")
    if not config.get("VAPID_PRIVATE_KEY"):
        problems.append("VAPID_PRIVATE_KEY is required (Web Push reminders; e.g. "
                        "`vapid --gen` or any P-256 key, base64url raw or PEM)")
    if not config.get("VAPID_SUBJECT"):
        problems.append("VAPID_SUBJECT is required (mailto: or https: contact for push "
                        "services)")
    if problems:
        raise ConfigError("Refusing to start in production: " + "; ".join(problems) + ".")


def parse_price_ids(items) -> dict[str, str]:
    """``STRIPE_PRICE_IDS`` items (``tier=price_id``) as a mapping tier → price id; an item
    without a tier or a price is skipped."""
    out = {}
    for item in items or []:
        tier, _, price = item.partition("=")
        if tier.strip() and price.strip():
            out[tier.strip()] = price.strip()
    return out


def _stripe_problems(config: Mapping) -> list[str]:
    """The stripe provider needs its API key and a price id per paid tier."""
    if config["BILLING_PROVIDER"] != "stripe":
        return []
    problems = []
    if not config.get("STRIPE_API_KEY"):
        problems.append("STRIPE_API_KEY is required with the stripe provider")
    priced = parse_price_ids(config.get("STRIPE_PRICE_IDS"))
    missing = [tier for tier in ("premium", "pro") if tier not in priced]
    if missing:
        problems.append("STRIPE_PRICE_IDS needs tier=price_id for " + ", ".join(missing))
    return problems


def parse_vapid_private_key(value: str) -> ec.EllipticCurvePrivateKey:
    """A VAPID private key as the setting gives it: the raw 32-byte scalar in base64url (what
    ``web-push generate-vapid-keys`` prints), or a PEM/DER (base64) P-256 private key."""
    text = value.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError("VAPID_PRIVATE_KEY is not a P-256 private key (base64url raw "
                          "32 bytes, or PEM)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return key


def _validate_webpush(config: Mapping) -> None:
    if config.get("VAPID_PRIVATE_KEY"):
        parse_vapid_private_key(config["VAPID_PRIVATE_KEY"])
    subject = config.get("VAPID_SUBJECT")
    if subject and not (subject.startswith("mailto:") or subject.startswith("https://")):
        raise ConfigError("VAPID_SUBJECT must be a mailto: or https: URL")
    prefixes = config.get("WEBPUSH_ALLOWED_ENDPOINTS") or []
    for prefix in prefixes:
        parts = urlsplit(prefix)
        if not _PREFIX.match(prefix) or not parts.hostname or "@" in parts.netloc:
            raise ConfigError(f"WEBPUSH_ALLOWED_ENDPOINTS: {prefix!r} must be an http(s) URL "
                              "prefix with a host, e.g. https://fcm.googleapis.com/")
    if not 1 <= int(config.get("WEBPUSH_CONCURRENCY", 8)) <= 64:
        raise ConfigError("WEBPUSH_CONCURRENCY must be between 1 and 64")
    delays = config.get("WEBPUSH_RETRY_SECONDS") or []
    if len(delays) > 10 or any(d < 0 for d in delays):
        raise ConfigError("WEBPUSH_RETRY_SECONDS: at most 10 delays, none negative")
