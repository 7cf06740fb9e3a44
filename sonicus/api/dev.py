"""Development-only: the local token issuer's JWKS (never registered in production).

A plain Flask blueprint: the JWKS is the issuer's document, not an API answer, so it stays
out of the OpenAPI document (which is then the same, and valid, in every environment)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ..devtokens import public_jwks

blp = Blueprint("dev", __name__, url_prefix="/api/dev")


@blp.route("/jwks/")
def jwks():
    return jsonify(public_jwks(current_app))
