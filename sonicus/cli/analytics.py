"""Commands of the analytics domain."""

from __future__ import annotations

import click

from ..services.admin_users import find_users_by_email
from ..services.analytics import all_user_ids, refresh_user_analytics
from .base import checked_text, fail, sonicus_cli


@sonicus_cli.group("analytics")
def analytics_cli():
    """Personal analytics."""


@analytics_cli.command("refresh")
@click.option("--user", "email", callback=checked_text, help="The user's email.")
@click.option("--all", "everyone", is_flag=True, help="Every user.")
def refresh(email, everyone):
    """Recompute, store, cache and publish analytics now (for one user or all)."""
    if bool(email) == bool(everyone):
        raise click.UsageError("give exactly one of --user EMAIL or --all")
    if email:
        ids = [user.id for user in find_users_by_email(email)]
        if not ids:
            fail(f"no user with email {email!r}")
    else:
        ids = all_user_ids()
    for user_id in ids:
        refresh_user_analytics(user_id)
    click.echo(f"Refreshed analytics of {len(ids)} user(s).")
