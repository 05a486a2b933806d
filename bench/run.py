"""The reproducible webhookd benchmark: figures with baselines, ratios and targets.

    .venv/bin/python bench/run.py                  # full run, 3 runs per figure (< 10 min)
    .venv/bin/python bench/run.py --quick          # smoke run (< 2 min)
    .venv/bin/python bench/run.py --runs 5 --backlog 1000000 --json-out results.json
    .venv/bin/python bench/run.py --profile bench/profile-delivery   # py-spy, see below

Every process is separate and talks over 127.0.0.1 only: the daemon
(`python -m webhookd serve -c <generated config>`, on a fresh SQLite file in a temporary
directory, synchronous=FULL as by default), the receiver (bench/receiver.py), a
receiver that never answers (receiver.py --dead), the baseline API
(bench/trivial_api.py) and the load generator (bench/loadgen.py). Each figure is
measured `--runs` times, interleaved (run 1 of every figure, then run 2, ...), and
reported as the median with min-max; ratios are taken run by run against the baseline
measured in the same run, right before its figure (B, 4, 5, A, 3, A', 6, 8); figure 3
against the mean of A before it and A' right after it. Figures:

  A  baseline: a bare aiohttp client loop (64 concurrent, same body and headers as a
     delivery) to the receiver, requests/s
  B  baseline: a trivial aiohttp publish handler (reads and parses the JSON, answers 202)
     under the publish load below, requests/s
  3  sustained deliveries/s: N events pre-published (batch API, deliver_at a little in the
     future) to one endpoint with max_in_flight 64, drain rate at the receiver (5th to
     95th percentile of arrivals); vs A
  4  single-event publishes/s, 50 concurrent clients, 202 after commit: with no endpoint,
     and with one active endpoint delivering meanwhile; vs B
  5  batch publishes, 1000 events per request, 3 concurrent, events/s: with no endpoint,
     and with one endpoint (each event also writes a delivery, held by deliver_at)
  6  publish-to-first-attempt latency at a paced 500 events/s (open loop), measured at the
     receiver from the publisher's send time carried in the payload
  7  backlog: `--backlog` deliveries published pending (due after the publishing ends),
     time to publish, daemon RSS with them pending, drain rate in the first seconds; the
     drain is measured once per run, restarting the daemon on the same database, and
     divided by the empty-queue rate (figure 3's setup) measured right before and after
  8  isolation: a healthy endpoint's drain rate while a dead endpoint (accepts, never
     answers; delivery.timeout_s 5) gets half of the events, vs without it

Also printed: the daemon's RSS per phase (from /proc/PID/status), the CPU time per
request of every process involved (from /proc/PID/stat and the load generator's own
process time), and how much CPU other processes of this system used meanwhile (from
/proc/stat), since a busy machine makes every figure noisy. `--only 3,8` measures a
subset of the figures.

With --profile PREFIX, a last sustained-delivery phase runs under py-spy (installed in
the same virtualenv): PREFIX.svg (flame graph), PREFIX.txt (per thread: top functions
and files, with all threads, the GIL holder only, and native frames) and the collapsed
stacks PREFIX*.raw.txt it was computed from. --profile-publish PREFIX does the same for a
daemon taking single publishes from 50 clients (figure 4), without the flame graph and
the native frames.

Every loop is bounded in count and in time; child processes are killed in `finally`
blocks and die with this process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
PY = sys.executable
WORKERS = 64
PUBLISH_CLIENTS = 50
BATCH_SIZE = 1000
BATCH_CONCURRENCY = 3

PAYLOAD: dict[str, Any] = {
    "order_id": "ord_01HZY3K9Q2",
    "amount": 4200,
    "currency": "EUR",
    "status": "paid",
    "customer": {"id": "cus_9XkQ2mP4", "email": "ann@example.com", "name": "Ann Example"},
    "items": [
        {"sku": "SKU-1001", "qty": 2, "unit_price": 1500},
        {"sku": "SKU-2002", "qty": 1, "unit_price": 1200},
    ],
    "shipping": {"country": "FR", "city": "Lyon", "postcode": "69002"},
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rfc3339(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    runs: int
    backlog: int
    closed_s: float  # duration of a closed-loop measurement
    warmup_s: float
    sustained_events: int
    isolation_events: int  # to the healthy endpoint (as many again to the dead one)
    isolation_timeout_s: float
    latency_s: float
    latency_rate: float
    drain_window_s: float
    quick: bool

    @staticmethod
    def from_args(args: argparse.Namespace) -> Settings:
        q = args.quick
        return Settings(
            runs=args.runs if args.runs is not None else (1 if q else 3),
            backlog=args.backlog if args.backlog is not None else (50_000 if q else 1_000_000),
            closed_s=3.0 if q else 5.0,
            warmup_s=1.0,
            # About 5 s of delivering at 8,000-10,000/s: a steady window, not a burst.
            sustained_events=args.events if args.events is not None else (5_000 if q else 40_000),
            # Long enough for the dead endpoint's requests to time out and be rescheduled
            # at least once while the healthy one drains (about 9 s).
            isolation_events=10_000 if q else 80_000,
            isolation_timeout_s=2.0 if q else 5.0,
            latency_s=4.0 if q else 10.0,
            latency_rate=500.0,
            drain_window_s=args.drain_window_s or (6.0 if q else 20.0),
            quick=q,
        )


# --- processes ----------------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def proc_status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return _stat_cpu_s(f.read())
    except OSError:
        return None


def _per_thread(pid: int, name: str, value: Callable[[str], float]) -> dict[int, float]:
    """`value` of /proc/PID/task/TID/`name`, for each thread of a live process."""
    out: dict[int, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/{name}") as f:
                    out[int(tid)] = value(f.read())
            except (OSError, IndexError, ValueError):
                continue
    return out


def _stat_cpu_s(text: str) -> float:
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> dict[int, float]:
    """Seconds each thread of a live process spent runnable but waiting for a CPU."""
    return _per_thread(pid, "schedstat", lambda text: int(text.split()[1]) / 1e9)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds per thread of a live process (the main thread's id is the pid)."""
    return _per_thread(pid, "stat", _stat_cpu_s)


