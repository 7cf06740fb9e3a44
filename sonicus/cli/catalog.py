"""Commands of the catalog domain: seed the catalog, close stale listening sessions."""

from __future__ import annotations

import click

from ..schemas.catalog import load_catalog_entries
from ..services.catalog import load_catalog_file, seed_catalog
from ..services.listening import close_stale_sessions as close_stale
from .base import fail, sonicus_cli


@sonicus_cli.command("seed")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def seed(file):
    """Load a catalog file (YAML or JSON); packages are matched by slug (idempotent)."""
    try:
        counts = seed_catalog(load_catalog_entries(load_catalog_file(file)))
    except (ValueError, OSError) as exc:
        fail(str(exc))
    click.echo(f"Catalog loaded: {counts['created']} created, {counts['updated']} updated, "
               f"{counts['unchanged']} unchanged.")


@sonicus_cli.command("close-stale-sessions")
def close_stale_sessions():
    """Close listening sessions left open past their maximum length."""
    click.echo(f"Closed {close_stale()} stale sessions.")
