"""A quick local measurement: publish N events with C concurrent clients to a daemon
process, delivering to a receiver process, and print publishes/s and deliveries/s.

    .venv/bin/python bench/quick.py --events 5000 --concurrency 50

Everything runs on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

RECEIVER = """
import sys
from aiohttp import web
count = 0
async def hook(request):
    global count
    await request.read()
    count += 1
    return web.Response(text="ok")
async def stats(request):
    return web.Response(text=str(count))
app = web.Application()
app.router.add_post("/hook", hook)
app.router.add_get("/count", stats)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--timeout-s", type=float, default=120)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="webhookd-bench-"))
    rport = free_port()
    cfg = tmp / "bench.yaml"
    cfg.write_text(
        "listen: 127.0.0.1:0\n"
        f"database: {tmp / 'bench.db'}\n"
        "security: {https_only: false, allow_networks: [127.0.0.0/8]}\n"
        "event_types: [{name: bench.event}]\n"
        "delivery: {max_in_flight_per_endpoint: 64}\n"
        "log: {level: info}\n"
    )
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(rport)])
    log_path = tmp / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "serve", "-c", str(cfg)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline = time.monotonic() + 20
        base = None
        while base is None and time.monotonic() < deadline:
            m = re.search(r"listen=(\S+)", log_path.read_text())
            base = f"http://{m.group(1)}" if m else None
            await asyncio.sleep(0.05)
        assert base, "daemon did not start"
        await wait_http(base + "/readyz")
        await wait_http(f"http://127.0.0.1:{rport}/count")
        async with aiohttp.ClientSession() as s:
            async with s.post(
                base + "/v1/endpoints", json={"url": f"http://127.0.0.1:{rport}/hook"}
            ) as r:
                assert r.status == 201, await r.text()
            body = {"type": "bench.event", "payload": {"order_id": "o_1", "amount": 4200}}
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(args.events):
                queue.put_nowait(i)

            async def client() -> None:
                while not queue.empty():
                    queue.get_nowait()
                    async with s.post(base + "/v1/events", json=body) as r:
                        assert r.status == 202

            t0 = time.perf_counter()
            await asyncio.gather(*[client() for _ in range(args.concurrency)])
            publish_s = time.perf_counter() - t0
            deadline = time.monotonic() + args.timeout_s
            delivered = 0
            while time.monotonic() < deadline:
                async with s.get(f"http://127.0.0.1:{rport}/count") as r:
                    delivered = int(await r.text())
                if delivered >= args.events:
                    break
                await asyncio.sleep(0.02)
            total_s = time.perf_counter() - t0
        print(f"events: {args.events}, concurrency: {args.concurrency}")
        print(f"publish: {args.events / publish_s:,.0f} events/s (202 after commit)")
        print(
            f"delivered: {delivered} in {total_s:.2f} s from the first publish "
            f"= {delivered / total_s:,.0f} deliveries/s (publishing and delivering together)"
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        receiver.terminate()
        receiver.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(main())