class Processes:
    """Every child started by the benchmark; `stop_all` in a finally block ends them."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            p = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_die_with_parent,  # the benchmark starts no threads
            )
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout_s: float = 15) -> int | None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p in self.live:
            self.live.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in list(self.live):
            try:
                self.stop(p, timeout_s=5)
            except Exception:
                with contextlib.suppress(Exception):
                    p.kill()


async def wait_http(session: aiohttp.ClientSession, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s} s")


async def run_helper(argv: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run a helper script to completion and return the JSON object it printed."""
    p = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout_s)
    finally:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)
    if p.returncode != 0:
        raise RuntimeError(f"{argv[1]} exited {p.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


# --- the daemon -----------------------------------------------------------------------------


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
        self.dir = bench.tmp / name
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
            [PY, "-m", "webhookd", "serve", "-c", str(self.config)], self.dir / "daemon.log"
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


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, key: str, value: float | None, detail: dict[str, Any] | None = None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append(value)
        if detail is not None:
            self.details.setdefault(key, []).append(detail)


class Bench:
    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.s = settings
        self.tmp = tmp
        self.procs = Processes()
        self.samples = Samples()
        self.http: aiohttp.ClientSession
        self.receiver_port = free_port()
        self.dead_port = free_port()
        self.trivial_port = free_port()
        self.receiver: subprocess.Popen[bytes] | None = None
        self.recv = f"http://127.0.0.1:{self.receiver_port}"
        self.loadgen_loop = "?"
        self.files: dict[str, Path] = {}

    # --- setup ------------------------------------------------------------------------

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
        for name, doc in (
            ("delivery", envelope),
            ("single", single),
            ("timed", timed),
            ("batch", batch),
            ("batch_held", batch_held),
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

    # --- receiver helpers -------------------------------------------------------------

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

    # --- load helpers -----------------------------------------------------------------

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
        rates = self.samples.values.get("5b") or self.samples.values.get("5a") or [5000.0]
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

    # --- figures ----------------------------------------------------------------------

    async def baseline_a(self, run: int, key: str = "A") -> None:
        name = f"base{key}-{run}"
        sig = "v1," + "A" * 43 + "="
        headers = [
            "User-Agent: webhookd/0.0.0",
            "webhook-id: evt_01KAQ8Z3D2W4M7V9X1B3C5E7G9",
            f"webhook-timestamp: {int(time.time())}",
            f"webhook-signature: {sig}",
        ]
        extra = ["--concurrency", str(WORKERS), "--expect", "200"]
        for h in headers:
            extra += ["--header", h]
        assert self.receiver is not None
        rcpu0 = proc_cpu_s(self.receiver.pid) or 0.0
        r = await self.loadgen(f"{self.recv}/hook/{name}", "delivery", extra=extra)
        rcpu = (proc_cpu_s(self.receiver.pid) or 0.0) - rcpu0
        r["receiver_us_per_request"] = rcpu / max(r["answered"], 1) * 1e6
        self.samples.add(key, r["rate"], r)
        self.samples.add(f"cpu.{key}.client", r["cpu_us_per_request"])
        self.samples.add(f"cpu.{key}.receiver", r["receiver_us_per_request"])
        await self.forget(name)
        log(f"  {key}  baseline client->receiver: {r['rate']:,.0f} req/s ({r['loop']})")

    async def baseline_b(self, run: int) -> None:
        p = self.procs.start(
            [PY, str(BENCH_DIR / "trivial_api.py"), "--port", str(self.trivial_port)],
            self.tmp / "trivial.log",
        )
        try:
            base = f"http://127.0.0.1:{self.trivial_port}"
            await wait_http(self.http, base + "/healthz", 30)
            cpu0 = proc_cpu_s(p.pid) or 0.0
            r = await self.loadgen(
                base + "/v1/events",
                "single",
                extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
            )
            cpu = (proc_cpu_s(p.pid) or 0.0) - cpu0
            r["server_us_per_request"] = cpu / max(r["answered"], 1) * 1e6
            r["rss_mb"] = (proc_status_kb(p.pid, "VmRSS") or 0) / 1024
            self.samples.add("cpu.B.server", r["server_us_per_request"])
            self.samples.add("cpu.B.client", r["cpu_us_per_request"])
        finally:
            await asyncio.to_thread(self.procs.stop, p)
        self.samples.add("B", r["rate"], r)
        log(f"  B  baseline trivial API: {r['rate']:,.0f} req/s")

    async def batch_publish(self, run: int, with_endpoint: bool) -> None:
        key = "5b" if with_endpoint else "5a"
        d = Daemon(self, f"batch-{key}-{run}")
        await d.start()
        try:
            if with_endpoint:
                await d.endpoint(f"{self.recv}/hook/held-{run}", ["bench.event"], WORKERS)
            r = await self.loadgen(
                d.base + "/v1/events/batch",
                "batch_held" if with_endpoint else "batch",
                extra=["--concurrency", str(BATCH_CONCURRENCY), "--expect", "202"],
            )
        finally:
            r_mem = await d.stop()
        rate = r["rate"] * BATCH_SIZE
        self.samples.add(key, rate, {**r, **r_mem})
        self.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
        log(f"  {key} batch publish: {rate:,.0f} events/s")

    async def single_publish(self, run: int, with_endpoint: bool) -> None:
        key = "4b" if with_endpoint else "4a"
        d = Daemon(self, f"single-{key}-{run}")
        await d.start()
        name = f"pubdel-{run}"
        try:
            if with_endpoint:
                await d.endpoint(f"{self.recv}/hook/{name}", ["bench.event"], WORKERS)
            u0 = await self.usage_start(d)
            r = await self.loadgen(
                d.base + "/v1/events",
                "single",
                extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
            )
            r.update(await self.usage(d, u0, r["answered"]))
            r["daemon_us_per_request"] = r["daemon_us_per_delivery"]  # one publish each here
            r["publishes_per_transaction"] = r["answered"] / max(r["transactions"], 1)
            self.samples.add(f"cpu.{key}.daemon", r["daemon_us_per_request"])
            if with_endpoint:
                delivered = await self.count(name)
                r["delivered_during"] = delivered
                # Deliveries per second while publishing (from the first publish).
                self.samples.add("4b.deliveries", delivered / self.s.closed_s)
                await self.forget(name)
        finally:
            r_mem = await d.stop()
        self.samples.add(key, r["rate"], {**r, **r_mem})
        self.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
        log(
            f"  {key} single publish: {r['rate']:,.0f} req/s ({r['daemon_us_per_request']:.0f} "
            f"us per publish, main thread {r['daemon_main_thread_cpu']:.0%}, writer busy "
            f"{r['writer_busy']:.0%}, {r['publishes_per_transaction']:.1f} publishes per "
            f"transaction, commit {r['commit_ms_mean']:.2f} ms on average; waiting for a CPU: "
            f"daemon {r['daemon_runqueue_wait']:.0%})"
        )

    async def sustained(
        self, run: int, *, events: int | None = None, profile: str = "", key: str = "3"
    ) -> float | None:
        """Figure 3: a fresh daemon delivers `events` published ahead to one endpoint; its
        steady rate. Also the backlog figure's empty-queue reference (`key` "7.empty")."""
        n = events or self.s.sustained_events
        tag, what = ("sustained", "sustained") if key == "3" else ("empty", "empty queue")
        d = Daemon(self, f"{tag}-{run}")
        await d.start()
        name = f"{tag}-{run}"
        try:
            await d.endpoint(f"{self.recv}/hook/{name}", ["bench.event"], WORKERS)
            est = self.estimate_publish_s(n)
            deliver_at = time.time() + 1.3 * est + 1.5
            pub_s = await self.prepublish(d, n, ["bench.event"], deliver_at, 60 + 4 * est)
            early = await self.count(name)
            rss_pending = d.rss_kb() / 1024
            profiler = None
            if profile:
                profiler = asyncio.create_task(self.profile(d, deliver_at, profile))
            st, cpu = await self.drain(d, name, n, deliver_at)
            if profiler is not None:
                await profiler
            await self.forget(name)
        finally:
            r_mem = await d.stop()
        if profile:
            return None
        detail = {**st, **cpu, **r_mem, "publish_s": pub_s, "early": early}
        detail["rss_pending_mb"] = rss_pending
        rate: float | None = st.get("steady_rate")
        self.samples.add(key, rate, detail)
        self.samples.add(f"cpu.{key}.daemon", cpu["daemon_us_per_delivery"])
        self.samples.add(f"cpu.{key}.receiver", cpu["receiver_us_per_request"])
        self.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
        log(
            f"  {key[0]}  {what}: {rate or 0:,.0f} deliveries/s "
            f"({describe_usage(cpu)}; {early} early)"
        )
        return rate

    async def profile_publish(self, prefix: str) -> None:
        """py-spy recordings of a daemon taking single publishes from 50 clients (figure 4,
        no endpoint), while the load generator runs long enough for both recordings."""
        d = Daemon(self, "profile-publish")
        await d.start()
        try:
            load = asyncio.create_task(
                self.loadgen(
                    d.base + "/v1/events",
                    "single",
                    extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
                    duration_s=26,
                )
            )
            await self.profile(d, time.time() + 1.5, prefix, full=False)
            r = await load
            log(f"  (publishing under the profiler: {r['rate']:,.0f} req/s)")
        finally:
            await d.stop()

    async def profile(self, d: Daemon, start_at: float, prefix: str, full: bool = True) -> None:
        """py-spy recordings of the daemon from `start_at` on: all threads (sampled without
        pausing it), the GIL holder only, and with `full` a flame graph and one with native
        frames (this one pauses the daemon at each sample, so it is taken last and at a
        lower rate)."""
        pyspy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
        if pyspy is None:
            log("  py-spy not found; no profile")
            return
        await asyncio.sleep(max(0.0, start_at - time.time()) + 0.5)
        recordings = [
            ("all threads, active samples", "raw", ".raw.txt", ["--nonblocking"], 12, 200),
            ("GIL holder only", "raw", ".gil.raw.txt", ["--nonblocking", "--gil"], 10, 200),
        ]
        if full:
            recordings += [
                ("flame graph", "flamegraph", ".svg", ["--nonblocking"], 12, 200),
                (
                    "native frames (pauses the daemon)",
                    "raw",
                    ".native.raw.txt",
                    ["--native"],
                    8,
                    50,
                ),
            ]
        sections: list[str] = []
        for title, fmt, suffix, flags, duration_s, rate in recordings:
            out = Path(prefix + suffix)
            argv = [pyspy, "record", "--pid", str(d.pid), "--duration", str(duration_s)]
            argv += ["--rate", str(rate), "--format", fmt, "-o", str(out), "--threads", *flags]
            threads0, t0 = thread_cpu_s(d.pid), time.perf_counter()
            p = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:
                out_text, _ = await asyncio.wait_for(p.communicate(), duration_s + 60)
            finally:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
            wall = time.perf_counter() - t0
            cpu = {
                tid: (c - threads0.get(tid, 0.0)) / wall for tid, c in thread_cpu_s(d.pid).items()
            }
            if p.returncode != 0:
                log(f"  py-spy ({title}) failed: {out_text.decode()[-500:]}")
                sections.append(f"## {title}: py-spy failed\n{out_text.decode()[-500:]}\n")
                continue
            head = [f"## {title} ({duration_s} s at {rate} Hz; {' '.join(flags)})", ""]
            head.append("CPU per thread meanwhile (1.00 = one core):")
            head += [
                f"  {'main thread' if tid == d.pid else 'thread'} {tid}: {share:.2f}"
                for tid, share in sorted(cpu.items(), key=lambda x: -x[1])
                if share >= 0.005
            ]
            if fmt == "raw":
                head += ["", summarize_profile(out.read_text())]
            sections.append("\n".join(head) + "\n")
        Path(prefix + ".txt").write_text("\n".join(sections))
        log(f"  profile written: {prefix}.svg, {prefix}.txt, {prefix}.*raw.txt")

    async def latency(self, run: int) -> None:
        d = Daemon(self, f"latency-{run}")
        await d.start()
        name = f"lat-{run}"
        try:
            await d.endpoint(f"{self.recv}/hook/{name}", ["bench.event"], WORKERS)
            r = await self.loadgen(
                d.base + "/v1/events",
                "timed",
                extra=["--mode", "paced", "--rate", str(self.s.latency_rate), "--expect", "202"],
                duration_s=self.s.latency_s,
            )
            await self.wait_count(name, int(r["ok"]), timeout_s=30)
            st = await self.stats(name, skip_s=1.0)
            await self.forget(name)
            slow, slowest = await d.slow_commits()
        finally:
            r_mem = await d.stop()
        detail = {
            **st,
            **r_mem,
            "commits_over_25ms": slow,
            "slowest_commit_bucket": slowest,
            "publish_p50_ms": r["latency_p50_ms"],
            "publish_p99_ms": r["latency_p99_ms"],
            "send_lag_p99_ms": r["send_lag_p99_ms"],
            "sent_rate": r["sent_rate"],
        }
        self.samples.add("6.p50", st.get("latency_p50_ms"), detail)
        self.samples.add("6.p99", st.get("latency_p99_ms"))
        self.samples.add("mem.6", r_mem.get("rss_max_mb"))
        log(
            f"  6  latency p50 {st.get('latency_p50_ms', 0):.1f} ms, "
            f"p99 {st.get('latency_p99_ms', 0):.1f} ms ({st.get('latency_count')} events, "
            f"publish answer p50 {r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms; "
            f"{slow} commits over 25 ms, slowest up to {slowest})"
        )

    async def isolation(self, run: int, with_dead: bool) -> None:
        key = "8.dead" if with_dead else "8.alone"
        n = self.s.isolation_events
        d = Daemon(
            self,
            f"iso-{'dead' if with_dead else 'alone'}-{run}",
            timeout_s=self.s.isolation_timeout_s,
        )
        await d.start()
        name = f"iso-{key}-{run}"
        healthy_slots, dead_slots = WORKERS * 3 // 4, WORKERS // 4
        dead_id = ""
        dead: dict[str, Any] = {}
        try:
            await d.endpoint(f"{self.recv}/hook/{name}", ["bench.a"], healthy_slots)
            if with_dead:
                dead_id = await d.endpoint(
                    f"http://127.0.0.1:{self.dead_port}/hook", ["bench.b"], dead_slots
                )
            est = self.estimate_publish_s(2 * n)
            deliver_at = time.time() + 1.3 * est + 1.5
            await self.prepublish(d, 2 * n, ["bench.a", "bench.b"], deliver_at, 60 + 4 * est)
            st, cpu = await self.drain(d, name, n, deliver_at)
            await self.forget(name)
            if dead_id:
                dead = await d.api("GET", f"/v1/endpoints/{dead_id}/stats")
                dead["timeouts"] = await self.timeouts(d)
        finally:
            r_mem = await d.stop()
        self.samples.add(key, st.get("steady_rate"), {**st, **cpu, **r_mem, "dead": dead})
        self.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
        self.samples.add(f"cpu.{key}.daemon", cpu["daemon_us_per_delivery"])
        seen = ""
        if dead:
            seen = (
                f" (dead endpoint: {dead['timeouts']} attempts timed out, "
                f"{dead['in_flight']} in flight, {dead['counts']['pending']} pending)"
            )
        log(
            f"  8  healthy endpoint {'with' if with_dead else 'without'} a dead one: "
            f"{st.get('steady_rate', 0):,.0f} deliveries/s{seen}"
        )

    async def timeouts(self, d: Daemon) -> int:
        """Attempts that timed out so far, from the daemon's metrics."""
        async with self.http.get(d.base + "/metrics") as r:
            text = await r.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("webhookd_attempts_total{") and 'outcome="timeout"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    async def backlog(self) -> None:
        n, window = self.s.backlog, self.s.drain_window_s
        db = self.tmp / "backlog" / "webhookd.db"
        name = "backlog"
        est = self.estimate_publish_s(n)
        d = Daemon(self, "backlog", db=db)
        await d.start()
        delivered_total = 0
        try:
            await d.endpoint(f"{self.recv}/hook/{name}", ["bench.event"], WORKERS)
            # Room before the backlog falls due for the first empty-queue reference (the
            # margin after publishing, 0.3 x its estimate, usually holds it already).
            ref_s = self.reference_s()
            deliver_at = time.time() + 1.3 * est + 8 + max(0.0, ref_s - 0.3 * est)
            log(
                f"  7  publishing {n:,} pending deliveries "
                f"(due in {deliver_at - time.time():.0f} s)"
            )
            pub_s = await self.prepublish(d, n, ["bench.event"], deliver_at, 2.5 * est + 120)
            early = await self.count(name)
            rss_published = d.rss_kb() / 1024
            db_mb = sum(f.stat().st_size for f in db.parent.glob("webhookd.db*")) / 2**20
            self.samples.add("7.publish_s", pub_s)
            self.samples.add("7.publish_rate", n / pub_s)
            log(
                f"  7  published in {pub_s:.1f} s ({n / pub_s:,.0f} events/s), "
                f"RSS {rss_published:.0f} MB, database {db_mb:.0f} MB, {early} early"
            )
            # The drain's reference is the empty-queue rate measured right before and
            # right after each of its windows (figure 3's setup, a fresh daemon and
            # database), as A and A' bracket figure 3: the VM's speed moves by a third
            # within a minute, and figure 3's own runs are minutes earlier.
            refs: list[float | None] = [None]
            if deliver_at - time.time() - 1.0 > ref_s:
                refs[0] = await self.sustained(0, key="7.empty")
            else:
                log("  7  no time for the empty-queue reference before the backlog is due")
            await asyncio.sleep(max(0.0, deliver_at - time.time() - 1.0))
            rss_idle = d.rss_kb() / 1024
            self.samples.add(
                "7.rss_idle",
                rss_idle,
                {
                    "rss_after_publish_mb": rss_published,
                    "db_mb": db_mb,
                    "early": early,
                },
            )
            for run in range(self.s.runs):
                if run > 0:
                    await self.forget(name)
                    d = Daemon(self, f"backlog-{run}", db=db)
                    await d.start()
                    deliver_at = time.time()
                    self.samples.add("7.restart_ready_s", d.ready_s)
                pending = n - delivered_total
                d.rss_max_kb = 0
                await asyncio.sleep(max(0.0, deliver_at - time.time()))
                deadline = time.monotonic() + window + 60
                u0: dict[str, Any] | None = None
                while time.monotonic() < deadline:
                    _, first = await self.arrivals(name)
                    if first is not None and u0 is None:
                        u0, count0 = await self.usage_start(d), await self.count(name)
                    if first is not None and time.time() > first + window + 0.3:
                        break
                    await asyncio.sleep(0.25)
                cpu = {}
                if u0 is not None:
                    cpu = await self.usage(d, u0, await self.count(name) - count0)
                st = await self.stats(name, window_s=window)
                rate = st.get("window_count", 0) / window
                r_mem = await d.stop()
                delivered_total += st["count"]
                self.samples.add(
                    "7.drain", rate, {**st, **r_mem, **cpu, "pending_at_start": pending}
                )
                self.samples.add("7.rss_drain", r_mem.get("rss_max_mb"))
                if cpu:
                    self.samples.add("cpu.7.drain.daemon", cpu["daemon_us_per_delivery"])
                log(
                    f"  7  drain run {run + 1}: {rate:,.0f} deliveries/s over the first "
                    f"{window:.0f} s, {pending:,} pending, "
                    f"RSS max {r_mem.get('rss_max_mb', 0):.0f} MB; " + describe_usage(cpu)
                )
                refs.append(await self.sustained(run + 1, key="7.empty"))
                around = [x for x in refs[-2:] if x]
                if around:
                    ratio = rate / statistics.mean(around)
                    self.samples.add("7.drain.x_empty", ratio)
                    log(f"  7  drain run {run + 1}: {ratio:.2f} x the empty queue around it")
        finally:
            await d.stop()
            await self.forget(name)


def _function(frame: str) -> str:
    """'f (path/file.py:123)' -> 'f (path/file.py)': one entry per function, not per line."""
    name, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})"


