"""The ``sonicus`` command group, the one way a command fails, and ``--json``.

Exit codes: 0 done; 1 the command failed (``fail``: a one-line error on stderr); 2 a usage
error (click's own: an unknown option, a missing argument, a value outside a ``Choice``, or
``click.UsageError`` raised by a command).
"""

from __future__ import annotations

import getpass
import json
import re
import sys

import click
from flask.cli import AppGroup

from ..validation import HOSTILE_TEXT_MESSAGE, is_hostile_text

sonicus_cli = AppGroup("sonicus", help="Sonicus administration commands.")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON (what the admin API answers).")


def checked_text(ctx, param, value):
    """A click callback for every parameter that takes an email or other text as typed: one
    holding a NUL or bytes that are not UTF-8 (a terminal in another encoding sends them;
    Python reads them as lone surrogates) is a usage error naming the parameter (exit code 2),
    as the API refuses them, instead of a traceback from the database or the printing."""
    if value is not None and is_hostile_text(value):
        raise click.BadParameter(HOSTILE_TEXT_MESSAGE)
    return value


def fail(message: str) -> None:
    """A one-line error on stderr and exit code 1."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


_UNESCAPED_CONTROLS = re.compile("[\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def echo_json(data) -> None:
    """``data`` (dumped by a response schema) as indented JSON on stdout; the control
    characters JSON would let through as they are (DEL and C1, such as the one-byte CSI, and
    the direction marks and overrides) escaped as the C0 ones always are."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    click.echo(_UNESCAPED_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def operator_label() -> str:
    """Who ran the command, as the audit log names them (``cli:<login name>``)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "cli"


def shown(text: str | None) -> str | None:
    """A stored text (an email, a name: the user's or their provider's words) as a terminal
    may print it: characters that are not printable (newlines, escape sequences, direction
    overrides) written as their escapes, so no text moves the cursor, recolours the screen or
    forges a line of the table."""
    if text is None or text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)
