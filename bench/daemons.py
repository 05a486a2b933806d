"""One webhookd daemon under benchmark: its generated config, its process, its memory,
and what its /metrics say about the database writer.

The daemon runs as `python -m webhookd serve` with the benchmark's interpreter, from a
source tree chosen by the bench's current implementation (the working tree, or with
--compare a worktree of another revision), put first on PYTHONPATH and with the
daemon's own directory as its working directory, so that nothing else shadows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
from harness import PY, WORKERS, free_port, proc_cpu_s, proc_status_kb

if TYPE_CHECKING:
    from core import Bench


class Daemon:
    def __init__(
        self,
        bench: Bench,
        name: str,
        *,
        db: Path | None = None,
        timeout_s: float = 30,
    ) -> None:
        self.bench = bench
        self.name = name
        self.impl = bench.impl
        self.dir = bench.tmp / f"{name}{self.impl.suffix}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = db or self.dir / "webhookd.db"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "webhookd.yaml"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"database: {self.db}\n"
            "security: {https_only: false, allow_networks: [127.0.0.0/8]}\n"
            "event_types:\n"
            "  - {name: bench.event, description: benchmark events}\n"
            "  - {name: bench.a, description: 'isolation: healthy half'}\n"
            "  - {name: bench.b, description: 'isolation: dead half'}\n"
            "delivery:\n"
            f"  workers: {WORKERS}\n"
            f"  max_in_flight_per_endpoint: {WORKERS}\n"
            f"  timeout_s: {timeout_s}\n"
            "  shutdown_grace_s: 2\n"
            "log: {level: info}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.rss_max_kb = 0
        self._sampler: asyncio.Task[None] | None = None
        self.ready_s: float | None = None
        self.stopped: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        # Write back what earlier phases left dirty (their databases are closed) before
        # this daemon starts, so that its commits do not wait behind that writeback.
        await asyncio.to_thread(os.sync)
        t0 = time.perf_counter()
        self.proc = self.bench.procs.start(
            [PY, "-m", "webhookd", "serve", "-c", str(self.config)],
            self.dir / "daemon.log",
            env={"PYTHONPATH": str(self.impl.source)},
            cwd=self.dir,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"daemon exited {self.proc.returncode}: "
                    + (self.dir / "daemon.log").read_text()[-2000:]
                )
            try:
                async with self.bench.http.get(self.base + "/readyz") as r:
                    if r.status == 200:
                        break
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("daemon did not become ready within 60 s")
        self.ready_s = time.perf_counter() - t0
        self._sampler = asyncio.create_task(self._sample(), name=f"rss-{self.name}")

    async def _sample(self) -> None:
        while True:
            self.rss_kb()
            await asyncio.sleep(0.2)

    def rss_kb(self) -> int:
        kb = proc_status_kb(self.pid, "VmRSS") or 0
        self.rss_max_kb = max(self.rss_max_kb, kb)
        return kb

    def hwm_kb(self) -> int:
        return proc_status_kb(self.pid, "VmHWM") or 0

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid) or 0.0

    async def stop(self) -> dict[str, Any]:
        if self.stopped is not None:
            return self.stopped
        info: dict[str, Any] = {}
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self.proc is not None:
            self.rss_kb()
            info = {"rss_max_mb": self.rss_max_kb / 1024, "hwm_mb": self.hwm_kb() / 1024}
            rc = await asyncio.to_thread(self.bench.procs.stop, self.proc, 30)
            info["exit_code"] = rc
        self.stopped = info
        return info

    async def api(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        async with self.bench.http.request(method, self.base + path, json=body) as r:
            text = await r.text()
            if r.status != expect:
                raise RuntimeError(f"{method} {path}: {r.status} {text[:500]}")
            return json.loads(text) if text else None

    async def metrics(self) -> dict[str, float]:
        """The daemon's /metrics samples, by name with labels."""
        async with self.bench.http.get(self.base + "/metrics") as r:
            text = await r.text()
        values = {}
        for line in text.splitlines():
            if line.startswith("webhookd_"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    async def writer_s(self) -> tuple[float, float, float]:
        """The database thread's seconds in transactions and in COMMIT, and how many
        commits, from /metrics."""
        values = await self.metrics()
        return (
            values.get("webhookd_store_transaction_seconds_total", 0.0),
            values.get("webhookd_store_commit_seconds_sum", 0.0),
            values.get("webhookd_store_commit_seconds_count", 0.0),
        )

    async def slow_commits(self, over_s: float = 0.025) -> tuple[int, str]:
        """How many commits took longer than `over_s`, and the bound of the slowest one's
        bucket (from the commit duration histogram)."""
        values = await self.metrics()
        prefix = 'webhookd_store_commit_seconds_bucket{le="'
        buckets = sorted(
            (math.inf if k[len(prefix) : -2] == "+Inf" else float(k[len(prefix) : -2]), v)
            for k, v in values.items()
            if k.startswith(prefix)
        )
        total = values.get("webhookd_store_commit_seconds_count", 0.0)
        within = max((v for b, v in buckets if b <= over_s), default=0.0)
        slowest = next((b for b, v in buckets if v >= total), math.inf)
        return int(total - within), "+Inf" if slowest == math.inf else f"{slowest * 1000:g} ms"

    async def endpoint(self, url: str, events: list[str], max_in_flight: int) -> str:
        ep = await self.api(
            "POST",
            "/v1/endpoints",
            {"url": url, "events": events, "max_in_flight": max_in_flight},
            expect=201,
        )
        return str(ep["id"])
