"""Unbound extensions; ``create_app`` binds them. Nothing here connects at import time."""

from __future__ import annotations

import redis
from flask import current_app
from flask_migrate import Migrate
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy

from .envelope import Api
from .models.base import Base

db = SQLAlchemy(model_class=Base)
migrate = Migrate()
api = Api()
sock = Sock()


def get_redis():
    """The app's Redis client, or None on the embedded default (no REDIS_URL)."""
    app = current_app
    if not app.config.get("REDIS_URL"):
        return None
    client = app.extensions.get("sonicus_redis")
    if client is None:
        client = redis.Redis.from_url(app.config["REDIS_URL"], socket_timeout=2,
                                      socket_connect_timeout=2, health_check_interval=30)
        app.extensions["sonicus_redis"] = client
    return client
