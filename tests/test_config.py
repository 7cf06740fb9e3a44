import pytest

from config import ConfigError, load_config, normalise_database_url, validate_config


def _production(**env):
    base = {"SONICUS_ENV": "production", "OIDC_ISSUER": "https://auth.example.com/application/o/s/",
            "OIDC_AUDIENCE": "client", "DATABASE_URL": "postgresql://db/sonicus",
            "BILLING_PROVIDER": "stripe", "BILLING_WEBHOOK_SECRET": "whsec",
            "STRIPE_API_KEY": "sk_live_x", "STRIPE_PRICE_IDS": "premium=price_p,pro=price_x",
            "SECRET_KEY": "s3cret", "PUBLIC_BASE_URL": "https://api.example.com",
            "VAPID_PRIVATE_KEY": "4txEB4kA7fNHdNPuFHb1lGUluwod-Ajz-qs3DC4oOD4",
            "VAPID_SUBJECT": "mailto:ops@example.com"}
    base.update(env)
    return {k: v for k, v in base.items() if v is not None}


def test_safe_production_settings_pass():
    validate_config(load_config(_production()))


@pytest.mark.parametrize("override, words", [
    ({"OIDC_ISSUER": None}, "OIDC_ISSUER"),
    ({"OIDC_AUDIENCE": None}, "OIDC_AUDIENCE"),
    ({"DATABASE_URL": None}, "PostgreSQL"),
    ({"DATABASE_URL": "sqlite:///x.db"}, "PostgreSQL"),
    ({"BILLING_PROVIDER": "sandbox"}, "sandbox"),
    ({"DEV_TOKEN_ISSUER": "true"}, "DEV_TOKEN_ISSUER"),
    ({"PUBLIC_BASE_URL": None}, "PUBLIC_BASE_URL"),
    ({"PUBLIC_BASE_URL": "api.example.com"}, "PUBLIC_BASE_URL"),
    ({"SECRET_KEY": None}, "SECRET_KEY"),
    ({"VAPID_PRIVATE_KEY": None}, "VAPID_PRIVATE_KEY"),
    ({"VAPID_SUBJECT": None}, "VAPID_SUBJECT"),
    ({"VAPID_PRIVATE_KEY": "not-a-key"}, "VAPID_PRIVATE_KEY"),
    ({"VAPID_SUBJECT": "ops@example.com"}, "VAPID_SUBJECT"),
    ({"WEBPUSH_ALLOWED_ENDPOINTS": "https://"}, "WEBPUSH_ALLOWED_ENDPOINTS"),
    ({"WEBPUSH_ALLOWED_ENDPOINTS": "https://fcm.googleapis.com"}, "WEBPUSH_ALLOWED_ENDPOINTS"),
])
def test_production_refuses_unsafe_settings(override, words):
    with pytest.raises(ConfigError) as exc:
        validate_config(load_config(_production(**override)))
    assert words in str(exc.value)


def test_create_app_refuses_in_production():
    from sonicus import create_app

    with pytest.raises(ConfigError):
        create_app({"SONICUS_ENV": "production", "DATABASE_URL": None, "OIDC_ISSUER": None})


def test_database_url_is_normalised_to_psycopg2():
    assert normalise_database_url("postgres://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert normalise_database_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert normalise_database_url("sqlite:///x") == "sqlite:///x"


def test_bad_numbers_are_named():
    with pytest.raises(ConfigError, match="TRIAL_DAYS"):
        load_config({"TRIAL_DAYS": "two weeks"})


def test_dev_token_cli(idp, tmp_path):
    from flask_migrate import upgrade

    from sonicus import create_app

    app = create_app({"SONICUS_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
                      "OIDC_ISSUER": None, "DEV_TOKEN_ISSUER": True, "REDIS_URL": None})
    app.instance_path = str(tmp_path)

    with app.app_context():
        upgrade()
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sonicus", "dev-token", "--email", "dev@example.com"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()  # stderr may carry log lines of other apps
    res = app.test_client().get("/api/user/profile",
                                headers={"Authorization": f"Bearer {token}"})
    assert res.status_code == 200
    assert res.json["data"]["email"] == "dev@example.com"
    bad = runner.invoke(args=["sonicus", "dev-token", "--email", "x@example.com",
                              "--tier", "gold"])
    assert bad.exit_code == 2  # a usage error: the tier is a choice
    assert "'gold' is not one of 'starter', 'premium', 'pro'" in bad.output


def test_dev_issuer_jwks_is_published_only_when_enabled(idp, app, tmp_path):
    from sonicus import create_app

    dev = create_app({"SONICUS_ENV": "development", "DATABASE_URL": f"sqlite:///{tmp_path}/s.db",
                      "OIDC_ISSUER": None, "DEV_TOKEN_ISSUER": True, "REDIS_URL": None})
    dev.instance_path = str(tmp_path)
    assert dev.test_client().get("/api/dev/jwks/").json["keys"][0]["kty"] == "RSA"
    assert app.test_client().get("/api/dev/jwks/").status_code == 404


@pytest.mark.parametrize("value", ["0", "-5"])
def test_an_account_check_interval_that_is_not_positive_stops_the_start(value):
    with pytest.raises(ConfigError, match="WS_ACCOUNT_CHECK_SECONDS"):
        validate_config(load_config({"WS_ACCOUNT_CHECK_SECONDS": value}))


@pytest.mark.parametrize("value", ["https://cdn.example.com", "https://cdn.example.com/",
                                   "https://cdn.example.com/media",
                                   "http://127.0.0.1:8080/a/b-c_d.e~f/"])
def test_a_media_base_url_may_have_a_folder(value):
    validate_config(load_config({"MEDIA_BASE_URL": value}))


@pytest.mark.parametrize("value", ["cdn.example.com/media", "ftp://cdn.example.com/media",
                                   "https://cdn.example.com/my%20media",
                                   "https://cdn.example.com/média", "https://cdn.example.com/a b",
                                   "https://cdn.example.com/media?x=1",
                                   "https://cdn.example.com/media#x",
                                   "https://cdn.example.com/media/../x"])
def test_a_media_base_url_whose_path_the_media_server_would_read_otherwise_stops_the_start(
        value):
    """A media folder whose decoded path differs from its spelling (or a query) would sign
    paths the media server never sees: every stream would be a 403. The start refuses it,
    naming the setting."""
    with pytest.raises(ConfigError, match="MEDIA_BASE_URL"):
        validate_config(load_config({"MEDIA_BASE_URL": value}))
