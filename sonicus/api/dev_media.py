"""Development and testing only: the API serves the media files generated in the instance
folder (``sonicus.dev_media``) at ``/dev-media/<path>``, where development stream URLs point.

Audio needs the stream URL's signature (``media.verify_stream_path``, the check a media server
makes in production: 403 when missing, altered or expired); artwork is public. Range requests
are answered as RFC 9110 (section 14) says, ``byte_range_to_serve``: ``Accept-Ranges: bytes``,
206 with ``Content-Range`` for a satisfiable range, 416 with ``Content-Range: bytes */<size>``
for one that is not, and the whole file (200) for a Range the server ignores. Not part of the
API document, and never registered in production (where ``MEDIA_BASE_URL`` serves).
"""

from __future__ import annotations

import mimetypes
import os
import re

from flask import Blueprint, current_app, request
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.security import safe_join
from werkzeug.utils import send_file

from .. import media
from ..api_errors import ApiError, not_found

blp = Blueprint("dev_media", __name__)

CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
                 ".flac": "audio/flac", ".svg": "image/svg+xml"}


_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_PAST_ANY_FILE = 10 ** 18  # a position of more digits (a header may hold thousands)


def _position(digits: str) -> int:
    return int(digits) if len(digits.lstrip("0")) < 18 else _PAST_ANY_FILE


def byte_range_to_serve(header: str | None, size: int) -> str | None:
    """What a ``Range`` header asks of a file of ``size`` bytes, by RFC 9110 section 14: None
    when the server ignores it and sends the whole file (no header; a unit other than
    ``bytes``, which it MUST ignore; a ranges-specifier that is not valid, or asks for several
    ranges, or an empty file: it MAY ignore those), else the one range to send as werkzeug
    reads it: ``bytes=<first>-<last>`` within the file (a last position past the end, or a
    suffix longer than the file, takes what there is), or ``bytes=<size>-`` when it is not
    satisfiable (a first position at or past the end, a suffix of 0 bytes: 416)."""
    if not header or size == 0:
        return None
    unit, equals, range_set = header.partition("=")
    if not equals or unit.strip(" \t").lower() != "bytes":
        return None
    # a list: elements separated by commas and optional whitespace; empty ones are skipped
    specs = [spec for spec in (part.strip(" \t") for part in range_set.split(",")) if spec]
    if len(specs) != 1:
        return None
    if (whole := _INT_RANGE.fullmatch(specs[0])) is not None:
        first = _position(whole[1])
        last = _position(whole[2]) if whole[2] else None
        if last is not None and last < first:
            return None  # not a valid range-spec
        if first >= size:
            return f"bytes={size}-"
        return f"bytes={first}-{size - 1 if last is None else min(last, size - 1)}"
    if (suffix := _SUFFIX_RANGE.fullmatch(specs[0])) is not None:
        length = _position(suffix[1])
        return f"bytes={max(size - length, 0)}-{size - 1}" if length else f"bytes={size}-"
    return None


def _content_type(path: str) -> str:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(path)[0] \
        or "application/octet-stream"


@blp.get(f"{media.DEV_PREFIX}/<path:media_path>")
def serve(media_path: str):
    if not media_path.lower().endswith(media.PUBLIC_SUFFIXES):
        args = request.args
        if not media.verify_stream_path(media.dev_secret(current_app.config),
                                        media.stream_path(media_path), args.get("st"),
                                        args.get("ts"), args.get("e")):
            raise ApiError(403, "forbidden", "This media link is not valid or has expired.")
    path = safe_join(os.fspath(media.media_root(current_app)), media_path)
    if path is None or not os.path.isfile(path):
        not_found("Media file")
    environ = dict(request.environ)
    served_range = byte_range_to_serve(environ.pop("HTTP_RANGE", None), os.path.getsize(path))
    if served_range is not None:
        environ["HTTP_RANGE"] = served_range
    try:
        response = send_file(path, environ, mimetype=_content_type(media_path), max_age=3600,
                             response_class=current_app.response_class)
    except RequestedRangeNotSatisfiable as exc:
        raise ApiError(416, "range_not_satisfiable", "The requested range is not satisfiable.",
                       headers={"Content-Range": f"bytes */{exc.length}",
                                "Accept-Ranges": "bytes"}) from exc
    # an app on another origin (the SPA's dev server) plays and shows these
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


def register_dev_media(app) -> None:
    if media.dev_media_enabled(app.config):
        app.register_blueprint(blp)
