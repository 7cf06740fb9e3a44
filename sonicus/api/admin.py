"""Routes of the admin area (see API.md): platform stats, users, jobs, audit log.

Administrators only (the ``sonicus-super-admin`` group); everyone else gets 403 ``forbidden``.
"""

from __future__ import annotations

from flask.views import MethodView

from ..auth import current_user, require_super_admin
from ..envelope import Blueprint, set_message, set_pagination
from ..schemas.admin import (
    AdminUserDetailSchema,
    AdminUserQuerySchema,
    AdminUserSummarySchema,
    AdminUserUpdateSchema,
    AuditEntrySchema,
    AuditQuerySchema,
    JobsOverviewSchema,
    JobsQuerySchema,
    PlatformStatsQuerySchema,
    PlatformStatsSchema,
)
from ..services import admin_users, job_monitor, stats

blp = Blueprint("admin", __name__, url_prefix="/api", description="Admin.")

_ERRORS = {401: "No or invalid token.", 403: "Not an administrator."}


def _document_errors(*statuses):
    def decorate(func):
        for status in statuses:
            func = blp.alt_response(status, description=_ERRORS.get(status))(func)
        return func
    return decorate


@blp.route("/admin/platform/stats")
class PlatformStats(MethodView):
    @require_super_admin
    @blp.arguments(PlatformStatsQuerySchema, location="query")
    @blp.response(200, PlatformStatsSchema)
    @_document_errors(401, 403)
    def get(self, args):
        """Platform figures: users, subscriptions, revenue, listening (cached)."""
        return stats.get_platform_stats(refresh=args["refresh"])


@blp.route("/admin/users")
class Users(MethodView):
    @require_super_admin
    @blp.arguments(AdminUserQuerySchema, location="query")
    @blp.response(200, AdminUserSummarySchema(many=True))
    @_document_errors(401, 403)
    def get(self, args):
        """Users, newest first; search by email or name, filter by tier or status."""
        items, total = admin_users.list_users(
            q=args.get("q"), tier=args.get("tier"), status=args.get("status"),
            page=args["page"], per_page=args["per_page"])
        set_pagination(args["page"], args["per_page"], total)
        return items


@blp.route("/admin/users/<int:user_id>")
class UserDetail(MethodView):
    @require_super_admin
    @blp.response(200, AdminUserDetailSchema)
    @_document_errors(401, 403, 404)
    def get(self, user_id):
        """One user: subscription, usage today, last activity."""
        return admin_users.user_detail(user_id)

    @require_super_admin
    @blp.arguments(AdminUserUpdateSchema)
    @blp.response(200, AdminUserDetailSchema)
    @_document_errors(401, 403, 404, 409)
    def patch(self, changes, user_id):
        """Grant a tier (complimentary) or suspend/reactivate. 409 on suspending yourself."""
        changed = admin_users.update_user(current_user._get_current_object(), user_id, changes)
        set_message("User updated." if changed else "No change.")
        return admin_users.user_detail(user_id)


@blp.route("/admin/jobs")
class Jobs(MethodView):
    @require_super_admin
    @blp.arguments(JobsQuerySchema, location="query")
    @blp.response(200, JobsOverviewSchema)
    @_document_errors(401, 403, 503)
    def get(self, args):
        """Queue depth, failed jobs with their error, workers seen."""
        overview = job_monitor.jobs_overview(args["failed_limit"])
        if overview["backend"] == "inline":
            set_message("No REDIS_URL: jobs run in-process, nothing is queued.")
        return overview


@blp.route("/admin/audit")
class Audit(MethodView):
    @require_super_admin
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditEntrySchema(many=True))
    @_document_errors(401, 403)
    def get(self, args):
        """The audit log of admin changes, newest first."""
        entries, total = admin_users.list_audit(
            action=args.get("action"), target_type=args.get("target_type"),
            target_id=args.get("target_id"), actor_id=args.get("actor_id"),
            page=args["page"], per_page=args["per_page"])
        set_pagination(args["page"], args["per_page"], total)
        return entries
