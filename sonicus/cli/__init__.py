"""The ``flask --app wsgi sonicus ...`` command group: one module per domain, all thin."""

from __future__ import annotations

import sys
from importlib import import_module

import click
from flask.cli import AppGroup

sonicus_cli = AppGroup("sonicus", help="Sonicus administration commands.")

DOMAINS = ("dev", "catalog", "billing", "analytics", "users")


def fail(message: str) -> None:
    """A one-line error on stderr and exit code 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


for _name in DOMAINS:
    import_module(f"{__name__}.{_name}")
