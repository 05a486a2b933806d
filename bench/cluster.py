"""Several daemons on PostgreSQL: deliveries/s, publishes/s and publish -> first attempt
latency with 1, 2 and 3 daemons sharing one PostgreSQL database, beside one daemon on
SQLite, in the same run; and the CPU each daemon and the PostgreSQL server spend per
delivery.

    .venv/bin/python bench/cluster.py                 # 2 runs of each setup; ~3 min
    .venv/bin/python bench/cluster.py --runs 1 --throughput-s 6   # ~1.5 min
    .venv/bin/python bench/cluster.py --setups sqlite:1,postgres:2 --keep

It starts its own PostgreSQL (Debian's initdb/pg_ctl, or PATH's): a cluster in a
temporary directory, listening on a unix socket in that directory only, with the
server's durable defaults (fsync on, synchronous_commit on), as SQLite runs with
synchronous=FULL; as an unprivileged user when run as root. Every setup gets a fresh
database (SQLite: a fresh file). Everything else talks over 127.0.0.1.

Each setup, per run (runs interleaved: run 1 of every setup, then run 2):
1. N daemons (`python -m webhookd serve`, 64 workers, max_in_flight_per_endpoint 16) on
   the setup's database; 8 endpoints (one tenant each) at one receiver
   (bench/receiver.py), made on the first daemon; a warm-up batch through each daemon.
2. Throughput: 16 closed-loop publishers (bench/loadgen.py, one process per daemon, the
   16 split between them) post batches of 8 events (one per endpoint) for
   --throughput-s: events accepted and deliveries arriving per second in the window after
   a 2 s warm-up; then the backlog left by publishing faster than delivering drains
   (bounded). The CPU seconds of each daemon, of every PostgreSQL server process and of
   the receiver from the first publish to the last delivery, per delivery.
3. Latency: single publishes paced at --latency-rate events/s in all, spread over the
   daemons, each carrying its send time; publish -> arrival at the receiver, p50 and p99
   (the first second left out).

Every wait is bounded; child processes are stopped in `finally` blocks and die with
this process; the server is stopped and its directory removed (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from harness import (
    PAYLOAD,
    PY,
    REPO_DIR,
    Processes,
    free_port,
    log,
    machine_cpu_s,
    own_cpu_s,
    proc_cpu_s,
    run_helper,
)

BENCH = Path(__file__).resolve().parent
ENDPOINTS = 8  # one tenant each; a throughput batch has one event per endpoint
PUBLISHERS = 16  # closed-loop publishers, split over the daemons
PER_ENDPOINT = 16  # delivery.max_in_flight_per_endpoint
WARMUP_S = 2.0
DRAIN_MAX_S = 60.0
SU = "webhookd"  # the cluster's superuser (initdb -U)


# --- the throwaway PostgreSQL -------------------------------------------------------


def _bindir() -> Path:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    sys.exit("PostgreSQL is not installed (initdb/pg_ctl): apt-get install postgresql")


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@dataclass
class Postgres:
    """A cluster in `base`, on a unix socket there; run as `run_as` when we are root."""

    base: Path
    bindir: Path = field(default_factory=_bindir)
    run_as: str | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def sockdir(self) -> Path:
        return self.base / "sock"

    def dsn(self, dbname: str) -> str:
        return f"postgresql://{SU}@/{dbname}?host={self.sockdir}"

    def _run(self, *argv: str) -> None:
        cmd = ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else list(argv)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()[-1500:]}")

    def start(self) -> None:
        self.sockdir.mkdir()
        if os.geteuid() == 0:  # initdb refuses root
            self.run_as = "postgres" if _user_exists("postgres") else "nobody"
            user = pwd.getpwnam(self.run_as)
            for p in (self.base, self.sockdir):
                os.chown(p, user.pw_uid, user.pw_gid)
        init = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SU]
        self._run(*init, "--auth=trust", "-E", "UTF8", "--locale=C")
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.sockdir}' "
            "-c max_connections=200"
        )
        log_file = str(self.base / "server.log")
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", log_file,
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "stop")

    def create(self, dbname: str) -> str:
        self._run(str(self.bindir / "createdb"), "-h", str(self.sockdir), "-U", SU, dbname)
        return self.dsn(dbname)

    def server_pids(self) -> list[int]:
        """The postmaster and its children (backends, writer, WAL writer, ...)."""
        pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                        children.append(int(entry))
        return [pid, *children]

    def cpu_s(self) -> float:
        return sum(proc_cpu_s(p) or 0.0 for p in self.server_pids())


# --- daemons ------------------------------------------------------------------------


class Daemon:
    def __init__(self, procs: Processes, workdir: Path, database: str) -> None:
        self.procs = procs
        self.dir = workdir
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config = self.dir / "webhookd.yaml"
        self.config.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"database: '{database}'\n"
            "security: {https_only: false, allow_networks: [127.0.0.0/8]}\n"
            "event_types: [{name: bench.event, description: benchmark events}]\n"
            "delivery: {workers: 64, shutdown_grace_s: 2, "
            f"max_in_flight_per_endpoint: {PER_ENDPOINT}}}\n"
            "log: {level: warning}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.proc = self.procs.start(
            [PY, "-m", "webhookd", "serve", "-c", str(self.config)],
            self.dir / "daemon.log",
            env={"PYTHONPATH": str(REPO_DIR)},
            cwd=self.dir,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "daemon.log").read_text()[-2000:])
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(self.base + "/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError("daemon did not become ready within 60 s")

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(self.procs.stop, self.proc, 30)

    def cpu_s(self) -> float:
        return (proc_cpu_s(self.proc.pid) or 0.0) if self.proc else 0.0

    async def post(self, http: aiohttp.ClientSession, path: str, body: Any) -> Any:
        async with http.post(self.base + path, json=body) as r:
            if r.status not in (200, 201, 202):
                raise RuntimeError(f"POST {path}: {r.status} {(await r.text())[:300]}")
            return await r.json()


# --- one setup ----------------------------------------------------------------------


@dataclass
class Result:
    setup: str
    run: int
    publishes_per_s: float = 0.0
    deliveries_per_s: float = 0.0
    # CPU ms per delivery from the first publish to the last delivery (publishing and the
    # drain included): each daemon, the PostgreSQL server, the receiver.
    daemon_cpu_ms: list[float] = field(default_factory=list)
    pg_cpu_ms: float = 0.0
    receiver_cpu_ms: float = 0.0
    drain_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    answer_p99_ms: float = 0.0  # the publishes' own answers (202), the slowest daemon's p99


@dataclass
class Env:
    args: argparse.Namespace
    procs: Processes
    tmp: Path
    pg: Postgres
    recv: str
    recv_pid: int
    http: aiohttp.ClientSession
    pg_cpu_s: float = 0.0  # the server's CPU over every setup (its backends die with them)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def _arrived(env: Env, name: str, t0: float | None = None, t1: float | None = None) -> int:
    query = f"?from_t={t0}&to_t={t1}" if t0 is not None else ""
    async with env.http.get(f"{env.recv}/count/{name}{query}") as r:
        doc = await r.json()
    return int(doc["between"] if t0 is not None else doc["count"])


async def _wait_arrivals(env: Env, name: str, count: int, max_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s:
        if await _arrived(env, name) >= count:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{name}: {await _arrived(env, name)} of {count} arrived in {max_s} s")


async def _prepare(env: Env, daemons: list[Daemon], name: str) -> None:
    """Endpoints on the first daemon; a warm-up batch through each daemon once its view
    has them all (each event goes to one endpoint)."""
    for i in range(ENDPOINTS):
        body = {"url": f"{env.recv}/hook/{name}", "tenant": f"t{i}", "events": ["*"]}
        await daemons[0].post(env.http, "/v1/endpoints", body)
    batch = {"events": [_event(i) for i in range(ENDPOINTS)]}
    sent = 0
    for d in daemons:
        for _ in range(100):
            doc = await d.post(env.http, "/v1/events/batch", batch)
            got = sum(e["deliveries"] for e in doc["data"])
            sent += got
            if got == ENDPOINTS:
                break
            await asyncio.sleep(0.05)
    await _wait_arrivals(env, name, sent, 30)


def _event(i: int, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "bench.event", "tenant": f"t{i % ENDPOINTS}", "payload": payload or PAYLOAD}


async def _loadgens(env: Env, daemons: list[Daemon], argv: list[list[str]]) -> list[Any]:
    return list(
        await asyncio.gather(
            *(
                run_helper([PY, str(BENCH / "loadgen.py"), "--url", d.base + path, *rest], 300)
                for d, (path, *rest) in zip(daemons, argv, strict=True)
            )
        )
    )


def _cpu(env: Env, daemons: list[Daemon]) -> tuple[list[float], float, float]:
    return [d.cpu_s() for d in daemons], env.pg.cpu_s(), proc_cpu_s(env.recv_pid) or 0.0


async def _throughput(env: Env, daemons: list[Daemon], name: str, r: Result) -> None:
    """Closed-loop batches, then the drain; fills r's rates, CPU and drain time."""
    body = env.tmp / f"{name}-batch.json"
    body.write_text(json.dumps({"events": [_event(i) for i in range(ENDPOINTS)]}))
    argv = [
        ["/v1/events/batch", "--body-file", str(body), "--concurrency", str(c),
         "--duration-s", str(env.args.throughput_s), "--warmup-s", str(WARMUP_S),
         "--expect", "202"]
        for c in _split(PUBLISHERS, len(daemons))
    ]  # fmt: skip
    before, cpu0 = await _arrived(env, name), _cpu(env, daemons)
    run = asyncio.ensure_future(_loadgens(env, daemons, argv))
    await asyncio.sleep(WARMUP_S)  # the load generators' own warm-up
    t0 = time.time()
    results = await run
    t1 = time.time()
    accepted = sum(x["statuses"].get("202", 0) for x in results) * ENDPOINTS
    r.drain_s = await _wait_arrivals(env, name, before + accepted, DRAIN_MAX_S)
    cpu1 = _cpu(env, daemons)
    r.publishes_per_s = sum(x["rate"] for x in results) * ENDPOINTS
    r.deliveries_per_s = await _arrived(env, name, t0, t1) / (t1 - t0)
    per = 1000 / max(await _arrived(env, name) - before, 1)
    r.daemon_cpu_ms = [(b - a) * per for a, b in zip(cpu0[0], cpu1[0], strict=True)]
    r.pg_cpu_ms = (cpu1[1] - cpu0[1]) * per
    r.receiver_cpu_ms = (cpu1[2] - cpu0[2]) * per


