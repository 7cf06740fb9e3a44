"""Routes of the admin area (see API.md): platform stats, users, jobs, audit log.

Administrators only (the ``sonicus-super-admin`` group); everyone else gets 403 ``forbidden``.
"""

from __future__ import annotations

from flask.views import MethodView

from ..auth import require_super_admin
from ..envelope import Blueprint, set_message
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

_ADMINS_ONLY = (403, "`forbidden`: not an administrator.")


@blp.route("/admin/platform/stats")
class PlatformStats(MethodView):
    @require_super_admin
    @blp.arguments(PlatformStatsQuerySchema, location="query")
    @blp.response(200, PlatformStatsSchema)
    @blp.errors(401, _ADMINS_ONLY, 422)
    def get(self, args, caller):
        """Platform figures: users, subscriptions, revenue, listening (cached)."""
        return stats.get_platform_stats(refresh=args["refresh"])


@blp.route("/admin/users")
class Users(MethodView):
    @require_super_admin
    @blp.arguments(AdminUserQuerySchema, location="query")
    @blp.response(200, AdminUserSummarySchema(many=True))
    @blp.errors(401, _ADMINS_ONLY, 422)
    def get(self, args, caller):
        """Users, newest first; search by email or name, filter by tier or status."""
        return admin_users.list_users(args)


@blp.route("/admin/users/<int:user_id>")
class UserDetail(MethodView):
    @require_super_admin
    @blp.response(200, AdminUserDetailSchema)
    @blp.errors(401, _ADMINS_ONLY, 404)
    def get(self, user_id, caller):
        """One user: subscription, usage today, last activity."""
        return admin_users.user_detail(user_id)

    @require_super_admin
    @blp.arguments(AdminUserUpdateSchema)
    @blp.response(200, AdminUserDetailSchema)
    @blp.errors(401, _ADMINS_ONLY, 404,
                (409, "`conflict`: you cannot suspend yourself, nor suspend or reactivate "
                      "another administrator (the operator's CLI does)."), 422)
    def patch(self, changes, user_id, caller):
        """Grant a tier (complimentary) or suspend/reactivate. 409 on suspending yourself or
        changing another administrator's status (``sonicus users suspend|activate`` does)."""
        changed, detail = admin_users.update_user_with_detail(caller, user_id, changes)
        set_message("User updated." if changed else "No change.")
        return detail


@blp.route("/admin/jobs")
class Jobs(MethodView):
    @require_super_admin
    @blp.arguments(JobsQuerySchema, location="query")
    @blp.response(200, JobsOverviewSchema)
    @blp.errors(401, _ADMINS_ONLY, 422, 503)
    def get(self, args, caller):
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
    @blp.errors(401, _ADMINS_ONLY, 422)
    def get(self, args, caller):
        """The audit log of admin changes, newest first."""
        return admin_users.list_audit(args)
