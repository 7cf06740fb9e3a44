"""Offline listening: download licences and the upload of sessions played offline."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..pagination import PageArgsSchema
from ..schemas.common import EmptySchema
from ..schemas.offline import (
    SYNC_BODY_BYTES,
    DownloadRequestSchema,
    DownloadSchema,
    SyncAnswerSchema,
    SyncRequestSchema,
)
from ..services import downloads, offline_sync
from ..web import takes_bodies_up_to

blp = Blueprint("offline", __name__, url_prefix="/api/user",
                description="Offline listening: downloads and the upload of offline sessions.")


@blp.route("/downloads")
class Downloads(MethodView):
    @require_user
    @blp.arguments(PageArgsSchema, location="query")
    @blp.response(200, DownloadSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """The caller's live licences, newest first, with fresh download URLs."""
        return downloads.list_downloads(caller, args)

    @require_user
    @blp.arguments(DownloadRequestSchema)
    @blp.response(201, DownloadSchema)
    @blp.errors(401, (402, "`payment_required`: the tier chosen that would allow it waits for "
                           "its payment (a checkout pending)."),
                (403, "`feature_not_in_tier` (the tier has no offline downloads and no "
                      "assignment opens the package) or `package_locked`."), 404, 422)
    def post(self, body, caller):
        """Grant (or renew) a 30-day licence to keep a package offline; signed download URLs
        for its tracks."""
        return downloads.grant_download(caller.id, body["package_id"])


@blp.route("/downloads/<int:package_id>")
class Download(MethodView):
    @require_user
    @blp.response(200, EmptySchema)
    @blp.errors(401, 403, (404, "`not_found`: no live licence of the caller's for it."))
    def delete(self, package_id, caller):
        """End the caller's licence of a package."""
        downloads.end_download(caller.id, package_id)
        set_message("Download licence ended.")
        return {}


@blp.route("/sessions/sync")
class SessionSync(MethodView):
    @takes_bodies_up_to(SYNC_BODY_BYTES)  # 100 items with notes outgrow MAX_CONTENT_LENGTH
    @require_user
    @blp.arguments(SyncRequestSchema)
    @blp.response(200, SyncAnswerSchema)
    @blp.errors(401, 403, 422)
    def post(self, body, caller):
        """Upload sessions played offline (1..100): one result per item, in order
        (`created`, `unchanged` or `rejected` with a `code`)."""
        return offline_sync.sync_sessions(caller.id, body["sessions"])
