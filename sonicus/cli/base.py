"""The ``sonicus`` command group and the one way a command fails."""

from __future__ import annotations

import sys

import click
from flask.cli import AppGroup

sonicus_cli = AppGroup("sonicus", help="Sonicus administration commands.")


def fail(message: str) -> None:
    """A one-line error on stderr and exit code 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)
