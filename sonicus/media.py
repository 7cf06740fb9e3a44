"""Signed, expiring stream URLs for audio files.

Scheme (HMAC-SHA256, verifiable by nginx ``secure_link_hmac`` or any CDN edge function)::

    url     = origin of MEDIA_BASE_URL + path + "?st=" + token + "&ts=" + ts + "&e=" + lifetime
    path    = the base's own path (a folder such as "/media", or none) + "/" + the track's
              media_path (percent-encoded, "/" kept): the whole path the media server sees
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

``$uri`` is the URL's whole path, the base's folder included: it is what is signed, so a
``MEDIA_BASE_URL`` of ``https://cdn.example.com/media`` (``location /media/``) verifies as one
at the host's root does. The folder is made of the characters a media_path is
(``config.validate_config``), so its decoded form is itself. A CDN function does the same:
recompute the HMAC over ``uri|ts|e``, compare in constant time, and refuse when
``now > ts + e``. ``verify_stream_path`` is the reference
implementation (used by the tests).

Without MEDIA_BASE_URL (development and testing), URLs point at the API itself,
``<PUBLIC_BASE_URL>/dev-media/<path>``, signed by the same scheme with ``MEDIA_URL_SECRET`` or,
without it, a secret derived from ``SECRET_KEY`` (``dev_secret``); the API serves the files
generated in the instance folder's ``media/`` there (``api/dev_media.py``, checked with
``verify_stream_path``). In production no URL is produced at all (``stream_url`` is null)
until both settings are present, and the API never serves media.

Artwork (a package's ``image_path``) is not paid content: ``public_url`` gives an unsigned,
lasting address under the same base.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

from flask import current_app

from . import clock

log = logging.getLogger(__name__)

DEV_PREFIX = "/dev-media"
# Served without a signature by the development media route: artwork, not paid content.
PUBLIC_SUFFIXES = (".svg", ".png", ".jpg", ".jpeg", ".webp")


def dev_media_enabled(cfg) -> bool:
    """The API serves media itself: development and testing, without ``MEDIA_BASE_URL`` and
    ``MEDIA_URL_SECRET`` (a media server of their own)."""
    return cfg.get("SONICUS_ENV") in ("development", "testing") and not (
        cfg.get("MEDIA_BASE_URL") and cfg.get("MEDIA_URL_SECRET"))


def dev_secret(cfg) -> str:
    """What development stream URLs are signed with: ``MEDIA_URL_SECRET``, else a key derived
    from ``SECRET_KEY``."""
    if cfg.get("MEDIA_URL_SECRET"):
        return cfg["MEDIA_URL_SECRET"]
    key = (cfg.get("SECRET_KEY") or "").encode()
    return hmac.new(key, b"sonicus-dev-media", hashlib.sha256).hexdigest()


def media_root(app) -> Path:
    """Where development media files live: the instance folder's ``media/``."""
    return Path(app.instance_path) / "media"


def stream_path(media_path: str) -> str:
    """The signed path of a media file: ``/`` and its percent-encoded ``media_path``."""
    return _path(media_path)


def _path(media_path: str) -> str:
    return "/" + quote(media_path.lstrip("/"), safe="/-_.~")


def _base(base_url: str) -> tuple[str, str]:
    """``MEDIA_BASE_URL`` as (origin, folder): ``https://cdn.example.com/media/`` is
    (``https://cdn.example.com``, ``/media``); the folder is part of every signed path."""
    parts = urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}", parts.path.rstrip("/")


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
        origin, folder = _base(base)
        path = folder + path  # the path the media server checks ($uri)
        query = urlencode({"st": sign(secret, path, ts, lifetime), "ts": ts, "e": lifetime})
        return f"{origin}{path}?{query}", expires_at
    if not dev_media_enabled(cfg):
        log.warning("MEDIA_BASE_URL/MEDIA_URL_SECRET unset: no stream URLs in production")
        return None, expires_at
    public = (cfg.get("PUBLIC_BASE_URL") or "").rstrip("/")
    query = urlencode({"st": sign(dev_secret(cfg), path, ts, lifetime), "ts": ts, "e": lifetime})
    return f"{public}{DEV_PREFIX}{path}?{query}", expires_at


def download_url(media_path: str, now: datetime | None = None,
                 until: datetime | None = None) -> tuple[str | None, datetime]:
    """A URL to download one file for offline listening: the stream URL's scheme with the
    lifetime ``MEDIA_DOWNLOAD_URL_TTL_SECONDS`` (default 2 hours, a stream URL's 1), and never
    valid past ``until`` (the end of the licence it is given with).

    The media server checks the signature and the lifetime only (``path|ts|e`` under one
    secret: nothing in it names the account or the licence), so no URL already given can be
    withdrawn: an erasure, a ``DELETE`` of the licence, a downgrade or a revoked assignment
    leaves the URLs given before working until they expire. The lifetime is a few hours, not
    a day, for that reason; a device still entitled fetches later with fresh URLs from
    ``GET /api/user/downloads``, which signs them only for licences live then."""
    now = now or clock.now()
    lifetime = int(current_app.config.get("MEDIA_DOWNLOAD_URL_TTL_SECONDS") or 7200)
    if until is not None:
        lifetime = max(1, min(lifetime, int((until - now).total_seconds())))
    return stream_url(media_path, now, lifetime=lifetime)


def public_url(media_path: str | None) -> str | None:
    """A lasting, unsigned address of a public media file (artwork): under ``MEDIA_BASE_URL``,
    else the API's development media route; None without a path or a place to serve it."""
    if not media_path:
        return None
    cfg = current_app.config
    if dev_media_enabled(cfg):
        return f"{(cfg.get('PUBLIC_BASE_URL') or '').rstrip('/')}{DEV_PREFIX}{_path(media_path)}"
    if cfg.get("MEDIA_BASE_URL"):
        origin, folder = _base(cfg["MEDIA_BASE_URL"])
        return f"{origin}{folder}{_path(media_path)}"
    return None


def verify_stream_path(secret: str, path: str, st: str, ts: str, lifetime: str,
                       now: datetime | None = None) -> bool:
    """What the media server checks: a valid signature and not yet expired."""
    try:
        ts_i, life_i = int(ts), int(lifetime)
    except (TypeError, ValueError):
        return False
    expected = sign(secret, path, ts_i, life_i)
    # bytes: a str with a character outside ASCII cannot be compared (TypeError)
    if not hmac.compare_digest(expected.encode(), (st or "").encode("utf-8", "replace")):
        return False
    now = now or clock.now()
    return now <= datetime.fromtimestamp(ts_i, UTC) + timedelta(seconds=life_i)
