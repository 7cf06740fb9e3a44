"""Development-only: the local token issuer's JWKS (never registered in production)."""

from __future__ import annotations

from flask import current_app, jsonify

from ..devtokens import public_jwks
from ..envelope import Blueprint

blp = Blueprint("dev", __name__, url_prefix="/api/dev",
                description="Development token issuer (development only).")


@blp.route("/jwks/")
@blp.doc(hide=True)
def jwks():
    return jsonify(public_jwks(current_app))
