"""Fan-out at scale: the daemon's CPU per delivery, its delivery rate and its /healthz
latency with 1,000, 10,000 and 50,000 endpoints.

    .venv/bin/python bench/fanout.py                          # 1000,10000,50000; ~3 min
    .venv/bin/python bench/fanout.py --sizes 1000,10000 --deliveries 10000
    .venv/bin/python bench/fanout.py --compare HEAD~3         # before and after, interleaved

For each size N, on 127.0.0.1 only: a daemon (`python -m webhookd serve`, 64 workers, a
fresh database) and one receiver (bench/receiver.py). N endpoints are created through the
API, 64 requests at a time, all at that receiver with distinct URLs, one tenant per 1,000
of them. The daemon is then restarted on the same database, so that its dispatcher knows
every endpoint from the start, as after any restart. One batch of events is published,
each event to one tenant's 1,000 endpoints, spread over the tenants, for --deliveries
deliveries in all (with 50,000 endpoints, most stay idle). Measured from the publish
until the last delivery arrives (or --max-s): the daemon's CPU per delivery (publishing
included), deliveries per second at the receiver, and the slowest /healthz answer, asked
every 50 ms meanwhile. With --compare REV, REV is checked out into a temporary git
worktree and each size is measured on it right before the working tree, so that both
rows of a size see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from harness import PAYLOAD, PY, REPO_DIR, Processes, free_port, log, proc_cpu_s
from run import worktree

GROUP = 1000  # endpoints per tenant: what one event fans out to
CREATORS = 64  # endpoint creations in flight at once


@dataclass
class Result:
    source: str
    endpoints: int
    create_per_s: float
    restart_ready_s: float
    deliveries: int
    elapsed_s: float
    cpu_s: float
    publish_s: float
    healthz_max_ms: float

    def row(self) -> str:
        per = self.cpu_s / self.deliveries * 1000 if self.deliveries else float("nan")
        return (
            f"| {self.source} | {self.endpoints:,} | {self.create_per_s:,.0f} | "
            f"{self.restart_ready_s:.1f} | "
            f"{self.deliveries:,} | {self.deliveries / self.elapsed_s:,.0f} | {per:.3f} | "
            f"{self.publish_s * 1000:,.0f} | {self.healthz_max_ms:,.1f} |"
        )


HEADER = (
    "| tree | endpoints | creates/s | restart to ready s | deliveries | deliveries/s | "
    "daemon CPU ms/delivery | publish ms | /healthz max ms |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


class Daemon:
    """One daemon under measurement, from `source` (PYTHONPATH), on its own database."""

    def __init__(self, procs: Processes, workdir: Path, source: Path) -> None:
        self.procs = procs
        self.dir = workdir
        self.source = source
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "webhookd.yaml"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"database: {workdir / 'webhookd.db'}\n"
            "security: {https_only: false, allow_networks: [127.0.0.0/8]}\n"
            "event_types:\n"
            "  - {name: bench.event, description: benchmark events}\n"
            "delivery: {workers: 64, shutdown_grace_s: 2}\n"
            "log: {level: warning}\n"
        )
        self.proc: Any = None

    async def start(self, http: aiohttp.ClientSession) -> float:
        t0 = time.perf_counter()
        self.proc = self.procs.start(
            [PY, "-m", "webhookd", "serve", "-c", str(self.config)],
            self.dir / "daemon.log",
            env={"PYTHONPATH": str(self.source)},
            cwd=self.dir,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "daemon.log").read_text()[-2000:])
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.base + "/readyz") as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            await asyncio.sleep(0.05)
        raise RuntimeError("daemon did not become ready within 120 s")

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(self.procs.stop, self.proc, 30)
            self.proc = None

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) or 0.0


async def create_endpoints(http: aiohttp.ClientSession, d: Daemon, url: str, n: int) -> float:
    """N endpoints through the API, CREATORS at a time; creations per second."""
    counter = itertools.count()
    t0 = time.perf_counter()

    async def creator() -> None:
        while (i := next(counter)) < n:
            body = {"url": f"{url}?ep={i}", "tenant": f"g{i // GROUP}", "events": ["*"]}
            async with http.post(d.base + "/v1/endpoints", json=body) as r:
                if r.status != 201:
                    raise RuntimeError(f"create: {r.status} {(await r.text())[:300]}")

    await asyncio.gather(*(creator() for _ in range(CREATORS)))
    return n / (time.perf_counter() - t0)


async def healthz_max_ms(http: aiohttp.ClientSession, d: Daemon, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        t0 = time.perf_counter()
        async with http.get(d.base + "/healthz") as r:
            await r.read()
        worst = max(worst, (time.perf_counter() - t0) * 1000)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return worst


async def arrived(http: aiohttp.ClientSession, recv: str, name: str) -> int:
    async with http.get(f"{recv}/count/{name}") as r:
        return int((await r.json())["count"])


async def measure(
    http: aiohttp.ClientSession, d: Daemon, recv: str, name: str, n: int, args: Any
) -> tuple[int, float, float, float, float]:
    """Publish, wait for the deliveries; (delivered, seconds, CPU s, publish s, healthz)."""
    groups = max(n // GROUP, 1)
    per_event = min(n, GROUP)
    events = max(args.deliveries // per_event, 1)
    batch = {
        "events": [
            {"type": "bench.event", "tenant": f"g{k % groups}", "payload": PAYLOAD}
            for k in range(events)
        ]
    }
    target = events * per_event
    stop = asyncio.Event()
    poller = asyncio.create_task(healthz_max_ms(http, d, stop), name="healthz")
    cpu0, t0 = d.cpu_s(), time.perf_counter()
    async with http.post(d.base + "/v1/events/batch", json=batch) as r:
        if r.status != 202:
            raise RuntimeError(f"publish: {r.status} {(await r.text())[:300]}")
    publish_s = time.perf_counter() - t0
    count = 0
    while time.perf_counter() - t0 < args.max_s:
        count = await arrived(http, recv, name)
        if count >= target:
            break
        await asyncio.sleep(0.1)
    elapsed, cpu = time.perf_counter() - t0, d.cpu_s() - cpu0
    stop.set()
    worst = await poller
    if count < target:
        log(f"  only {count:,} of {target:,} deliveries within {args.max_s:.0f} s")
    return count, elapsed, cpu, publish_s, worst


async def one_size(
    http: aiohttp.ClientSession,
    procs: Processes,
    tmp: Path,
    recv: str,
    n: int,
    args: Any,
    tree: tuple[str, Path],
) -> Result:
    label, source = tree
    workdir = tmp / f"n{n}-{len(list(tmp.iterdir()))}"
    workdir.mkdir()
    d = Daemon(procs, workdir, source)
    name = f"fan{n}-{workdir.name}"
    try:
        await d.start(http)
        log(f"N={n:,}: creating endpoints")
        create_per_s = await create_endpoints(http, d, f"{recv}/hook/{name}", n)
        await d.stop()
        ready_s = await d.start(http)
        log(f"N={n:,}: restarted in {ready_s:.1f} s; delivering")
        count, elapsed, cpu, publish_s, worst = await measure(http, d, recv, name, n, args)
    finally:
        await d.stop()
    return Result(label, n, create_per_s, ready_s, count, elapsed, cpu, publish_s, worst)


async def main_async(args: Any) -> None:
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="webhookd-fanout-") as tmpname:
        tmp = Path(tmpname)
        port = free_port()
        recv = f"http://127.0.0.1:{port}"
        results = []
        try:
            procs.start(
                [PY, str(Path(__file__).parent / "receiver.py"), "--port", str(port)],
                tmp / "receiver.log",
            )
            timeout = aiohttp.ClientTimeout(total=120)
            connector = aiohttp.TCPConnector(limit=CREATORS + 8)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                for _ in range(100):
                    with contextlib.suppress(aiohttp.ClientError):
                        await arrived(http, recv, "none")
                        break
                    await asyncio.sleep(0.05)
                for n in args.sizes:
                    for tree in args.trees:
                        results.append(await one_size(http, procs, tmp, recv, n, args, tree))
        finally:
            procs.stop_all()
    print(HEADER)
    for r in results:
        print(r.row())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000", help="endpoint counts")
    ap.add_argument("--deliveries", type=int, default=20000, help="per size")
    ap.add_argument("--max-s", type=float, default=60.0, help="delivery window per size")
    ap.add_argument("--compare", metavar="REV", help="also measure REV, before each size")
    args = ap.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    if any(s < 1 or s > 200_000 for s in args.sizes):
        sys.exit("--sizes: each between 1 and 200,000")
    with contextlib.ExitStack() as stack:
        args.trees = [("working tree", REPO_DIR)]
        if args.compare:
            old = stack.enter_context(worktree(args.compare))
            args.trees.insert(0, (old.name, old.source))
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
