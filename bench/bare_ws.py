"""Baselines for idle sockets (``bench/bench_ws_memory.py``).

- ``bench.bare_ws:app``: a bare flask-sock route, served like the socket process
  (``gunicorn -k gevent``): sends one message, then reads until the client leaves.
- ``python bench/bare_ws.py PORT``: the same with the asyncio ``websockets`` server (run with
  an interpreter that has ``websockets``; it is not an app dependency).
"""

from __future__ import annotations

import sys

if __name__ != "__main__":
    from flask import Flask
    from flask_sock import Sock

    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
    sock = Sock(app)

    @app.before_request
    def refuse_deflate():
        # BARE_WS_DEFLATE=0: refuse permessage-deflate the way the API does
        import os

        from flask import request

        if os.environ.get("BARE_WS_DEFLATE") == "0":
            request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)

    @app.get("/api/health")
    def health():
        return {"status": "ok"}

    @sock.route("/ws/analytics")
    def analytics(ws):
        ws.send('{"type":"analytics.snapshot","data":{}}')
        while ws.connected:
            ws.receive(timeout=None)


async def serve(port: int, compression: str | None) -> None:
    import asyncio

    from websockets.asyncio.server import serve as ws_serve

    async def handler(ws):
        await ws.send('{"type":"analytics.snapshot","data":{}}')
        await ws.wait_closed()

    async with ws_serve(handler, "127.0.0.1", port, ping_interval=25, compression=compression,
                        max_size=64 * 1024):
        print("READY", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    import asyncio
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    asyncio.run(serve(int(sys.argv[1]), None if "--no-deflate" in sys.argv else "deflate"))
