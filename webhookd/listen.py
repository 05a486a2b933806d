"""`webhookd listen`: a local receiver for development.

Prints each delivery it receives (type, id, body) and whether its signature verifies
against `--secret`, then answers with `--status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from typing import TextIO

import orjson
from aiohttp import web

from webhookd import signing


def _verdict(secret: str | None, headers: dict[str, str], body: bytes) -> str:
    if secret is None:
        return "signature not checked (no --secret)"
    lower = {k.lower(): v for k, v in headers.items()}
    if "webhook-signature" in lower:
        ok = signing.verify_standard(secret, headers, body, now_s=int(time.time()))
        return "signature OK (standard)" if ok else "signature INVALID (standard)"
    for name, value in lower.items():
        if "signature" in name:
            ts_name = next((n for n in lower if "timestamp" in n), None)
            candidates = [signing.hex_hmac(secret, body)]
            if ts_name:
                candidates.append(signing.hex_hmac(secret, f"{lower[ts_name]}.".encode() + body))
            import hmac

            ok = any(hmac.compare_digest(c, value.strip().lower()) for c in candidates)
            return f"signature {'OK' if ok else 'INVALID'} (hmac, {name})"
    return "no signature header"


def make_app(secret: str | None, status: int, out: TextIO) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        event_type = "?"
        try:
            doc = orjson.loads(body)
            if isinstance(doc, dict):
                event_type = str(doc.get("type", "?"))
            pretty = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            pretty = body.decode("utf-8", errors="replace")
        msg_id = headers.get("webhook-id", "?")
        print(
            f"--> {request.method} {request.path_qs}  type={event_type}  id={msg_id}\n"
            f"    {_verdict(secret, headers, body)}\n{pretty}\n",
            file=out,
            flush=True,
        )
        return web.Response(status=status, text="ok\n" if status < 300 else "error\n")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", receive)
    return app


async def run(host: str, port: int, secret: str | None, status: int) -> int:
    app = make_app(secret, status, sys.stdout)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        print(f"webhookd listen: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        await runner.cleanup()
        return 1
    print(f"listening on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0
