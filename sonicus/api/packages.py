"""The catalog: published packages with ``access`` and ``in_library`` for the caller, package
detail by id or slug, and the categories."""

from __future__ import annotations

from flask.views import MethodView

from ..api_errors import not_found
from ..auth import require_user
from ..envelope import Blueprint
from ..schemas.catalog import (
    SLUG_RE,
    CategorySchema,
    PackageDetailSchema,
    PackageListArgsSchema,
    PackageSchema,
)
from ..services import catalog

blp = Blueprint("packages", __name__, url_prefix="/api", description="The sound catalog.")


@blp.route("/packages")
class Packages(MethodView):
    @require_user
    @blp.arguments(PackageListArgsSchema, location="query")
    @blp.response(200, PackageSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """Published packages (default: most popular first); filter by category, text or
        access, order by `sort`."""
        return catalog.list_packages(caller, args)


@blp.route("/packages/<int:package_id>")
class PackageDetail(MethodView):
    @require_user
    @blp.response(200, PackageDetailSchema)
    @blp.errors(401, 403, 404)
    def get(self, package_id, caller):
        """A package with its tracks; stream URLs only when the caller's tier or an assignment
        opens it."""
        return catalog.package_detail(caller, package_id)


@blp.route("/packages/slug/<string:slug>")
class PackageBySlug(MethodView):
    @require_user
    @blp.response(200, PackageDetailSchema)
    @blp.errors(401, 403, 404)
    def get(self, slug, caller):
        """The same detail found by the package's slug (an SPA's readable address)."""
        if len(slug) > 120 or not SLUG_RE.fullmatch(slug):
            not_found("Package")
        return catalog.package_detail(caller, slug=slug)


@blp.route("/categories")
class Categories(MethodView):
    @require_user
    @blp.response(200, CategorySchema(many=True))
    @blp.errors(401, 403)
    def get(self, caller):
        """The categories of published packages, with how many packages each has, largest
        first."""
        return catalog.list_categories()