async def _latency(env: Env, daemons: list[Daemon], name: str, r: Result) -> None:
    body = env.tmp / f"{name}-single.json"
    payload = {**PAYLOAD, "sent_at": "__SENT_AT__"}
    body.write_text(json.dumps(_event(0, payload)))  # loadgen puts the send time in
    rate = env.args.latency_rate / len(daemons)
    argv = [
        ["/v1/events", "--body-file", str(body), "--mode", "paced", "--rate", str(rate),
         "--duration-s", str(env.args.latency_s), "--expect", "202"]
        for _ in daemons
    ]  # fmt: skip
    answers = await _loadgens(env, daemons, argv)
    r.answer_p99_ms = max(a["latency_p99_ms"] or 0.0 for a in answers)
    await asyncio.sleep(0.5)  # the last publishes' deliveries (a few ms) arrive
    async with env.http.get(f"{env.recv}/stats/{name}?skip_s=1") as resp:
        stats = await resp.json()
    r.p50_ms, r.p99_ms = stats.get("latency_p50_ms"), stats.get("latency_p99_ms")


async def one_setup(env: Env, backend: str, n: int, run: int) -> Result:
    name = f"{backend}{n}-r{run}"
    r = Result(f"{backend}:{n}", run)
    workdir = env.tmp / name
    database = env.pg.create(name.replace("-", "_")) if backend == "postgres" else ""
    daemons = [
        Daemon(env.procs, workdir / f"d{i}", database or str(workdir / "webhookd.db"))
        for i in range(n)
    ]
    pg0 = env.pg.cpu_s()
    try:
        for d in daemons:  # one by one: the first migrates, the others find it done
            await d.start(env.http)
        await _prepare(env, daemons, name)
        await _throughput(env, daemons, name, r)
        await _latency(env, daemons, name, r)
    finally:
        env.pg_cpu_s += env.pg.cpu_s() - pg0
        for d in daemons:
            await d.stop()
    log(
        f"{r.setup} run {run}: {r.publishes_per_s:,.0f} publishes/s, "
        f"{r.deliveries_per_s:,.0f} deliveries/s, daemons "
        f"{', '.join(f'{c:.3f}' for c in r.daemon_cpu_ms)} ms/delivery, PostgreSQL "
        f"{r.pg_cpu_ms:.3f} ms/delivery, drained in {r.drain_s:.1f} s; latency p50 "
        f"{r.p50_ms or 0:.1f} ms, p99 {r.p99_ms or 0:.1f} ms (202 answer p99 "
        f"{r.answer_p99_ms:.1f} ms)"
    )
    return r


