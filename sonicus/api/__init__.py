"""One flask-smorest Blueprint per area, registered here in one place."""

from __future__ import annotations

from . import (
    admin,
    admin_catalog,
    analytics,
    billing,
    dev,
    dev_media,
    health,
    library,
    offline,
    packages,
    profile,
    reminders,
    sessions,
    subscription,
)

# The order is the order of the OpenAPI document's tags.
AREAS = (health, profile, subscription, packages, library, sessions, offline, analytics,
         reminders, admin, admin_catalog, billing)


def register_api(app, api) -> None:
    for area in AREAS:
        api.register_blueprint(area.blp)
    if app.config.get("DEV_TOKEN_ISSUER") and app.config["SONICUS_ENV"] != "production":
        app.register_blueprint(dev.blp)  # not an API route: outside the document
    dev_media.register_dev_media(app)  # development and testing only; not in the document