def summarize_profile(raw: str, top: int = 15) -> str:
    """Per thread: self and inclusive sample shares per function, and self share per file,
    from py-spy's collapsed stacks (recorded with --threads)."""
    per_thread: dict[str, list[tuple[list[str], int]]] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = (frames[0], frames[1:]) if frames[0].startswith("thread") else ("", frames)
        per_thread.setdefault(thread, []).append((frames, int(count_text)))
        total += int(count_text)
    if not total:
        return "no samples\n"
    lines = [f"{total} samples"]
    for thread, stacks in sorted(per_thread.items(), key=lambda x: -sum(n for _, n in x[1])):
        n_thread = sum(n for _, n in stacks)
        lines += ["", f"### {thread or 'all'}: {n_thread} samples, {n_thread / total:.1%} of all"]
        if n_thread < 0.03 * total:
            continue
        self_fn: Counter[str] = Counter()
        self_file: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for frames, n in stacks:
            if not frames:
                continue
            leaf = _function(frames[-1])
            self_fn[leaf] += n
            self_file[leaf.rpartition(" (")[2].rstrip(")") or leaf] += n
            for fn in {_function(f) for f in frames}:
                incl[fn] += n
        lines += ["self % of this thread's samples, by function:"]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in self_fn.most_common(top)]
        lines += ["self % by file:"]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in self_file.most_common(10)]
        lines += ["inclusive % (webhookd and aiohttp functions):"]
        ours = [(f, c) for f, c in incl.most_common() if "webhookd/" in f or "aiohttp/" in f]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in ours[:top]]
    return "\n".join(lines) + "\n"


