"""Signed, expiring stream URLs for audio files.

Scheme (HMAC-SHA256, verifiable by nginx ``secure_link_hmac`` or any CDN edge function)::

    url     = MEDIA_BASE_URL + path + "?st=" + token + "&ts=" + ts + "&e=" + lifetime
    path    = "/" + the track's media_path (percent-encoded, "/" kept)
    ts      = the signing time, Unix seconds (UTC)
    e       = lifetime in seconds (MEDIA_URL_TTL_SECONDS, default 3600); valid until ts + e
    message = path + "|" + ts + "|" + e
    token   = base64url(HMAC-SHA256(MEDIA_URL_SECRET, message)), without "=" padding

nginx with the ``ngx_http_secure_link_hmac_module``::

    location /audio/ {
        secure_link_hmac           "$arg_st,$arg_ts,$arg_e";
        secure_link_hmac_secret    $media_url_secret;
        secure_link_hmac_message   "$uri|$arg_ts|$arg_e";
        secure_link_hmac_algorithm sha256;
        if ($secure_link_hmac != "1") { return 403; }
    }

A CDN function does the same: recompute the HMAC over ``uri|ts|e``, compare in constant
time, and refuse when ``now > ts + e``. ``verify_stream_path`` is the reference
implementation (used by the tests).

Without MEDIA_BASE_URL or MEDIA_URL_SECRET (development), URLs point at
``<PUBLIC_BASE_URL>/dev-media-unsigned/<path>`` with ``st=development-only-unsigned``: nothing
serves or trusts them, they only show where the file would be. In production no URL is
produced at all (``stream_url`` is null) until both settings are present.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlencode

from flask import current_app

from . import clock

log = logging.getLogger(__name__)

DEV_PREFIX = "/dev-media-unsigned"
DEV_TOKEN = "development-only-unsigned"


def _path(media_path: str) -> str:
    return "/" + quote(media_path.lstrip("/"), safe="/-_.~")


def sign(secret: str, path: str, ts: int, lifetime: int) -> str:
    message = f"{path}|{ts}|{lifetime}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def stream_url(media_path: str, now: datetime | None = None, *,
               lifetime: int | None = None) -> tuple[str | None, datetime]:
    """``(url, expires_at)`` for one media file; url is None in production without config.
    ``lifetime`` in seconds, default ``MEDIA_URL_TTL_SECONDS``."""
    cfg = current_app.config
    now = now or clock.now()
    lifetime = int(lifetime or cfg.get("MEDIA_URL_TTL_SECONDS") or 3600)
    ts = int(now.timestamp())
    expires_at = datetime.fromtimestamp(ts + lifetime, UTC)
    path = _path(media_path)
    base, secret = cfg.get("MEDIA_BASE_URL"), cfg.get("MEDIA_URL_SECRET")
    if base and secret:
        query = urlencode({"st": sign(secret, path, ts, lifetime), "ts": ts, "e": lifetime})
        return f"{base.rstrip('/')}{path}?{query}", expires_at
    if cfg.get("SONICUS_ENV") == "production":
        log.warning("MEDIA_BASE_URL/MEDIA_URL_SECRET unset: no stream URLs in production")
        return None, expires_at
    public = (cfg.get("PUBLIC_BASE_URL") or "").rstrip("/")
    query = urlencode({"st": DEV_TOKEN, "ts": ts, "e": lifetime})
    return f"{public}{DEV_PREFIX}{path}?{query}", expires_at


def download_url(media_path: str, now: datetime | None = None) -> tuple[str | None, datetime]:
    """A URL to download one file for offline listening: the stream URL's scheme with the
    longer ``MEDIA_DOWNLOAD_URL_TTL_SECONDS`` lifetime (default a day)."""
    lifetime = int(current_app.config.get("MEDIA_DOWNLOAD_URL_TTL_SECONDS") or 86400)
    return stream_url(media_path, now, lifetime=lifetime)


def verify_stream_path(secret: str, path: str, st: str, ts: str, lifetime: str,
                       now: datetime | None = None) -> bool:
    """What the media server checks: a valid signature and not yet expired."""
    try:
        ts_i, life_i = int(ts), int(lifetime)
    except (TypeError, ValueError):
        return False
    expected = sign(secret, path, ts_i, life_i)
    if not hmac.compare_digest(expected, st or ""):
        return False
    now = now or clock.now()
    return now <= datetime.fromtimestamp(ts_i, UTC) + timedelta(seconds=life_i)
