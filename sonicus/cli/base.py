"""The ``sonicus`` command group, the one way a command fails, and ``--json``.

Exit codes: 0 done; 1 the command failed (``fail``: a one-line error on stderr); 2 a usage
error (click's own: an unknown option, a missing argument, a value outside a ``Choice``, or
``click.UsageError`` raised by a command).
"""

from __future__ import annotations

import getpass
import json
import sys

import click
from flask.cli import AppGroup

sonicus_cli = AppGroup("sonicus", help="Sonicus administration commands.")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON (what the admin API answers).")


def fail(message: str) -> None:
    """A one-line error on stderr and exit code 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


def echo_json(data) -> None:
    """``data`` (dumped by a response schema) as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def operator_label() -> str:
    """Who ran the command, as the audit log names them (``cli:<login name>``)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"
