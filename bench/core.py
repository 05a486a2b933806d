"""The benchmark's shared state: the receivers, the load generator, the samples of every
figure, and the measurement helpers the figures share (pre-publishing, waiting for
arrivals, the CPU use of the daemon and the receiver over a window).

With --compare, figures that start a daemon run once per implementation (`Impl`); each
implementation has its own samples, and the baselines, which start no daemon, go to the
shared samples that both are compared against.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from daemons import Daemon
from harness import (
    BATCH_CONCURRENCY,
    BATCH_SIZE,
    BENCH_DIR,
    PAYLOAD,
    PY,
    REPO_DIR,
    Processes,
    Samples,
    Settings,
    compact,
    free_port,
    log,
    proc_cpu_s,
    rfc3339,
    run_helper,
    runqueue_wait_s,
    thread_cpu_s,
    wait_http,
)


@dataclass(frozen=True)
class Impl:
    """A webhookd source tree to run daemons from."""

    name: str  # "working tree", or the revision compared against
    source: Path  # put first on the daemon's PYTHONPATH
    suffix: str = ""  # appended to daemon directory names


WORKING_TREE = Impl("working tree", REPO_DIR)


class Bench:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.s = settings
        self.tmp = tmp
        self.procs = Processes()
        self.impls: list[Impl] = [WORKING_TREE]
        self.impl = WORKING_TREE
        self.shared = Samples()  # baselines: no daemon involved
        self.by_impl: dict[str, Samples] = {WORKING_TREE.name: Samples()}
        self.samples = self.shared
        self.http: aiohttp.ClientSession
        self.receiver_port = free_port()
        self.dead_port = free_port()
        self.trivial_port = free_port()
        self.receiver: subprocess.Popen[bytes] | None = None
        self.recv = f"http://127.0.0.1:{self.receiver_port}"
        self.loadgen_loop = "?"
        self.files: dict[str, Path] = {}

    @contextlib.contextmanager
    def using(self, impl: Impl) -> Iterator[None]:
        """Start daemons from `impl` and record into its samples meanwhile."""
        self.impl, self.samples = impl, self.by_impl.setdefault(impl.name, Samples())
        try:
            yield
        finally:
            self.impl, self.samples = WORKING_TREE, self.shared

    def merged(self, impl: Impl) -> Samples:
        """The shared baselines together with one implementation's figures."""
        out = Samples()
        for source in (self.shared, self.by_impl.get(impl.name, Samples())):
            for k, values in source.values.items():
                out.values.setdefault(k, []).extend(values)
            for k, details in source.details.items():
                out.details.setdefault(k, []).extend(details)
        return out

    def write_bodies(self) -> None:
        envelope = {
            "id": "evt_01KAQ8Z3D2W4M7V9X1B3C5E7G9",
            "type": "bench.event",
            "timestamp": "2026-11-22T21:21:40.444Z",
            "data": PAYLOAD,
        }
        single = {"type": "bench.event", "payload": PAYLOAD}
        timed = {"type": "bench.event", "payload": {**PAYLOAD, "sent_at": "__SENT_AT__"}}
        batch = {"events": [single] * BATCH_SIZE}
        held = rfc3339(time.time() + 3600)
        batch_held = {"events": [{**single, "deliver_at": held}] * BATCH_SIZE}
        small_batch = {"events": [single] * self.s.batch_3p}
        for name, doc in (
            ("delivery", envelope),
            ("single", single),
            ("timed", timed),
            ("batch", batch),
            ("batch_held", batch_held),
            ("small_batch", small_batch),
        ):
            path = self.tmp / f"body-{name}.json"
            path.write_bytes(compact(doc))
            self.files[name] = path

    async def start_receivers(self) -> None:
        self.receiver = self.procs.start(
            [PY, str(BENCH_DIR / "receiver.py"), "--port", str(self.receiver_port)],
            self.tmp / "receiver.log",
        )
        self.procs.start(
            [PY, str(BENCH_DIR / "receiver.py"), "--port", str(self.dead_port), "--dead"],
            self.tmp / "dead.log",
        )
        await wait_http(self.http, f"{self.recv}/count/ping", 30)

    async def count(self, name: str) -> int:
        return (await self.arrivals(name))[0]

    async def arrivals(self, name: str) -> tuple[int, float | None]:
        """How many deliveries of `name` arrived, and when the first did. Cheap for the
        receiver, so it may be polled during a measurement (`stats` is not: it sorts
        every arrival, and a receiver busy sorting slows the daemon it measures)."""
        async with self.http.get(f"{self.recv}/count/{name}") as r:
            doc = await r.json()
        first = doc.get("first")
        return int(doc["count"]), None if first is None else float(first)

    async def arrived_between(self, name: str, t0: float, t1: float) -> int:
        """How many deliveries of `name` arrived between two Unix times (cheap)."""
        params = {"from_t": repr(t0), "to_t": repr(t1)}
        async with self.http.get(f"{self.recv}/count/{name}", params=params) as r:
            doc = await r.json()
        return int(doc.get("between", 0))

    async def stats(self, name: str, window_s: float = 0, skip_s: float = 0) -> dict[str, Any]:
        params = {"window_s": str(window_s), "skip_s": str(skip_s)}
        async with self.http.get(f"{self.recv}/stats/{name}", params=params) as r:
            result: dict[str, Any] = await r.json()
            return result

    async def forget(self, name: str) -> None:
        async with self.http.delete(f"{self.recv}/stats/{name}"):
            pass

    async def wait_count(self, name: str, target: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        n = await self.count(name)
        while n < target and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            n = await self.count(name)
        return n

    async def loadgen(
        self, url: str, body: str, *, extra: Sequence[str] = (), duration_s: float | None = None
    ) -> dict[str, Any]:
        d = duration_s or self.s.closed_s
        argv = [
            PY,
            str(BENCH_DIR / "loadgen.py"),
            "--url",
            url,
            "--body-file",
            str(self.files[body]),
            "--duration-s",
            str(d),
            "--warmup-s",
            str(self.s.warmup_s),
            *extra,
        ]
        result = await run_helper(argv, d + 90)
        self.loadgen_loop = result["loop"]
        bad = {k: v for k, v in result["statuses"].items() if int(k) >= 300}
        if bad or result["errors"]:
            log(f"  loadgen: statuses {bad} errors {result['errors']} {result['unexpected_body']}")
        return result

    def estimate_publish_s(self, events: int) -> float:
        v = self.samples.values
        rates = v.get("5b") or v.get("5a") or [5000.0]
        return events / min(rates)

    async def prepublish(
        self,
        d: Daemon,
        events: int,
        types: Sequence[str],
        deliver_at: float,
        timeout_s: float,
    ) -> float:
        """Publish `events` events (types round-robin) in batches; seconds it took."""
        at = rfc3339(deliver_at)
        one = [{"type": t, "payload": PAYLOAD, "deliver_at": at} for t in types]
        full = compact({"events": [one[i % len(one)] for i in range(BATCH_SIZE)]})
        batches = [BATCH_SIZE] * (events // BATCH_SIZE)
        if events % BATCH_SIZE:
            batches.append(events % BATCH_SIZE)
        queue = list(reversed(batches))
        deadline = time.monotonic() + timeout_s
        headers = {"Content-Type": "application/json"}

        async def client() -> None:
            while queue and time.monotonic() < deadline:
                size = queue.pop()
                if size == BATCH_SIZE:
                    body = full
                else:
                    body = compact({"events": [one[i % len(one)] for i in range(size)]})
                async with self.http.post(
                    d.base + "/v1/events/batch", data=body, headers=headers
                ) as r:
                    await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"batch publish: {r.status}")

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(BATCH_CONCURRENCY)))
        if queue:
            raise RuntimeError(f"publishing did not finish within {timeout_s:.0f} s")
        return time.perf_counter() - t0

    def reference_s(self) -> float:
        """A generous bound on how long one figure-3 run takes: start, publish, wait until
        due, deliver at 5,000/s or more, stop."""
        n = self.s.sustained_events
        return 2.3 * self.estimate_publish_s(n) + 1.5 + n / 5000 + 5

    async def usage_start(self, d: Daemon) -> dict[str, Any]:
        """Where the daemon's and the receiver's CPU counters stand now (see usage)."""
        assert self.receiver is not None
        return {
            "cpu": d.cpu_s(),
            "rcpu": proc_cpu_s(self.receiver.pid) or 0,
            "t": time.perf_counter(),
            "threads": thread_cpu_s(d.pid),
            "writer": await d.writer_s(),
            "queued": {**runqueue_wait_s(d.pid), **runqueue_wait_s(self.receiver.pid)},
        }

    async def usage(self, d: Daemon, u0: dict[str, Any], count: int) -> dict[str, Any]:
        """CPU use of the daemon and the receiver since `usage_start`, for `count`
        deliveries."""
        assert self.receiver is not None
        wall = time.perf_counter() - u0["t"]
        daemon_s = d.cpu_s() - u0["cpu"]
        threads1, writer1 = thread_cpu_s(d.pid), await d.writer_s()
        queued1 = {**runqueue_wait_s(d.pid), **runqueue_wait_s(self.receiver.pid)}
        threads0, writer0, queued0 = u0["threads"], u0["writer"], u0["queued"]
        main_s = threads1.get(d.pid, 0.0) - threads0.get(d.pid, 0.0)
        waited = {tid: s - queued0.get(tid, 0.0) for tid, s in queued1.items()}
        daemon_waited = sum(s for tid, s in waited.items() if tid in threads1)
        receiver_s = (proc_cpu_s(self.receiver.pid) or 0) - u0["rcpu"]
        commits = writer1[2] - writer0[2]
        return {
            "daemon_cpu": daemon_s / wall,
            "daemon_main_thread_cpu": main_s / wall,
            # How much of the time the one database writer was in a transaction, and
            # committing (mostly the fsync).
            "writer_busy": (writer1[0] - writer0[0]) / wall,
            "writer_committing": (writer1[1] - writer0[1]) / wall,
            "transactions": commits,
            "commit_ms_mean": (writer1[1] - writer0[1]) / max(commits, 1) * 1000,
            "receiver_cpu": receiver_s / wall,
            # Runnable but waiting for a CPU (all threads; 1 = one thread all the time):
            # above zero, the two cores are oversubscribed.
            "daemon_runqueue_wait": daemon_waited / wall,
            "receiver_runqueue_wait": waited.get(self.receiver.pid, 0.0) / wall,
            "daemon_us_per_delivery": daemon_s / max(count, 1) * 1e6,
            "receiver_us_per_request": receiver_s / max(count, 1) * 1e6,
        }

    async def drain(
        self, d: Daemon, name: str, events: int, deliver_at: float
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait for `events` arrivals of `name`; receiver stats and process CPU use."""
        await asyncio.sleep(max(0.0, deliver_at - time.time()))
        u0 = await self.usage_start(d)
        got = await self.wait_count(name, events, timeout_s=30 + events / 300)
        cpu = await self.usage(d, u0, got)
        if got < events:
            log(f"  only {got}/{events} deliveries arrived in time")
        return await self.stats(name), cpu

    async def timeouts(self, d: Daemon) -> int:
        """Attempts that timed out so far, from the daemon's metrics."""
        async with self.http.get(d.base + "/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("webhookd_attempts_total{") and 'outcome="timeout"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)


def describe_usage(cpu: dict[str, Any]) -> str:
    if not cpu:
        return "no CPU figures"
    return (
        f"daemon {cpu['daemon_cpu']:.0%} CPU, {cpu['daemon_us_per_delivery']:.0f} us per "
        f"delivery, main thread {cpu['daemon_main_thread_cpu']:.0%}, writer busy "
        f"{cpu['writer_busy']:.0%} ({cpu['writer_committing']:.0%} committing), "
        f"receiver {cpu['receiver_cpu']:.0%}; waiting for a CPU: daemon "
        f"{cpu['daemon_runqueue_wait']:.0%}, receiver {cpu['receiver_runqueue_wait']:.0%}"
    )