# --- report -----------------------------------------------------------------------------------


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


def machine_cpu_s() -> tuple[float, float]:
    """Machine-wide busy and stolen CPU seconds since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) for x in f.readline().split()[1:9]
        )
    tck = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tck, steal / tck


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        daemon_loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        daemon_loop = "asyncio (uvloop not installed)"
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "daemon_loop": daemon_loop,
        "kernel": platform.release(),
        "loadavg_start": " ".join(load),
    }


def med(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(x: float, unit: str) -> str:
    if unit in ("ms", "s", "MB", "x"):
        return f"{x:,.2f}" if unit == "x" else f"{x:,.1f}"
    return f"{x:,.0f}"


@dataclass
class Row:
    label: str
    unit: str
    values: list[float]
    ratio: list[float] | None = None
    ratio_to: str = ""
    target: str = ""
    check: Callable[[float], bool] | None = None  # applied to the ratio median if any, else value
    check_max: bool = False  # apply the check to the worst (largest) value instead

    def cells(self) -> list[str]:
        if not self.values:
            return [self.label, "n/a", "", "", self.target, "n/a" if self.check else ""]
        m, lo, hi = med(self.values)
        value = f"{fmt(m, self.unit)} {self.unit}"
        spread = f"{fmt(lo, self.unit)}-{fmt(hi, self.unit)}" if len(self.values) > 1 else "(1 run)"
        ratio = ""
        subject = m
        if self.ratio:
            rm, rlo, rhi = med(self.ratio)
            ratio = f"{rm:.2f} x {self.ratio_to}"
            if len(self.ratio) > 1:
                ratio += f" ({rlo:.2f}-{rhi:.2f})"
            subject = rm
        if self.check_max:
            subject = hi
        verdict = ""
        if self.ratio_to and not self.ratio and self.check is not None:
            verdict = "n/a"  # the baseline was not measured
        elif self.check is not None:
            verdict = "PASS" if self.check(subject) else "FAIL"
        return [self.label, value, spread, ratio, self.target, verdict]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "unit": self.unit, "values": self.values}
        if self.values:
            out["median"], out["min"], out["max"] = med(self.values)
        if self.ratio:
            out["ratio_to"] = self.ratio_to
            out["ratios"] = self.ratio
            out["ratio_median"] = statistics.median(self.ratio)
        if self.target:
            out["target"] = self.target
            out["pass"] = self.cells()[5] == "PASS"
        return out


def paired(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=False) if y]


def bracket(before: list[float], after: list[float]) -> list[float]:
    """Each run's baseline as the mean of its measurements before and after the figure
    (the VM's speed moves by a third within a minute; see RESULTS.md, "Noise")."""
    if len(after) != len(before):
        return before
    return [(x + y) / 2 for x, y in zip(before, after, strict=True)]


def build_rows(b: Bench) -> list[Row]:
    v = b.samples.values
    g: Callable[[str], list[float]] = lambda k: v.get(k, [])  # noqa: E731
    s = b.s
    fig3_median = statistics.median(g("3")) if g("3") else 0.0
    rows = [
        Row(f"A  baseline: aiohttp client, {WORKERS} concurrent → receiver", "req/s", g("A")),
        Row("A' the same, right after figure 3", "req/s", g("A'")),
        Row(f"B  baseline: trivial aiohttp API, {PUBLISH_CLIENTS} clients", "req/s", g("B")),
        Row(
            f"3  sustained deliveries, 1 endpoint, {WORKERS} in flight",
            "deliveries/s",
            g("3"),
            paired(g("3"), bracket(g("A"), g("A'"))),
            "A",
            ">= 0.85 x A",
            lambda r: r >= 0.85,
        ),
        Row(
            f"4  single publishes, {PUBLISH_CLIENTS} clients, no endpoint",
            "events/s",
            g("4a"),
            paired(g("4a"), g("B")),
            "B",
            ">= 0.6 x B",
            lambda r: r >= 0.6,
        ),
        Row(
            f"4' single publishes, {PUBLISH_CLIENTS} clients, 1 active endpoint",
            "events/s",
            g("4b"),
            paired(g("4b"), g("B")),
            "B",
            "(>= 0.6 x B)",
            lambda r: r >= 0.6,
        ),
        Row("4' … deliveries meanwhile", "deliveries/s", g("4b.deliveries")),
        Row(
            f"5  batch publish ({BATCH_SIZE}/request, {BATCH_CONCURRENCY} concurrent), no endpoint",
            "events/s",
            g("5a"),
            target=">= 15,000",
            check=lambda x: x >= 15000,
        ),
        Row(
            "5' batch publish, 1 endpoint (deliveries held)",
            "events/s",
            g("5b"),
            target=">= 15,000",
            check=lambda x: x >= 15000,
        ),
        Row(
            f"6  publish → first attempt p50 at {s.latency_rate:.0f}/s",
            "ms",
            g("6.p50"),
            target="< 5 ms",
            check=lambda x: x < 5,
        ),
        Row(
            f"6  publish → first attempt p99 at {s.latency_rate:.0f}/s",
            "ms",
            g("6.p99"),
            target="< 25 ms",
            check=lambda x: x < 25,
        ),
        Row(f"7  time to publish {s.backlog:,} pending deliveries", "s", g("7.publish_s")),
        Row("7  … publish rate", "events/s", g("7.publish_rate")),
        Row(
            f"7  daemon RSS, {s.backlog:,} pending, idle",
            "MB",
            g("7.rss_idle"),
            target="< 150 MB",
            check=lambda x: x < 150,
        ),
        Row(
            "7  daemon RSS, max while draining the backlog",
            "MB",
            g("7.rss_drain"),
            target="< 150 MB (worst run)",
            check=lambda x: x < 150,
            check_max=True,
        ),
        Row(
            "7  empty queue (as fig. 3), right before and after each drain window",
            "deliveries/s",
            g("7.empty"),
        ),
        Row(
            f"7  backlog drain, first {s.drain_window_s:.0f} s",
            "deliveries/s",
            g("7.drain"),
            g("7.drain.x_empty"),
            "empty queue",
            ">= 0.9 x empty queue",
            lambda r: r >= 0.9,
        ),
        Row(
            "7  … the same drain against figure 3's median (minutes earlier)",
            "deliveries/s",
            g("7.drain"),
            [x / fig3_median for x in g("7.drain")] if fig3_median else None,
            "fig. 3",
        ),
        Row("8  healthy endpoint alone", "deliveries/s", g("8.alone")),
        Row(
            f"8  healthy endpoint, dead one (timeout {s.isolation_timeout_s:.0f} s) gets half",
            "deliveries/s",
            g("8.dead"),
            paired(g("8.dead"), g("8.alone")),
            "alone",
            ">= 0.9 x alone",
            lambda r: r >= 0.9,
        ),
    ]
    return rows


def memory_rows(b: Bench) -> list[tuple[str, list[float]]]:
    labels = {
        "mem.3": "3 sustained delivery",
        "mem.4a": "4 single publishes, no endpoint",
        "mem.4b": "4' single publishes, 1 endpoint",
        "mem.5a": "5 batch publish, no endpoint",
        "mem.5b": "5' batch publish, 1 endpoint",
        "mem.6": "6 latency",
        "mem.8.alone": "8 isolation, alone",
        "mem.8.dead": "8 isolation, with dead endpoint",
        "7.rss_drain": "7 backlog drain",
    }
    return [(label, b.samples.values[k]) for k, label in labels.items() if k in b.samples.values]


def render(b: Bench, machine: dict[str, Any], rows: list[Row], command: str) -> str:
    out = ["## Machine", ""]
    out += [
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable)",
        f"- Python {machine['python']}, aiohttp {machine['aiohttp']}, kernel {machine['kernel']}",
        f"- daemon event loop: {machine['daemon_loop']}; load generator loop: {b.loadgen_loop}",
        f"- load average at start {machine['loadavg_start']}, at end {machine['loadavg_end']}; "
        f"other processes in this system used {machine['other_cpu_s']:.0f} CPU-seconds "
        f"during the run ({machine['other_cpu_share']:.0%} of the machine), steal "
        f"{machine['steal_share']:.1%}",
        f"- command: `{command}`; {b.s.runs} run(s) per figure; "
        f"wall time {machine['wall_s']:.0f} s",
        "",
        "## Figures",
        "",
        "| figure | median | min-max | ratio | target | result |",
        "|---|---:|---:|---|---|---|",
    ]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    out += ["", "## Daemon memory (max RSS per phase, MB)", "", "| phase | median | min-max |"]
    out += ["|---|---:|---:|"]
    for label, values in memory_rows(b):
        m, lo, hi = med(values)
        out.append(f"| {label} | {m:.1f} | {lo:.1f}-{hi:.1f} |")
    cpu_rows = [
        ("cpu.A.client", "A: aiohttp client loop (load generator), per request"),
        ("cpu.A.receiver", "A: receiver, per request"),
        ("cpu.3.daemon", "3: daemon, per delivery"),
        ("cpu.3.receiver", "3: receiver, per request"),
        ("cpu.B.server", "B: trivial API process, per publish"),
        ("cpu.B.client", "B: load generator, per publish"),
        ("cpu.4a.daemon", "4: daemon, per publish (no endpoint)"),
        ("cpu.4b.daemon", "4': daemon, per publish (+ its delivery, mostly)"),
        ("cpu.7.empty.daemon", "7: daemon, per delivery, empty queue (the drain's reference)"),
        ("cpu.7.drain.daemon", "7: daemon, per delivery, draining the backlog"),
        ("cpu.8.alone.daemon", "8: daemon, per healthy delivery, alone"),
        ("cpu.8.dead.daemon", "8: daemon, per healthy delivery, with the dead endpoint"),
    ]
    present = [(k, label) for k, label in cpu_rows if k in b.samples.values]
    if present:
        out += ["", "## CPU time per request (microseconds, all threads of the process)", ""]
        out += ["| process, per what | median | min-max |", "|---|---:|---:|"]
        for k, label in present:
            m, lo, hi = med(b.samples.values[k])
            out.append(f"| {label} | {m:.0f} | {lo:.0f}-{hi:.0f} |")
    cpu = b.samples.details.get("3", [])
    if cpu:
        dc = statistics.median(x["daemon_cpu"] for x in cpu)
        rc = statistics.median(x["receiver_cpu"] for x in cpu)
        out += [
            "",
            f"During figure 3 the daemon used {dc:.0%} of a core and the receiver {rc:.0%} "
            "(median of runs; 100% = one core).",
        ]
    relative = relative_cost_rows(b)
    if relative:
        out += [
            "",
            "## CPU per request in units of the receiver's, measured in the same window",
            "",
            "The receiver does the same work for every request in every figure, so its CPU "
            "time per request moves only with the VM's speed; dividing by it leaves the "
            "cost of the sending side's own work.",
            "",
            "| sender, per request | median | min-max |",
            "|---|---:|---:|",
        ]
        for label, values in relative:
            m, lo, hi = med(values)
            out.append(f"| {label} | {m:.2f} | {lo:.2f}-{hi:.2f} |")
    return "\n".join(out) + "\n"


