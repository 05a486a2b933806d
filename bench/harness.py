"""The benchmark's plumbing: settings, child processes, and the CPU and memory accounting
read from /proc.

Every child is started through `Processes`, dies with the benchmark (PR_SET_PDEATHSIG)
and is stopped in a `finally` block; every wait is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
PY = sys.executable
WORKERS = 64
PUBLISH_CLIENTS = 50
PUBLISHERS_3P = 16  # figure 3P: closed-loop publishers while the daemon delivers
BATCH_3P = 10  # figure 3P: events per publish request (small batches)
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
    publishers_3p: int  # closed-loop publishers of figure 3P
    batch_3p: int  # events per publish request of figure 3P (1: POST /v1/events)
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
            publishers_3p=args.publishers or PUBLISHERS_3P,
            batch_3p=args.batch_3p or BATCH_3P,
            quick=q,
        )


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


class Processes:
    """Every child started by the benchmark; `stop_all` in a finally block ends them."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            p = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                cwd=cwd,
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
    return await collect_json(p, timeout_s, argv[1])


async def collect_json(
    p: asyncio.subprocess.Process, timeout_s: float, name: str
) -> dict[str, Any]:
    """Wait for a helper started with piped output, and return the JSON object it
    printed; killed if it outlives `timeout_s`, an error if it failed."""
    try:
        out, err = await asyncio.wait_for(p.communicate(), timeout_s)
    finally:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)
    if p.returncode != 0:
        raise RuntimeError(f"{name} exited {p.returncode}: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, key: str, value: float | None, detail: dict[str, Any] | None = None) -> None:
        if value is not None:
            self.values.setdefault(key, []).append(value)
        if detail is not None:
            self.details.setdefault(key, []).append(detail)
