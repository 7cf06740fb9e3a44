"""Admin routes for the catalog and library assignment (see API.md, Admin)."""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_super_admin
from ..envelope import Blueprint, set_message
from ..schemas.catalog import (
    AdminAssignSchema,
    AdminPackageListArgsSchema,
    AdminPackageSchema,
    AssignmentSchema,
    LibraryEntrySchema,
    PackageCreateSchema,
    PackageUpdateSchema,
)
from ..services import catalog, library

blp = Blueprint("admin_catalog", __name__, url_prefix="/api/admin",
                description="Catalog management (administrators).")


@blp.route("/packages")
class AdminPackages(MethodView):
    @require_super_admin
    @blp.arguments(AdminPackageListArgsSchema, location="query")
    @blp.response(200, AdminPackageSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """Every package, drafts included (archived ones with ``include_archived=true``)."""
        return catalog.admin_list_packages(args)

    @require_super_admin
    @blp.arguments(PackageCreateSchema)
    @blp.response(201, AdminPackageSchema)
    @blp.errors(401, 403, (409, "`conflict`: the slug is taken."), 422)
    def post(self, body, caller):
        """Create a package with its tracks."""
        package = catalog.create_package(caller, body)
        set_message("Package created.")
        return package


@blp.route("/packages/<int:package_id>")
class AdminPackage(MethodView):
    @require_super_admin
    @blp.response(200, AdminPackageSchema)
    @blp.errors(401, 403, 404)
    def get(self, package_id, caller):
        """Any package, including unpublished and archived ones."""
        return catalog.admin_get_package(package_id)

    @require_super_admin
    @blp.arguments(PackageUpdateSchema)
    @blp.response(200, AdminPackageSchema)
    @blp.errors(401, 403, 404, (409, "`conflict`: the slug is taken."), 422)
    def patch(self, body, package_id, caller):
        """Change a package; ``tracks``, when given, replaces the track list."""
        package = catalog.update_package(caller, package_id, body)
        set_message("Package updated.")
        return package

    @require_super_admin
    @blp.response(200, AdminPackageSchema)
    @blp.errors(401, 403, 404)
    def delete(self, package_id, caller):
        """Archive a package: gone from the catalog; past sessions keep it."""
        package = catalog.archive_package(caller, package_id)
        set_message("Package archived.")
        return package


@blp.route("/users/<int:user_id>/packages")
class AdminUserPackages(MethodView):
    @require_super_admin
    @blp.arguments(AdminAssignSchema)
    @blp.response(201, LibraryEntrySchema, description="Assigned.")
    @blp.alt_response(200, schema=LibraryEntrySchema, description="Already assigned.")
    @blp.errors(401, 403, 404, (422, "`validation_error`, e.g. `expires_at` not in the future."))
    def post(self, body, user_id, caller):
        """Assign a catalog package to a user: playable whatever their tier until
        ``expires_at`` (optional, in the future) or a revocation; it is put in their library.
        A live assignment of the package is updated (its ``expires_at`` becomes the one given)."""
        entry, created = library.assign_package(caller, user_id, body["package_id"],
                                                body.get("favorite"), body.get("expires_at"))
        set_message("Package assigned." if created else "The assignment was updated.")
        return entry, 201 if created else 200


@blp.route("/users/<int:user_id>/packages/<int:package_id>")
class AdminUserPackage(MethodView):
    @require_super_admin
    @blp.response(200, AssignmentSchema)
    @blp.errors(401, 403, (404, "`not_found`: no such user, or no live assignment."))
    def delete(self, user_id, package_id, caller):
        """Revoke a live assignment. It stays as history; a running session may finish."""
        assignment = library.revoke_assignment(caller, user_id, package_id)
        set_message("Assignment revoked.")
        return assignment
