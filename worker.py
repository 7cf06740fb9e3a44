"""RQ worker for the app's queues, with its scheduler: ``python worker.py``."""

from __future__ import annotations

import sys


def main() -> int:
    from sonicus import create_app
    from sonicus.tasks.worker import run_worker

    app = create_app()
    return run_worker(app)


if __name__ == "__main__":
    sys.exit(main())
