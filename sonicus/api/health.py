"""Public routes: liveness, readiness and the tier table."""

from __future__ import annotations

import marshmallow as ma
from flask.views import MethodView
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ..api_errors import ApiError
from ..envelope import Blueprint
from ..extensions import db, get_redis
from ..schemas.common import TierSchema
from ..tiers import TIERS

blp = Blueprint("health", __name__, url_prefix="/api", description="Health and public data.")


class HealthSchema(ma.Schema):
    status = ma.fields.String(required=True)


class ReadySchema(ma.Schema):
    status = ma.fields.String(required=True)
    database = ma.fields.String(required=True)
    redis = ma.fields.String(required=True)
    degraded = ma.fields.List(ma.fields.String(), metadata={
        "description": "Dependencies that are down while the API keeps serving (`redis`)."})


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self):
        """Liveness: the process answers."""
        return {"status": "ok"}


def check_database() -> str:
    """"ok" when the database answers. A pooled connection the server had dropped (a
    failover, pg_terminate_backend) is not the database being unreachable: the pool is
    invalidated by that failure and the check asks once more, on a fresh connection."""
    answer = _select_one()
    if answer == "dropped":
        answer = _select_one()
    return "unreachable" if answer == "dropped" else answer


def _select_one() -> str:
    """"ok", "unreachable", or "dropped": the connection was one the server had dropped."""
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except DBAPIError as exc:
        db.session.rollback()
        return "dropped" if exc.connection_invalidated else "unreachable"
    except Exception:
        db.session.rollback()
        return "unreachable"
    finally:
        db.session.remove()


def check_redis() -> str:
    client = get_redis()
    if client is None:
        return "not configured"
    try:
        client.ping()
        return "ok"
    except Exception:
        return "unreachable"


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200, ReadySchema)
    @blp.errors((503, "`service_unavailable`: the database is unreachable."))
    def get(self):
        """Readiness: 503 only when the database is unreachable. Redis down answers 200 with
        `degraded: ["redis"]`: the API keeps serving without it (jobs wait, caches miss)."""
        result = {"status": "ok", "database": check_database(), "redis": check_redis(),
                  "degraded": []}
        if result["database"] == "unreachable":
            raise ApiError(503, "service_unavailable", "The database is unreachable.",
                           errors=["database: unreachable"], headers={"Retry-After": "2"})
        if result["redis"] == "unreachable":
            result["status"] = "degraded"
            result["degraded"].append("redis")
        return result


@blp.route("/tiers")
class Tiers(MethodView):
    @blp.response(200, TierSchema(many=True))
    def get(self):
        """The subscription tiers with their prices and limits."""
        return [{"name": t.name, "title": t.title, "price": t.price,
                 "price_cents": t.price_cents, "limits": t.limits} for t in TIERS.values()]
