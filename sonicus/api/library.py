"""The caller's personal library of packages."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint, set_message
from ..schemas.catalog import (
    LibraryAddSchema,
    LibraryEntrySchema,
    LibraryListArgsSchema,
    LibraryUpdateSchema,
)
from ..schemas.common import EmptySchema
from ..services import library

blp = Blueprint("library", __name__, url_prefix="/api/user",
                description="The caller's library of packages.")


@blp.route("/packages")
class Library(MethodView):
    @require_user
    @blp.arguments(LibraryListArgsSchema, location="query")
    @blp.response(200, LibraryEntrySchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """The caller's library, most recently added first (archived packages drop out)."""
        return library.list_library(caller, args)


@blp.route("/packages/<int:package_id>")
class LibraryEntry(MethodView):
    @require_user
    @blp.arguments(LibraryAddSchema, required=False)
    @blp.response(201, LibraryEntrySchema, description="Added to the library.")
    @blp.alt_response(200, schema=LibraryEntrySchema,
                      description="Already in the library (favourite updated when given).")
    @blp.errors(401, (402, "`payment_required`: the tier chosen that would open it waits for "
                           "its payment (a checkout pending)."),
                (403, "`package_locked`: the package is above the tier."), 404, 422)
    def post(self, body, package_id, caller):
        """Add a package to the library; optional body ``{favorite}``. 403 above the tier."""
        item, created = library.add_to_library(caller, package_id, body.get("favorite"))
        set_message("Added to your library." if created else "Already in your library.")
        return item, 201 if created else 200

    @require_user
    @blp.arguments(LibraryUpdateSchema)
    @blp.response(200, LibraryEntrySchema)
    @blp.errors(401, 403, 404, 422)
    def patch(self, body, package_id, caller):
        """Mark or unmark a library entry as a favourite."""
        return library.set_favorite(caller, package_id, body["favorite"])

    @require_user
    @blp.response(200, EmptySchema)
    @blp.errors(401, 403, 404)
    def delete(self, package_id, caller):
        """Remove a package from the library."""
        library.remove_from_library(caller.id, package_id)
        set_message("Removed from your library.")
        return {}
