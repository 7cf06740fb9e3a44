"""Many idle analytics sockets from one asyncio process (the client side of
``bench_ws_scale.py``; cheap per socket, so the server is what is measured).

    python bench/ws_client.py URL TOKENS_FILE SOCKETS_PER_TOKEN [--concurrency 25]

Opens SOCKETS_PER_TOKEN sockets for each token (one per line), reads each one's snapshot,
prints ``OPEN <n> <seconds> <failures>``, then waits: on a line ``updates`` on stdin it reads
one more message on every socket and prints ``DELIVERED <n> <monotonic time of the last>``;
on ``close`` (or end of input) it closes them all. Offers permessage-deflate like a browser.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

from websockets.asyncio.client import connect


async def open_one(url: str, token: str, gate: asyncio.Semaphore):
    async with gate:
        for attempt in range(5):
            try:
                ws = await connect(f"{url}?access_token={token}", ping_interval=None,
                                   open_timeout=60, max_queue=4)
                await asyncio.wait_for(ws.recv(), 60)  # the snapshot
                return ws
            except Exception:
                await asyncio.sleep(0.2 * (attempt + 1))
        return None


async def next_message(ws) -> float | None:
    try:
        await asyncio.wait_for(ws.recv(), 30)
        return time.monotonic()
    except Exception:
        return None


async def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url, tokens_file, per_token = sys.argv[1], sys.argv[2], int(sys.argv[3])
    concurrency = int(sys.argv[sys.argv.index("--concurrency") + 1]) \
        if "--concurrency" in sys.argv else 25
    tokens = [line.strip() for line in open(tokens_file) if line.strip()]
    gate = asyncio.Semaphore(concurrency)
    started = time.perf_counter()
    # round-robin over the tokens so every user's sockets open spread over the run
    opened = await asyncio.gather(*(open_one(url, token, gate)
                                    for _ in range(per_token) for token in tokens))
    sockets = [ws for ws in opened if ws is not None]
    print(f"OPEN {len(sockets)} {time.perf_counter() - started:.2f} "
          f"{len(opened) - len(sockets)}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "updates":
            stamps = await asyncio.gather(*(next_message(ws) for ws in sockets))
            got = [s for s in stamps if s is not None]
            print(f"DELIVERED {len(got)} {max(got) if got else 0:.6f} "
                  f"{min(got) if got else 0:.6f}", flush=True)
        else:
            break
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


if __name__ == "__main__":
    asyncio.run(main())
