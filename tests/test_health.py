def test_health_is_public_and_enveloped(client):
    res = client.get("/api/health")
    assert res.status_code == 200
    assert res.json == {"success": True, "data": {"status": "ok"}, "message": None,
                        "errors": None, "pagination": None}


def test_ready_reports_database_and_redis(client):
    res = client.get("/api/ready")
    assert res.status_code == 200
    assert res.json["data"] == {"status": "ok", "database": "ok", "redis": "ok",
                                "degraded": []}


def test_redis_down_only_degrades_readiness(make_config):
    """A Redis blip must not take every pod out of rotation: the API keeps serving."""
    from sonicus import create_app

    app = create_app(make_config(REDIS_URL="redis://127.0.0.1:1/0"))
    res = app.test_client().get("/api/ready")
    assert res.status_code == 200
    assert res.json["success"] is True
    assert res.json["data"]["degraded"] == ["redis"]
    assert res.json["data"]["redis"] == "unreachable"
    assert res.json["data"]["database"] == "ok"


def test_ready_is_503_when_database_is_unreachable(make_config):
    from sonicus import create_app

    app = create_app(make_config(DATABASE_URL="postgresql://postgres@127.0.0.1:1/test"))
    res = app.test_client().get("/api/ready")
    assert res.status_code == 503
    assert res.json["code"] == "service_unavailable"
    assert "database: unreachable" in res.json["errors"]


def test_tiers_table(client):
    res = client.get("/api/tiers")
    assert res.status_code == 200
    tiers = {t["name"]: t for t in res.json["data"]}
    assert list(tiers) == ["starter", "premium", "pro"]
    assert tiers["premium"]["price"] == "9.99"
    assert tiers["pro"]["price"] == "19.99"
    assert tiers["starter"]["limits"] == {"daily_sessions": 3, "max_session_minutes": 15,
                                          "package_levels": ["public"],
                                          "offline_downloads": False}
    assert tiers["premium"]["limits"]["offline_downloads"] is True
    assert tiers["pro"]["limits"]["daily_sessions"] is None
    assert tiers["pro"]["limits"]["package_levels"] == ["public", "premium", "pro_exclusive"]
