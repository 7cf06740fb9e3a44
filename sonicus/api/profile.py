"""The caller's own profile: read, change, export, erase."""

from __future__ import annotations

from flask import after_this_request
from flask.views import MethodView

from ..auth import require_user
from ..caller import Caller
from ..envelope import Blueprint, set_message
from ..retry_safe import request_claim
from ..schemas.common import EmptySchema
from ..schemas.export import ExportSchema
from ..schemas.profile import ProfileSchema, ProfileUpdateSchema
from ..services import users

blp = Blueprint("profile", __name__, url_prefix="/api/user", description="The caller's profile.")


@blp.route("/profile")
class Profile(MethodView):
    @require_user
    @blp.response(200, ProfileSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """The caller's profile."""
        return caller

    @require_user
    @blp.arguments(ProfileUpdateSchema)
    @blp.response(200, ProfileSchema)
    @blp.errors(401, 403, 422)
    def put(self, changes, caller):
        """Change display name, time zone, day start hour or preferences."""
        user = users.update_profile(caller.id, changes)
        set_message("Profile updated.")
        return Caller.of(user, user.subscription)

    @require_user
    @blp.response(200, EmptySchema)
    @blp.errors(401, 403)
    def delete(self, caller):
        """Erase the account and its personal data."""
        users.erase_user(caller.id, claim=request_claim())
        set_message("Your account and personal data were erased.")
        return {}


@blp.route("/export")
class Export(MethodView):
    @require_user
    @blp.response(200, ExportSchema)
    @blp.errors(401, 403)
    def get(self, caller):
        """Everything stored about the caller, as one document."""
        after_this_request(_end_reads)  # once the document is written out
        return users.export_user_data(caller.id)


def _end_reads(response):
    """End the export's transaction (read at one moment, ``transaction.read_one_moment``)
    once its document is written: nothing else of the request reads in that snapshot."""
    users.end_reads()
    return response
