"""Baseline B: the cheapest honest aiohttp publish handler, on the daemon's event loop.

    python bench/trivial_api.py --port 9100

`POST /v1/events` reads the body, parses it as JSON (the standard library's parser, as
the daemon does), and answers 202 with a small JSON object shaped like the daemon's
answer. No validation, no storage: the ceiling an aiohttp API process can reach on this
machine with this client load. Runs on uvloop when installed, like the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal

from aiohttp import web

_ids = itertools.count()


async def publish(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    return web.json_response(
        {
            "id": f"evt_{next(_ids):026d}",
            "type": body.get("type"),
            "tenant": None,
            "created_at": "2026-01-01T00:00:00.000Z",
            "deliveries": 0,
        },
        status=202,
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = web.Application()
    app.router.add_post("/v1/events", publish)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
