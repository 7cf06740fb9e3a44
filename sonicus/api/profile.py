"""The caller's own profile: read, change, export, erase."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import current_identity, current_user, require_user
from ..envelope import Blueprint, Dumped, set_message
from ..identity_cache import IdentitySnapshot
from ..schemas.common import EmptySchema
from ..schemas.export import ExportSchema
from ..schemas.profile import ProfileSchema, ProfileUpdateSchema
from ..services import users

blp = Blueprint("profile", __name__, url_prefix="/api/user", description="The caller's profile.")


@blp.route("/profile")
class Profile(MethodView):
    @require_user
    @blp.response(200, ProfileSchema)
    def get(self):
        """The caller's profile."""
        caller = current_identity()
        if isinstance(caller, IdentitySnapshot):  # built once per sign-in snapshot
            return Dumped(caller.remember(
                "profile", lambda: ProfileSchema().dump(users.profile(caller))))
        return users.profile(caller)

    @require_user
    @blp.arguments(ProfileUpdateSchema)
    @blp.response(200, ProfileSchema)
    def put(self, changes):
        """Change display name, time zone, day start hour or preferences."""
        users.update_profile(current_user, changes)
        set_message("Profile updated.")
        return users.profile(current_user)

    @require_user
    @blp.response(200, EmptySchema)
    def delete(self):
        """Erase the account and its personal data."""
        users.erase_user(current_user._get_current_object())
        set_message("Your account and personal data were erased.")
        return {}


@blp.route("/export")
class Export(MethodView):
    @require_user
    @blp.response(200, ExportSchema)
    def get(self):
        """Everything stored about the caller, as one document."""
        return users.export_user_data(current_user)
