"""Development-only token issuer: a local signing key, its JWKS, and a minting function.

It lets the embedded default run without an identity provider. ``validate_config`` refuses
it in production, and its routes are only registered when it is enabled.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import RSAKey

AUDIENCE = "sonicus-dev"
KEY_FILE = "dev-signing-key.json"


def issuer(app) -> str:
    return app.config["PUBLIC_BASE_URL"].rstrip("/") + "/api/dev/"


def _key(app) -> RSAKey:
    cached = app.extensions.get("sonicus_dev_key")
    if cached is not None:
        return cached
    path = Path(app.instance_path) / KEY_FILE
    if path.exists():
        key = RSAKey.import_key(json.loads(path.read_text()))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = RSAKey.generate_key(2048, parameters={"kid": "dev-" + secrets.token_hex(4)})
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(key.as_dict(private=True)))
        os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # first writer wins; others read its key
        except FileExistsError:
            key = RSAKey.import_key(json.loads(path.read_text()))
        finally:
            tmp.unlink(missing_ok=True)
    app.extensions["sonicus_dev_key"] = key
    return key


def public_jwks(app) -> dict:
    key = _key(app)
    public = key.as_dict(private=False)
    public.update({"use": "sig", "alg": "RS256"})
    return {"keys": [public]}


def mint(app, *, email: str, name: str | None = None, admin: bool = False,
         email_verified: bool = True, lifetime_seconds: int = 12 * 3600) -> str:
    if not app.config.get("DEV_TOKEN_ISSUER") or app.config["SONICUS_ENV"] == "production":
        raise RuntimeError("The development token issuer is not enabled.")
    key = _key(app)
    now = int(time.time())
    groups = ["sonicus-user"] + (["sonicus-super-admin"] if admin else [])
    claims = {
        "iss": issuer(app), "aud": AUDIENCE, "sub": "dev|" + email.lower(),
        "iat": now, "exp": now + lifetime_seconds, "email": email,
        "email_verified": email_verified, "name": name or email.split("@")[0],
        "preferred_username": email.split("@")[0], "groups": groups,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, claims, key)
