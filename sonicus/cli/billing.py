"""Commands of the billing domain."""

from __future__ import annotations

import click

from ..services.subscriptions import process_due_subscriptions
from .base import fail, sonicus_cli


@sonicus_cli.command("expire-trials")
def expire_trials():
    """Process due trial ends, grace ends and period ends now (the scheduled job, by hand).

    Safe to run at any time, twice, or next to running workers. Exit code 0 when the run
    finished (whether or not anything was due), 1 when it failed.
    """
    try:
        result = process_due_subscriptions()
    except Exception as exc:  # the message, not a traceback, for the operator
        fail(f"processing failed: {type(exc).__name__}: {exc}")
    outcomes = result["outcomes"]
    if not outcomes:
        click.echo("Nothing was due.")
        return
    click.echo(f"Processed {result['processed']} subscription(s):")
    for outcome, count in sorted(outcomes.items()):
        click.echo(f"  {outcome}: {count}")
