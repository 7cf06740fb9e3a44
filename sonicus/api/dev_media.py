"""Development and testing only: the API serves the media files generated in the instance
folder (``sonicus.dev_media``) at ``/dev-media/<path>``, where development stream URLs point.

Audio needs the stream URL's signature (``media.verify_stream_path``, the check a media server
makes in production: 403 when missing, altered or expired); artwork is public. Range requests
are answered as a media server would: ``Accept-Ranges: bytes``, 206 with ``Content-Range`` for
a satisfiable range, 416 with ``Content-Range: bytes */<size>`` for one that is not. Not part
of the API document, and never registered in production (where ``MEDIA_BASE_URL`` serves).
"""

from __future__ import annotations

import mimetypes

from flask import Blueprint, current_app, request, send_from_directory
from werkzeug.exceptions import NotFound, RequestedRangeNotSatisfiable

from .. import media
from ..api_errors import ApiError, not_found

blp = Blueprint("dev_media", __name__)

CONTENT_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg",
                 ".flac": "audio/flac", ".svg": "image/svg+xml"}


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
    try:
        response = send_from_directory(media.media_root(current_app), media_path,
                                       mimetype=_content_type(media_path), max_age=3600)
    except NotFound:
        not_found("Media file")
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
