"""Development commands."""

from __future__ import annotations

import click
from flask import current_app

from .. import devtokens
from ..auth import caller_from_token
from ..services.admin_users import grant_tier_from_cli
from ..tiers import TIER_NAMES
from .base import checked_text, fail, sonicus_cli


@sonicus_cli.command("dev-token")
@click.option("--email", required=True, callback=checked_text, help="The user's email address.")
@click.option("--name", default=None, callback=checked_text,
              help="Display name (default: from the email).")
@click.option("--admin", is_flag=True, help="Add the super-admin group.")
@click.option("--tier", default=None, type=click.Choice(TIER_NAMES),
              help="Give the user this tier (a complimentary grant).")
@click.option("--unverified", is_flag=True, help="Mark the email as not verified.")
def dev_token(email, name, admin, tier, unverified):
    """Mint an access token the development server accepts (development only)."""
    app = current_app
    if app.config["SONICUS_ENV"] == "production" or not app.config.get("DEV_TOKEN_ISSUER"):
        fail("the development token issuer is not enabled (development and testing only)")
    token = devtokens.mint(app, email=email, name=name, admin=admin,
                           email_verified=not unverified)
    if tier is not None:
        grant_tier_from_cli(caller_from_token(token).id, tier)
    click.echo(token)