# --- report -------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(results: list[Result], setups: list[tuple[str, int]]) -> str:
    lines = [
        "| setup | publishes/s | deliveries/s | publish → first attempt p50 / p99 | "
        "daemon CPU ms/delivery (each; sum) | PostgreSQL CPU ms/delivery | "
        "receiver CPU ms/delivery |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, n in setups:
        rs = [r for r in results if r.setup == f"{backend}:{n}"]
        each = [_median([r.daemon_cpu_ms[i] for r in rs]) for i in range(n)]
        label = "SQLite, 1 daemon" if backend == "sqlite" else f"PostgreSQL, {n} daemon"
        label += "s" if n > 1 else ""
        pg = _median([r.pg_cpu_ms for r in rs]) if backend == "postgres" else None
        lines.append(
            f"| {label} | {_median([r.publishes_per_s for r in rs]):,.0f} | "
            f"{_median([r.deliveries_per_s for r in rs]):,.0f} | "
            f"{_median([r.p50_ms or 0 for r in rs]):.1f} / "
            f"{_median([r.p99_ms or 0 for r in rs]):.1f} ms | "
            f"{' + '.join(f'{c:.2f}' for c in each)}"
            + (f" = {sum(each):.2f}" if n > 1 else "")
            + f" | {'' if pg is None else f'{pg:.2f}'} | "
            f"{_median([r.receiver_cpu_ms for r in rs]):.2f} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    procs = Processes()
    pg = Postgres(tmp / "pg")
    pg.base.mkdir()
    results: list[Result] = []
    (busy0, steal0), own0, t0 = machine_cpu_s(), own_cpu_s(), time.monotonic()
    env: Env | None = None
    try:
        pg.start()
        port = free_port()
        receiver = procs.start(
            [PY, str(BENCH / "receiver.py"), "--port", str(port)], tmp / "receiver.log"
        )
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            env = Env(args, procs, tmp, pg, f"http://127.0.0.1:{port}", receiver.pid, http)
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    await _arrived(env, "none")
                    break
                await asyncio.sleep(0.05)
            for run in range(1, args.runs + 1):
                for backend, n in args.setups:
                    results.append(await one_setup(env, backend, n, run))
    finally:
        procs.stop_all()
        pg.stop()
    (busy1, steal1), wall_s = machine_cpu_s(), time.monotonic() - t0
    # Ours: this process, its children (waited for once stopped) and the server.
    other_s = busy1 - busy0 - (own_cpu_s() - own0) - (env.pg_cpu_s if env else 0.0)
    cores = len(os.sched_getaffinity(0))
    print(report(results, args.setups))
    print(
        f"\nWall time {wall_s:.0f} s; other processes used about "
        f"{max(other_s, 0.0) / wall_s / cores:.0%} of the {cores} cores meanwhile, "
        f"steal {(steal1 - steal0) / wall_s / cores:.1%}."
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--setups", default="sqlite:1,postgres:1,postgres:2,postgres:3")
    ap.add_argument("--throughput-s", type=float, default=10.0, help="with the warm-up")
    ap.add_argument("--latency-s", type=float, default=6.0)
    ap.add_argument("--latency-rate", type=float, default=200.0, help="events/s in all")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    args.setups = [(b, int(n)) for b, _, n in (s.partition(":") for s in args.setups.split(","))]
    if any(b not in ("sqlite", "postgres") or not 1 <= n <= 8 for b, n in args.setups):
        sys.exit("--setups: sqlite:1 or postgres:N (N 1-8), comma-separated")
    # Not under a 0700 directory: the server's unprivileged user must reach its socket.
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-cluster-"))
    os.chmod(tmp, 0o755)  # noqa: S103 - read and search only, for that user
    try:
        asyncio.run(main_async(args, tmp))
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
