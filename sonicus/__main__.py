"""The ``sonicus`` console command (``pip install -e .``) and ``python -m sonicus``: the same
commands as ``flask --app wsgi sonicus ...``, on an app built from the environment."""

from __future__ import annotations

from flask.cli import ScriptInfo

from sonicus import create_app
from sonicus.cli import sonicus_cli


def main(args: list[str] | None = None) -> None:
    """Run the ``sonicus`` command group; exit codes as ``cli/base.py`` says."""
    sonicus_cli.main(args=args, prog_name="sonicus",
                     obj=ScriptInfo(create_app=create_app, set_debug_flag=False))


if __name__ == "__main__":
    main()
