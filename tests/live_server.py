"""A web process for the live tests: ``python -m tests.live_server``.

Binds 127.0.0.1 on port 0, prints ``PORT <n>`` and serves (threaded, WebSockets included)
until terminated. Settings come from the environment, as in production.
"""

from __future__ import annotations

import sys

from werkzeug.serving import make_server


def main() -> int:
    from sonicus import create_app

    app = create_app()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(f"PORT {server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
