"""One flask-smorest Blueprint per area, registered here in one place."""

from __future__ import annotations

from importlib import import_module

# Each module exposes ``blp``; the order is the order of the OpenAPI document's tags.
AREAS = ("health", "profile", "subscription", "packages", "library", "sessions",
         "analytics", "admin", "admin_catalog", "billing")


def register_api(app, api) -> None:
    for name in AREAS:
        module = import_module(f"{__name__}.{name}")
        api.register_blueprint(module.blp)
    if app.config.get("DEV_TOKEN_ISSUER") and app.config["SONICUS_ENV"] != "production":
        from .dev import blp as dev_blp

        api.register_blueprint(dev_blp)
    from ..realtime import register_realtime

    register_realtime(app)
