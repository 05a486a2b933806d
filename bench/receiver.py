"""Benchmark receiver: a process that accepts webhooks and records when they arrived.

    python bench/receiver.py --port 9000            # answers 200 and records
    python bench/receiver.py --port 9001 --dead     # accepts connections, never answers

Routes of the recording receiver (each benchmark phase uses its own `name`):

- `POST /hook/{name}`: read and parse the JSON body, record the arrival time and, when
  the body (or the webhook envelope's `data`) has `sent_at` (Unix seconds), the latency
  from that moment to the arrival; answer 200.
- `GET /count/{name}[?from_t=T0&to_t=T1]`: how many arrived, and when the first did;
  with `from_t` and `to_t` (Unix seconds) also how many arrived between them (cheap:
  polled while a figure runs, unlike `/stats`, which sorts every arrival).
- `GET /stats/{name}?window_s=W&skip_s=S`: arrival count, first and last arrival, the
  steady rate between the 5th and the 95th percentile of arrivals, the count within the
  first W seconds after the first arrival, and latency percentiles (ignoring requests
  sent within S seconds of the first one sent).
- `DELETE /stats/{name}`: forget a name.

Both modes listen on 127.0.0.1 only and run until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import signal
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass
class Record:
    times: array[float] = field(default_factory=lambda: array("d"))
    sent: array[float] = field(default_factory=lambda: array("d"))
    latency: array[float] = field(default_factory=lambda: array("d"))


RECORDS: dict[str, Record] = {}


def _record(name: str) -> Record:
    rec = RECORDS.get(name)
    if rec is None:
        rec = RECORDS[name] = Record()
    return rec


async def hook(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.time()
    rec = _record(request.match_info["name"])
    rec.times.append(now)
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return web.Response(status=400, text="bad json")
    if isinstance(doc, dict):
        data = doc.get("data", doc)
        sent_at = data.get("sent_at") if isinstance(data, dict) else None
        if isinstance(sent_at, int | float):
            rec.sent.append(float(sent_at))
            rec.latency.append(now - float(sent_at))
    return web.Response(text="ok")


async def count(request: web.Request) -> web.Response:
    rec = RECORDS.get(request.match_info["name"])
    doc: dict[str, Any] = {"count": 0, "first": None}
    if rec and rec.times:
        doc = {"count": len(rec.times), "first": rec.times[0]}
    if "from_t" in request.query and "to_t" in request.query:
        # Arrival times are appended in order, so two bisections count a time range.
        times = rec.times if rec else array("d")
        t0, t1 = float(request.query["from_t"]), float(request.query["to_t"])
        doc["between"] = bisect.bisect_right(times, t1) - bisect.bisect_left(times, t0)
    return web.json_response(doc)


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def summarize(rec: Record, window_s: float, skip_s: float) -> dict[str, Any]:
    times = sorted(rec.times)
    n = len(times)
    out: dict[str, Any] = {"count": n}
    if n == 0:
        return out
    first, last = times[0], times[-1]
    out.update(first=first, last=last, span_s=last - first)
    lo, hi = int(0.05 * (n - 1)), int(0.95 * (n - 1))
    if hi > lo and times[hi] > times[lo]:
        out["steady_rate"] = (hi - lo) / (times[hi] - times[lo])
    # Arrivals per second from the first one (at most 300 s), to show ramps and stalls.
    per_s = [0] * min(300, int(last - first) + 1)
    for t in times:
        i = int(t - first)
        if i < len(per_s):
            per_s[i] += 1
    out["per_s"] = per_s
    if window_s > 0:
        end = first + window_s
        out["window_s"] = window_s
        out["window_count"] = sum(1 for t in times if t <= end)
        out["window_complete"] = last >= end
    if rec.latency:
        sent_first = min(rec.sent)
        lat = sorted(
            lat
            for sent, lat in zip(rec.sent, rec.latency, strict=True)
            if sent >= sent_first + skip_s
        )
        out["latency_count"] = len(lat)
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            value = _quantile(lat, q)
            out[f"latency_{label}_ms"] = None if value is None else value * 1000
    return out


async def stats(request: web.Request) -> web.Response:
    rec = RECORDS.get(request.match_info["name"]) or Record()
    window_s = float(request.query.get("window_s", "0"))
    skip_s = float(request.query.get("skip_s", "0"))
    return web.json_response(summarize(rec, window_s, skip_s))


async def forget(request: web.Request) -> web.Response:
    RECORDS.pop(request.match_info["name"], None)
    return web.Response(status=204)


class DeadProtocol(asyncio.Protocol):
    """Accepts the connection, reads and drops whatever comes, never answers."""

    open: set[asyncio.BaseTransport] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        DeadProtocol.open.add(transport)

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        DeadProtocol.open.discard(self.transport)


async def serve(port: int, dead: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if dead:
        server = await loop.create_server(DeadProtocol, "127.0.0.1", port, backlog=1024)
        try:
            await stop.wait()
        finally:
            server.close()
            for transport in list(DeadProtocol.open):
                transport.abort()
        return
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/hook/{name}", hook)
    app.router.add_get("/count/{name}", count)
    app.router.add_get("/stats/{name}", stats)
    app.router.add_delete("/stats/{name}", forget)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dead", action="store_true", help="accept connections, never answer")
    ap.add_argument("--no-uvloop", action="store_true")
    args = ap.parse_args()
    coro = serve(args.port, args.dead)
    try:
        if args.no_uvloop:
            raise ImportError
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


if __name__ == "__main__":
    main()
