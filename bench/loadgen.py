"""Benchmark load generator: POST one body to one URL, closed-loop or paced, in its own process.

    python bench/loadgen.py --url http://127.0.0.1:8080/v1/events --body-file body.json \
        --concurrency 50 --duration-s 5 --warmup-s 1 --expect 202

Closed loop (default): `--concurrency` clients, each sending its next request as soon as
the previous one is answered, until `--duration-s` has passed or `--max-requests` were
sent. The rate counts the answers that arrive after the warm-up and before the end.

Paced (`--mode paced --rate R`): open-loop; request i is sent at start + i/R whatever
happened to the previous ones, for `--duration-s`. If the body contains the JSON string
"__SENT_AT__", it is replaced at send time by the current Unix time (seconds, a number),
so that a receiver can compute publish-to-arrival latency. SIGTERM ends a paced run early:
no more requests are sent, those sent are waited for and the JSON is printed as usual.

Prints one JSON object on stdout. Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

SENT_AT_MARKER = b'"__SENT_AT__"'


def _quantile_ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] * 1000


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        with open(args.body_file, "rb") as f:
            body = f.read()
        self.parts = body.split(SENT_AT_MARKER)
        self.headers = {"Content-Type": "application/json"}
        for h in args.header:
            name, _, value = h.partition(":")
            self.headers[name.strip()] = value.strip()
        self.expect = {int(s) for s in args.expect.split(",")}
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.unexpected_body: str | None = None
        self.stop: asyncio.Event | None = None  # set by SIGTERM (paced mode)

    def body(self) -> bytes:
        if len(self.parts) == 1:
            return self.parts[0]
        return repr(time.time()).encode().join(self.parts)

    async def one(self, session: aiohttp.ClientSession) -> tuple[float, bool]:
        """Send one request; return (end time, answered with an expected status)."""
        start = time.perf_counter()
        try:
            async with session.post(self.args.url, data=self.body(), headers=self.headers) as r:
                text = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.errors[type(exc).__name__] += 1
            return time.perf_counter(), False
        end = time.perf_counter()
        self.statuses[status] += 1
        ok = status in self.expect
        if not ok and self.unexpected_body is None:
            self.unexpected_body = text[:300].decode("utf-8", "replace")
        self.latencies.append(end - start)
        return end, ok

    async def closed(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        a = self.args
        t0 = time.perf_counter()
        window_start, deadline = t0 + a.warmup_s, t0 + a.duration_s
        issued = 0
        in_window = 0
        last_end = t0
        window_latencies: list[float] = []

        async def client() -> None:
            nonlocal issued, in_window, last_end
            while issued < a.max_requests and time.perf_counter() < deadline:
                issued += 1
                start = time.perf_counter()
                end, ok = await self.one(session)
                if not ok:
                    await asyncio.sleep(0.01)  # no tight loop against a failing server
                    continue
                last_end = max(last_end, end)
                if window_start <= end <= deadline:
                    in_window += 1
                    window_latencies.append(end - start)

        await asyncio.gather(*(client() for _ in range(a.concurrency)))
        window_end = min(deadline, last_end)
        window_s = max(window_end - window_start, 1e-9)
        # The window in Unix time too, so that another process's records can be cut to it.
        to_unix = time.time() - time.perf_counter()
        return {
            "window_start_unix": window_start + to_unix,
            "window_end_unix": window_end + to_unix,
            "mode": "closed",
            "concurrency": a.concurrency,
            "requests": issued,
            "window_s": window_s,
            "window_requests": in_window,
            "rate": in_window / window_s,
            "latency_p50_ms": _quantile_ms(window_latencies, 0.5),
            "latency_p99_ms": _quantile_ms(window_latencies, 0.99),
        }

    async def paced(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        a = self.args
        total = min(a.max_requests, int(a.rate * a.duration_s))
        lags: list[float] = []
        pending: set[asyncio.Task[tuple[float, bool]]] = set()
        slots = asyncio.Semaphore(a.max_pending)
        t0 = time.perf_counter() + 0.05
        sent = 0
        self.stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.stop.set)

        async def send() -> tuple[float, bool]:
            try:
                return await self.one(session)
            finally:
                slots.release()

        for i in range(total):
            if self.stop is not None and self.stop.is_set():
                break
            target = t0 + i / a.rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            lags.append(max(0.0, time.perf_counter() - target))
            task = asyncio.create_task(send(), name=f"loadgen-{i}")
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        sent_s = time.perf_counter() - t0
        if pending:
            await asyncio.wait(pending, timeout=a.timeout_s + 5)
        ok = sum(n for s, n in self.statuses.items() if s in self.expect)
        return {
            "mode": "paced",
            "target_rate": a.rate,
            "requests": sent,
            "sent_rate": sent / max(sent_s, 1e-9),
            "ok": ok,
            "send_lag_p50_ms": _quantile_ms(lags, 0.5),
            "send_lag_p99_ms": _quantile_ms(lags, 0.99),
            "latency_p50_ms": _quantile_ms(self.latencies, 0.5),
            "latency_p99_ms": _quantile_ms(self.latencies, 0.99),
            "latency_max_ms": _quantile_ms(self.latencies, 1.0),
        }

    async def run(self) -> dict[str, Any]:
        a = self.args
        limit = a.concurrency if a.mode == "closed" else a.max_pending
        cpu0 = time.process_time()
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=0)
        timeout = aiohttp.ClientTimeout(total=a.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            runner: Callable[[aiohttp.ClientSession], Any] = (
                self.closed if a.mode == "closed" else self.paced
            )
            result: dict[str, Any] = await runner(session)
        result.update(
            statuses={str(k): v for k, v in sorted(self.statuses.items())},
            errors=dict(self.errors),
            unexpected_body=self.unexpected_body,
        )
        # CPU of this process per answered request: the client side's cost.
        cpu_s = time.process_time() - cpu0
        answered = sum(self.statuses.values())
        result.update(cpu_s=cpu_s, answered=answered)
        result["cpu_us_per_request"] = cpu_s / answered * 1e6 if answered else None
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--header", action="append", default=[], help="Name: value")
    ap.add_argument("--mode", choices=("closed", "paced"), default="closed")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rate", type=float, default=500.0, help="requests/s (paced)")
    ap.add_argument("--max-pending", type=int, default=1000, help="open requests (paced)")
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--warmup-s", type=float, default=1.0)
    ap.add_argument("--max-requests", type=int, default=10_000_000)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="per request")
    ap.add_argument("--expect", default="200,201,202,204")
    ap.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto")
    args = ap.parse_args()

    load = Load(args)
    hard_limit_s = args.duration_s + args.timeout_s + 30
    coro = asyncio.wait_for(load.run(), hard_limit_s)
    loop_name = "asyncio"
    if args.loop != "asyncio":
        try:
            import uvloop

            loop_name = f"uvloop {uvloop.__version__}"
        except ImportError:
            if args.loop == "uvloop":
                raise
    if loop_name == "asyncio":
        result = asyncio.run(coro)
    else:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(coro)
    result["loop"] = loop_name
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
