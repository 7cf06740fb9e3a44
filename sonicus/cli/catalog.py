"""Commands of the catalog domain: seed the catalog, development media, close stale
listening sessions."""

from __future__ import annotations

from pathlib import Path

import click
from flask import current_app

from .. import dev_media, media
from ..schemas.catalog import load_catalog_entries
from ..services.catalog import seed_catalog
from ..services.catalog_file import load_catalog_file
from ..services.listening import close_stale_sessions as close_stale
from .base import fail, operator_label, sonicus_cli


@sonicus_cli.command("seed")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def seed(file):
    """Load a catalog file (YAML or JSON); packages are matched by slug (idempotent). What it
    creates or changes is in the audit log under the operator's login name."""
    try:
        counts = seed_catalog(load_catalog_entries(load_catalog_file(file)),
                              actor_label=operator_label())
    except (ValueError, OSError) as exc:
        fail(str(exc))
    click.echo(f"Catalog loaded: {counts['created']} created, {counts['updated']} updated, "
               f"{counts['unchanged']} unchanged.")


DEMO_CATALOG = Path(__file__).resolve().parent.parent / "data" / "demo_catalog.yaml"


@sonicus_cli.command("dev-media")
@click.argument("file", type=click.Path(exists=True, dir_okay=False), default=str(DEMO_CATALOG))
@click.option("--force", is_flag=True, help="Write every file again, even those present.")
def dev_media_command(file, force):
    """Generate the catalog's audio loops and artwork for development (instance/media/).

    FILE defaults to the demo catalog; each track's `sound` recipe is rendered once (files
    already there are kept unless --force). Development and testing only.
    """
    if current_app.config["SONICUS_ENV"] == "production":
        fail("development media are for development and testing; production serves media "
             "from MEDIA_BASE_URL")
    root = media.media_root(current_app)
    try:
        counts = dev_media.generate(load_catalog_file(file), root, force=force)
    except (ValueError, OSError) as exc:
        fail(str(exc))
    click.echo(f"Development media in {root}: {counts['written']} written, {counts['kept']} "
               f"kept, {counts['bytes'] / 1e6:.1f} MB in all.")


@sonicus_cli.command("close-stale-sessions")
def close_stale_sessions():
    """Close listening sessions left open past their maximum length."""
    click.echo(f"Closed {close_stale()} stale sessions.")
