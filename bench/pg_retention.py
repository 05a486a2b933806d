"""Retention on PostgreSQL with a million purgeable events while publishing: does the
purge stall publishing or delivering?

    .venv/bin/python bench/pg_retention.py            # 1,000,000 events; ~3-5 min
    .venv/bin/python bench/pg_retention.py --quick    # 100,000 events; ~30 s
    .venv/bin/python bench/pg_retention.py --events 300000 --purge-max-s 60 --keep

It starts its own PostgreSQL as bench/cluster.py does (a throwaway cluster in a temporary
directory, on a unix socket there only, durable defaults), then:
1. One daemon (`python -m webhookd serve`, retention.days 3650, so that its own retention
   leaves the old rows alone) migrates a fresh database; endpoints (one tenant each) at
   one receiver (bench/receiver.py) on 127.0.0.1; one real event is published and
   delivered, and its event, delivery and attempt rows are the template of the load.
2. The load, in server-side SQL (INSERT ... SELECT FROM generate_series, in chunks of
   100,000; foreign-key triggers off for the loading session only): --events events of
   the template's payload (~350 bytes), created 2 to 12 days ago, each with one
   delivered delivery and one attempt; then VACUUM ANALYZE and a CHECKPOINT, as a
   database that autovacuum keeps would be. Table sizes are printed.
3. Publishing: single publishes paced at --rate/s (bench/loadgen.py) carrying their send
   time; the publish's answer time (HTTP 202) at the load generator, publish -> arrival
   at the receiver. A warm-up, then a baseline window of --baseline-s without purging,
   then a window while the purge runs, until every old event is purged or --purge-max-s.
4. The purge runs in this process with webhookd's own code: `Retention.purge_once` (days
   1) on a `PostgresStore` pool (the store's pool only: this process does not join the
   cluster), whose `purge_before` is timed per call (one call = one DELETE of
   retention.BATCH_EVENTS events, their deliveries and attempts by cascade).
5. Every --sample-ms, pg_stat_activity and pg_locks: the sessions waiting on a lock
   (wait_event_type 'Lock'), for how long (pg_locks.waitstart) and who blocks them
   (pg_blocking_pids); the longest wait seen in each window, what waited and on whom,
   and the longest wait on a lock the purge's own session held. A wait shorter than the
   sampling interval may be missed; the publish latencies catch what sampling misses.

The table: purge rate (events/s, and rows/s counting deliveries and attempts), purge
batch durations, publish latency and publish -> arrival latency p50/p99/max, baseline vs
during the purge, and the longest lock wait. The purge window's publishing starts about
a second before the purge (once the first publish has arrived).

Every wait is bounded; child processes are stopped in `finally` blocks and die with
this process; the server is stopped and its directory removed (unless --keep).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from cluster import Daemon, Postgres
from harness import (
    PAYLOAD,
    PY,
    Processes,
    _die_with_parent,
    collect_json,
    free_port,
    log,
    wait_http,
)

from webhookd.retention import BATCH_EVENTS, Retention
from webhookd.store.postgres.store import PostgresStore

BENCH = Path(__file__).resolve().parent
DAY_MS = 86_400_000
NEWEST_AGE_DAYS = 2  # the loaded events are 2 to 12 days old
SPREAD_DAYS = 10
PURGE_DAYS = 1.0  # the purge's retention.days: every loaded event is older
CHUNK = 100_000  # rows per loading statement
WARMUP_S = 2.0
ARRIVAL_WAIT_S = 30.0
NAMES = ("warm", "base", "purge")  # tenant = receiver name = phase


# --- the daemon, the receiver, publishing ------------------------------------------


class RetentionDaemon(Daemon):
    """bench/cluster.py's daemon, with a retention window long enough (10 years) that
    its own retention purges nothing of the load."""

    def __init__(self, procs: Processes, workdir: Path, database: str) -> None:
        super().__init__(procs, workdir, database)
        self.config.write_text(self.config.read_text() + "retention: {days: 3650}\n")


def _body(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.json"
    payload = {**PAYLOAD, "sent_at": "__SENT_AT__"}  # loadgen puts the send time in
    path.write_text(json.dumps({"type": "bench.event", "tenant": name, "payload": payload}))
    return path


async def start_publisher(
    daemon: Daemon, body: Path, rate: float, duration_s: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(PY, str(BENCH / "loadgen.py"), "--url", daemon.base + "/v1/events"),
        *("--body-file", str(body), "--mode", "paced", "--rate", str(rate)),
        *("--duration-s", str(duration_s), "--expect", "202"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )


async def finish_publisher(
    p: asyncio.subprocess.Process, timeout_s: float, stop: bool = False
) -> dict[str, Any]:
    """Its JSON; `stop`: SIGTERM first (loadgen then stops sending and reports)."""
    if stop and p.returncode is None:
        p.send_signal(signal.SIGTERM)
    return await collect_json(p, timeout_s, "loadgen")


async def _get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def wait_arrivals(http: aiohttp.ClientSession, recv: str, name: str, n: int) -> int:
    deadline = time.monotonic() + ARRIVAL_WAIT_S
    got = 0
    while time.monotonic() < deadline:
        got = int((await _get(http, f"{recv}/count/{name}"))["count"])
        if got >= n:
            break
        await asyncio.sleep(0.1)
    return got


# --- the load ------------------------------------------------------------------------

_TEMPLATE = (
    "SELECT e.seq, d.seq, a.seq FROM events e JOIN deliveries d ON d.event_seq = e.seq "
    "JOIN attempts a ON a.delivery_id = d.id WHERE e.tenant = 'warm' "
    "AND d.status = 'delivered' LIMIT 1"
)
# created_at of row g (1..n): the oldest first, `step` ms apart, the newest at `newest`.
_LOAD = (
    "INSERT INTO events (seq, id, type, tenant, payload, body_hash, deliver_at, created_at) "
    "OVERRIDING SYSTEM VALUE "
    "SELECT %(base)s + g, 'evt_' || lpad(g::text, 26, '0'), t.type, t.tenant, t.payload, "
    "t.body_hash, NULL, x.at FROM events t, "
    "generate_series(%(lo)s, %(hi)s) g "
    "CROSS JOIN LATERAL (VALUES (%(newest)s - (%(n)s - g) * %(step)s)) x (at) "
    "WHERE t.seq = %(ev)s",
    "INSERT INTO deliveries (seq, id, event_seq, event_id, event_type, endpoint_id, tenant, "
    "status, attempt_count, failures, format_index, manual, created_at, updated_at) "
    "OVERRIDING SYSTEM VALUE "
    "SELECT %(base)s + g, 'dlv_' || lpad(g::text, 26, '0'), %(base)s + g, "
    "'evt_' || lpad(g::text, 26, '0'), d.event_type, d.endpoint_id, d.tenant, d.status, "
    "d.attempt_count, d.failures, d.format_index, d.manual, x.at, x.at + 80 "
    "FROM deliveries d, "
    "generate_series(%(lo)s, %(hi)s) g "
    "CROSS JOIN LATERAL (VALUES (%(newest)s - (%(n)s - g) * %(step)s)) x (at) "
    "WHERE d.seq = %(dl)s",
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, trigger, format, "
    "request_headers, status_code, response_headers, response_body, error_kind, "
    "error_message) "
    "SELECT 'dlv_' || lpad(g::text, 26, '0'), a.number, x.at + 20, a.duration_ms, "
    "a.trigger, a.format, a.request_headers, a.status_code, a.response_headers, "
    "a.response_body, a.error_kind, a.error_message "
    "FROM attempts a, "
    "generate_series(%(lo)s, %(hi)s) g "
    "CROSS JOIN LATERAL (VALUES (%(newest)s - (%(n)s - g) * %(step)s)) x (at) "
    "WHERE a.seq = %(at)s",
)
_SEQUENCES = (
    "SELECT setval(pg_get_serial_sequence('events', 'seq'), (SELECT max(seq) FROM events)), "
    "setval(pg_get_serial_sequence('deliveries', 'seq'), (SELECT max(seq) FROM deliveries))"
)
# Live and dead rows from the statistics collector (their counts lag by about a second).
_SIZES = (
    "SELECT s.relname, s.n_live_tup, s.n_dead_tup, pg_relation_size(s.relid), "
    "pg_indexes_size(s.relid), pg_total_relation_size(s.relid) FROM pg_stat_user_tables s "
    "WHERE s.relname IN ('events', 'deliveries', 'attempts') ORDER BY s.relname DESC"
)
_OLD = (
    "SELECT (SELECT count(*) FROM events WHERE created_at < %(cut)s), "
    "(SELECT count(*) FROM deliveries WHERE created_at < %(cut)s), "
    "(SELECT count(*) FROM attempts WHERE started_at < %(cut)s)"
)


async def _template(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int, int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = await (await conn.execute(_TEMPLATE)).fetchone()
        if row is not None:
            return int(row[0]), int(row[1]), int(row[2])
        await asyncio.sleep(0.1)
    raise RuntimeError("the template event was not delivered and recorded within 30 s")


async def load(dsn: str, n: int) -> float:
    """n old events, each with a delivered delivery and an attempt; seconds taken."""
    t0 = time.monotonic()
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ev, dl, at = await _template(conn)
        row = await (
            await conn.execute(
                "SELECT greatest((SELECT max(seq) FROM events), (SELECT max(seq) FROM deliveries))"
            )
        ).fetchone()
        assert row is not None
        # The rows are consistent by construction: no foreign-key triggers while loading.
        await conn.execute("SET session_replication_role = replica")
        await conn.execute("SET synchronous_commit = off")
        newest = int(time.time() * 1000) - NEWEST_AGE_DAYS * DAY_MS
        params = {"base": row[0], "n": n, "step": SPREAD_DAYS * DAY_MS // n, "newest": newest}
        params.update(ev=ev, dl=dl, at=at)
        for lo in range(1, n + 1, CHUNK):
            async with conn.transaction():
                for sql in _LOAD:
                    await conn.execute(sql, {**params, "lo": lo, "hi": min(n, lo + CHUNK - 1)})
            log(f"loaded {min(n, lo + CHUNK - 1):,} of {n:,} events")
        await conn.execute(_SEQUENCES)
        t1 = time.monotonic()
        log(f"loaded in {t1 - t0:.0f} s; VACUUM ANALYZE and CHECKPOINT")
        await conn.execute("VACUUM (ANALYZE) events, deliveries, attempts")
        await conn.execute("CHECKPOINT")
        log(f"vacuumed in {time.monotonic() - t1:.0f} s")
    return t1 - t0


async def sizes(dsn: str, cutoff: int) -> tuple[list[tuple[Any, ...]], tuple[int, int, int]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        rows = await (await conn.execute(_SIZES)).fetchall()
        old = await (await conn.execute(_OLD, {"cut": cutoff})).fetchone()
    assert old is not None
    return rows, (int(old[0]), int(old[1]), int(old[2]))


# --- the lock watch ------------------------------------------------------------------

# Each session waiting on a lock: what it waits for, since when, and who blocks it. A
# lock on object 0 of pg_database is the NOTIFY queue's, taken at COMMIT by every
# transaction that sent a notice (publishes, outcomes: the wake-ups of the daemons).
_WAITS = (
    "SELECT a.pid, coalesce(nullif(a.application_name, ''), a.backend_type), "
    "a.wait_event, l.locktype, l.mode, "
    "CASE WHEN l.locktype = 'object' AND l.classid = 'pg_database'::regclass "
    "AND l.objid = 0 THEN 'the NOTIFY queue' ELSE l.relation::regclass::text END, "
    "extract(epoch FROM clock_timestamp() - l.waitstart) * 1000, left(a.query, 100), "
    "(SELECT string_agg(coalesce(nullif(b.application_name, ''), b.backend_type) || ' ' "
    "|| b.pid || ': ' || left(b.query, 80), '; ') FROM pg_stat_activity b "
    "WHERE b.pid = ANY(pg_blocking_pids(a.pid))), "
    "EXISTS (SELECT 1 FROM pg_stat_activity b WHERE b.pid = ANY(pg_blocking_pids(a.pid)) "
    "AND b.application_name = %(purger)s) "
    "FROM pg_stat_activity a LEFT JOIN pg_locks l ON l.pid = a.pid AND NOT l.granted "
    "WHERE a.wait_event_type = 'Lock' AND a.pid <> pg_backend_pid() "
    "AND a.datname = current_database()"
)
PURGER = "bench-retention"  # the application_name of the purge's sessions


@dataclass
class LockWatch:
    """Samples the sessions waiting on a lock. Per phase: samples taken, samples with a
    waiter, the longest wait seen and what it was; and the longest wait that the purge's
    own session caused (phase + "/purge")."""

    dsn: str
    interval_s: float
    phase: str = "idle"
    samples: dict[str, int] = field(default_factory=dict)
    with_waiter: dict[str, int] = field(default_factory=dict)
    longest_ms: dict[str, float] = field(default_factory=dict)
    worst: dict[str, str] = field(default_factory=dict)
    slowest_sample_ms: float = 0.0

    async def run(self, stop: asyncio.Event, max_s: float) -> None:
        deadline = time.monotonic() + max_s
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            while not stop.is_set() and time.monotonic() < deadline:
                t0 = time.monotonic()
                rows = await (await conn.execute(_WAITS, {"purger": PURGER})).fetchall()
                took_ms = (time.monotonic() - t0) * 1000
                self.slowest_sample_ms = max(self.slowest_sample_ms, took_ms)
                self._record(rows)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        stop.wait(), max(0.0, t0 + self.interval_s - time.monotonic())
                    )

    def _record(self, rows: list[tuple[Any, ...]]) -> None:
        p = self.phase
        self.samples[p] = self.samples.get(p, 0) + 1
        if not rows:
            return
        self.with_waiter[p] = self.with_waiter.get(p, 0) + 1
        for pid, who, event, locktype, mode, what, waited, query, blockers, by_purge in rows:
            ms = float(waited or 0.0)
            text = (
                f"pid {pid} ({who}) waited {ms:.1f} ms for {mode or event} on "
                f"{what or locktype}: {query!r}, blocked by {blockers or '?'}"
            )
            for key in (p, f"{p}/purge") if by_purge else (p,):
                if ms >= self.longest_ms.get(key, -1.0):
                    self.longest_ms[key], self.worst[key] = ms, text


# --- the purge -----------------------------------------------------------------------


class TimedStore(PostgresStore):
    """The PostgreSQL store, its purge_before timed per call; no more calls after the
    deadline (Retention's pass then ends as if nothing were left)."""

    def __init__(self, dsn: str, deadline: float) -> None:
        super().__init__(dsn)
        self.deadline = deadline
        self.batches: list[tuple[float, int]] = []  # (seconds, events purged)
        self.cut_short = False

    async def purge_before(self, cutoff: int, limit: int) -> int:
        if time.monotonic() >= self.deadline:
            self.cut_short = True
            return 0
        t0 = time.perf_counter()
        n = await super().purge_before(cutoff, limit)
        self.batches.append((time.perf_counter() - t0, n))
        return n


@dataclass
class Purge:
    events: int = 0
    seconds: float = 0.0
    batches: list[tuple[float, int]] = field(default_factory=list)
    cut_short: bool = False


async def purge(dsn: str, max_s: float) -> Purge:
    store = TimedStore(f"{dsn}&application_name={PURGER}", time.monotonic() + max_s)
    await store.db.open()  # the pool only: this process is not a daemon of the cluster
    try:
        t0 = time.perf_counter()
        retention = Retention(store, lambda: PURGE_DAYS)
        events = await asyncio.wait_for(retention.purge_once(), max_s + 60)
        return Purge(events, time.perf_counter() - t0, store.batches, store.cut_short)
    finally:
        await store.db.close()


# --- the run -------------------------------------------------------------------------


@dataclass
class Window:
    publish: dict[str, Any] = field(default_factory=dict)  # loadgen's JSON
    arrival: dict[str, Any] = field(default_factory=dict)  # the receiver's /stats


@dataclass
class Run:
    args: argparse.Namespace
    procs: Processes
    tmp: Path
    http: aiohttp.ClientSession
    recv: str
    daemon: Daemon
    watch: LockWatch
    windows: dict[str, Window] = field(default_factory=dict)

    async def window(self, name: str, publisher: asyncio.subprocess.Process, stop: bool) -> None:
        out = await finish_publisher(publisher, self.args.purge_max_s + 120, stop=stop)
        got = await wait_arrivals(self.http, self.recv, name, int(out["ok"]))
        if got < out["ok"]:
            log(f"{name}: only {got} of {out['ok']} publishes arrived in {ARRIVAL_WAIT_S} s")
        self.windows[name] = Window(out, await _get(self.http, f"{self.recv}/stats/{name}"))

    async def publish_for(self, name: str, seconds: float) -> None:
        self.watch.phase = name
        p = await start_publisher(self.daemon, _body(self.tmp, name), self.args.rate, seconds)
        await self.window(name, p, stop=False)
        self.watch.phase = "idle"

    async def during_purge(self, dsn: str) -> Purge:
        a = self.args
        p = await start_publisher(self.daemon, _body(self.tmp, "purge"), a.rate, a.purge_max_s + 30)
        try:  # the purge starts once the publisher's first event has arrived
            if await wait_arrivals(self.http, self.recv, "purge", 1) < 1:
                raise RuntimeError("no publish arrived within 30 s")
            self.watch.phase = "purge"
            result = await purge(dsn, a.purge_max_s)
            self.watch.phase = "idle"
        finally:
            await self.window("purge", p, stop=True)
        return result


async def _setup(run: Run) -> None:
    await run.daemon.start(run.http)
    for name in NAMES:
        body = {"url": f"{run.recv}/hook/{name}", "tenant": name, "events": ["*"]}
        await run.daemon.post(run.http, "/v1/endpoints", body)
    event = {"type": "bench.event", "tenant": "warm", "payload": PAYLOAD}
    await run.daemon.post(run.http, "/v1/events", event)  # the template of the load


@dataclass
class Tables:
    load_s: float
    before: list[tuple[Any, ...]]  # (table, rows, heap, indexes, total bytes)
    after: list[tuple[Any, ...]]
    left: tuple[int, int, int]  # old events, deliveries, attempts left after the purge
    rows_purged: int  # the three tables together


async def measure(run: Run, dsn: str) -> tuple[Purge, Tables]:
    a = run.args
    await _setup(run)
    load_s = await load(dsn, a.events)
    cutoff = int(time.time() * 1000) - int(PURGE_DAYS * DAY_MS)
    before, old = await sizes(dsn, cutoff)
    log(f"load: {a.events:,} events in {load_s:.0f} s; old rows {old}")
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(run.watch.run(stop, a.baseline_s + a.purge_max_s + 300))
    try:
        await run.publish_for("warm", WARMUP_S)
        await run.publish_for("base", a.baseline_s)
        log(f"baseline done; purging (at most {a.purge_max_s:.0f} s)")
        result = await run.during_purge(dsn)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(watcher, 10)
    after, left = await sizes(dsn, cutoff)
    return result, Tables(load_s, before, after, left, sum(old) - sum(left))


# --- the report ----------------------------------------------------------------------


def _q(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _sizes_table(title: str, rows: list[tuple[Any, ...]]) -> list[str]:
    lines = [
        f"{title}:",
        "| table | live rows | dead rows | heap | indexes | total |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, live, dead, heap, idx, total in rows:
        lines.append(f"| {name} | {live:,} | {dead:,} | {_mb(heap)} | {_mb(idx)} | {_mb(total)} |")
    return lines


def _lat(doc: dict[str, Any], prefix: str) -> str:
    vals = [doc.get(f"{prefix}_{k}_ms") for k in ("p50", "p99", "max")]
    return " / ".join("-" if v is None else f"{v:.1f}" for v in vals) + " ms"


def _purge_lines(p: Purge, t: Tables) -> list[str]:
    left, rows = t.left, t.rows_purged
    durations = [d * 1000 for d, _ in p.batches]
    tenth = max(1, len(durations) // 10)
    seconds = max(p.seconds, 1e-9)
    return [
        f"Purge: {p.events:,} events in {p.seconds:.1f} s = {p.events / seconds:,.0f} "
        f"events/s; {rows:,} rows with their deliveries and attempts = "
        f"{rows / seconds:,.0f} rows/s; "
        + ("stopped at --purge-max-s" if p.cut_short else "all purged")
        + f" (old rows left: {left[0]:,} events, {left[1]:,} deliveries, {left[2]:,} attempts)",
        f"Purge batches (one DELETE of up to {BATCH_EVENTS} events): {len(durations):,}, "
        f"p50 {_q(durations, 0.5):.1f} / p99 {_q(durations, 0.99):.1f} / "
        f"max {max(durations, default=math.nan):.1f} ms; median of the first tenth "
        f"{statistics.median(durations[:tenth] or [math.nan]):.1f} ms, "
        f"of the last tenth {statistics.median(durations[-tenth:] or [math.nan]):.1f} ms",
    ]


def _window_rows(run: Run) -> list[str]:
    w = run.watch
    base, during = run.windows.get("base", Window()), run.windows.get("purge", Window())

    held = w.longest_ms.get("purge/purge")
    by_purge = "none seen" if held is None else f"{held:.1f} ms"

    def pub(doc: dict[str, Any]) -> str:
        return f"{doc.get('requests', 0):,} / {doc.get('ok', 0):,}"

    return [
        "| | baseline (no purge) | during the purge |",
        "|---|---:|---:|",
        f"| publishes sent / answered 202 | {pub(base.publish)} | {pub(during.publish)} |",
        f"| publish answer p50 / p99 / max | {_lat(base.publish, 'latency')} | "
        f"{_lat(during.publish, 'latency')} |",
        f"| publish -> arrival p50 / p99 / max | {_lat(base.arrival, 'latency')} | "
        f"{_lat(during.arrival, 'latency')} |",
        f"| lock samples with a waiter / taken | {w.with_waiter.get('base', 0)} / "
        f"{w.samples.get('base', 0)} | {w.with_waiter.get('purge', 0)} / "
        f"{w.samples.get('purge', 0)} |",
        f"| longest lock wait seen | {w.longest_ms.get('base', 0.0):.1f} ms | "
        f"{w.longest_ms.get('purge', 0.0):.1f} ms |",
        f"| longest wait on a lock the purge held | - | {by_purge} |",
    ]


def report(run: Run, p: Purge, t: Tables) -> str:
    w = run.watch
    lines = _sizes_table(f"After loading {run.args.events:,} events ({t.load_s:.0f} s)", t.before)
    lines += ["", *_sizes_table("After the purge (dead rows not yet vacuumed)", t.after)]
    lines += ["", *_purge_lines(p, t), "", *_window_rows(run), ""]
    labels = {"base": "baseline", "purge": "during the purge", "purge/purge": "the purge's"}
    for key, label in labels.items():
        if key in w.worst:
            lines.append(f"Longest lock wait ({label}): {w.worst[key]}")
    lines.append(
        f"Lock sampling every {w.interval_s * 1000:.0f} ms; the slowest sample took "
        f"{w.slowest_sample_ms:.1f} ms."
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace, tmp: Path) -> None:
    procs = Processes()
    pg = Postgres(tmp / "pg")
    pg.base.mkdir()
    t0 = time.monotonic()
    try:
        pg.start()
        dsn = pg.create("retention")
        port = free_port()
        procs.start([PY, str(BENCH / "receiver.py"), "--port", str(port)], tmp / "receiver.log")
        recv = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            await wait_http(http, f"{recv}/count/none", 10)
            daemon = RetentionDaemon(procs, tmp / "daemon", dsn)
            watch = LockWatch(dsn, args.sample_ms / 1000)
            run = Run(args, procs, tmp, http, recv, daemon, watch)
            try:
                result, tables = await measure(run, dsn)
            finally:
                await daemon.stop()
        print(report(run, result, tables))
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"\nWall time {time.monotonic() - t0:.0f} s; load average at the end {load}.")
    finally:
        procs.stop_all()
        pg.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100,000 events, shorter windows")
    ap.add_argument("--events", type=int, help="old events to load (1,000,000; quick 100,000)")
    ap.add_argument("--rate", type=float, default=200.0, help="publishes/s")
    ap.add_argument("--baseline-s", type=float, help="baseline window (15; quick 8)")
    ap.add_argument("--purge-max-s", type=float, help="purge bound (180; quick 60)")
    ap.add_argument("--sample-ms", type=float, default=50.0, help="lock sampling interval")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    q = args.quick
    args.events = args.events or (100_000 if q else 1_000_000)
    args.baseline_s = args.baseline_s or (8.0 if q else 15.0)
    args.purge_max_s = args.purge_max_s or (60.0 if q else 180.0)
    if not 1_000 <= args.events <= 10_000_000 or not 1 <= args.rate <= 2000:
        ap.error("--events 1,000-10,000,000 and --rate 1-2000")
    # Not under a 0700 directory: the server's unprivileged user must reach its socket.
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-pgretention-"))
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