def relative_cost_rows(b: Bench) -> list[tuple[str, list[float]]]:
    """Each sender's CPU per request divided by the receiver's in the same window."""
    v, details = b.samples.values, b.samples.details
    baseline = [
        ratio
        for key in ("A", "A'")
        for ratio in paired(v.get(f"cpu.{key}.client", []), v.get(f"cpu.{key}.receiver", []))
    ]
    rows = [("A and A': aiohttp client loop", baseline)]
    for key, label in (
        ("3", "3: daemon, sustained"),
        ("7.empty", "7: daemon, empty queue (the drain's reference)"),
        ("7.drain", "7: daemon, draining the backlog"),
    ):
        rows.append(
            (
                label,
                [
                    x["daemon_us_per_delivery"] / x["receiver_us_per_request"]
                    for x in details.get(key, [])
                    if x.get("receiver_us_per_request")
                ],
            )
        )
    return [(label, values) for label, values in rows if values]


async def main_async(args: argparse.Namespace, settings: Settings, tmp: Path) -> int:
    b = Bench(settings, tmp)
    machine = machine_info()
    t0 = time.monotonic()
    busy0, steal0 = machine_cpu_s()
    own0 = own_cpu_s()
    connector = aiohttp.TCPConnector(limit=100)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        b.http = http
        try:
            b.write_bodies()
            await b.start_receivers()
            only = set((args.only or "A,B,3,4,5,6,7,8").upper().split(","))
            for run in range(settings.runs):
                log(f"run {run + 1}/{settings.runs}")
                # Each baseline right before the figure it is the ratio's denominator for:
                # the VM's speed drifts within minutes, so the pair is taken seconds apart.
                if "B" in only:
                    await b.baseline_b(run)
                if "4" in only:
                    await b.single_publish(run, with_endpoint=False)
                    await b.single_publish(run, with_endpoint=True)
                if "5" in only:
                    await b.batch_publish(run, with_endpoint=False)
                    await b.batch_publish(run, with_endpoint=True)
                if "A" in only:
                    await b.baseline_a(run)
                if "3" in only:
                    await b.sustained(run)
                    if "A" in only:
                        # Again right after: figure 3 is divided by the mean of the two.
                        await b.baseline_a(run, key="A'")
                if "6" in only:
                    await b.latency(run)
                if "8" in only:
                    await b.isolation(run, with_dead=False)
                    await b.isolation(run, with_dead=True)
            if settings.backlog > 0 and "7" in only:
                log(f"backlog of {settings.backlog:,}")
                await b.backlog()
            if args.profile:
                rate = statistics.median(b.samples.values.get("3", [3000.0]))
                log("profile: sustained delivery under py-spy")
                await b.sustained(99, events=int(rate * 55), profile=args.profile)
            if args.profile_publish:
                log("profile: single publishes under py-spy")
                await b.profile_publish(args.profile_publish)
        finally:
            await asyncio.to_thread(b.procs.stop_all)
    with open("/proc/loadavg") as f:
        machine["loadavg_end"] = " ".join(f.read().split()[:3])
    machine["wall_s"] = time.monotonic() - t0
    # How busy the machine was with other work: every child has been waited for by now,
    # so the benchmark's own CPU time is complete.
    busy1, steal1 = machine_cpu_s()
    capacity_s = machine["wall_s"] * (os.cpu_count() or 1)
    machine["other_cpu_s"] = max(0.0, (busy1 - busy0) - (own_cpu_s() - own0))
    machine["other_cpu_share"] = machine["other_cpu_s"] / capacity_s
    machine["steal_share"] = (steal1 - steal0) / capacity_s
    rows = build_rows(b)
    command = " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    report = render(b, machine, rows, command)
    print(report)
    if args.json_out:
        doc = {
            "machine": machine,
            "command": command,
            "settings": settings.__dict__,
            "loadgen_loop": b.loadgen_loop,
            "rows": [r.as_json() for r in rows],
            "memory": {label: values for label, values in memory_rows(b)},
            "samples": b.samples.values,
            "details": b.samples.details,
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"JSON written to {args.json_out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short smoke run (< 2 min)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    ap.add_argument("--backlog", type=int, help="pending deliveries for figure 7 (0: skip)")
    ap.add_argument("--events", type=int, help="events per sustained/isolation run")
    ap.add_argument("--drain-window-s", type=float, help="backlog drain window (default 20)")
    ap.add_argument("--json-out", help="write the results as JSON to this file")
    ap.add_argument("--profile", help="profile a sustained phase with py-spy into PREFIX.*")
    ap.add_argument(
        "--profile-publish", help="profile single publishes (figure 4) with py-spy into PREFIX.*"
    )
    ap.add_argument(
        "--only", help="comma-separated figures to measure, of A,B,3,4,5,6,7,8 (default all)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--max-minutes", type=float, help="hard limit for the whole run")
    args = ap.parse_args()
    settings = Settings.from_args(args)
    limit_s = 60 * (args.max_minutes or (4 if settings.quick else 20))
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-bench-"))
    log(f"temporary directory {tmp}")

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        return asyncio.run(asyncio.wait_for(main_async(args, settings, tmp), limit_s))
    except TimeoutError:
        log(f"stopped: the run exceeded its hard limit of {limit_s:.0f} s")
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
