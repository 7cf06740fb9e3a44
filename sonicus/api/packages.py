"""The catalog: published packages with ``locked`` for the caller, and package detail."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView

from ..auth import require_user
from ..envelope import Blueprint
from ..schemas.catalog import PackageDetailSchema, PackageListArgsSchema, PackageSchema
from ..services import catalog

blp = Blueprint("packages", __name__, url_prefix="/api", description="The sound catalog.")


@blp.route("/packages")
class Packages(MethodView):
    @require_user
    @blp.arguments(PackageListArgsSchema, location="query", unknown=ma.RAISE)
    @blp.response(200, PackageSchema(many=True))
    @blp.errors(401, 403, 422)
    def get(self, args, caller):
        """Published packages, most popular first; filter by category, text or access."""
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
