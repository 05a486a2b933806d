"""The console's delivery log at a million deliveries, on SQLite.

Builds (once, then reuses) a database of 250,000 events over 7 days fanned out to 4
endpoints of 2 tenants (1,000,000 deliveries, one attempt each: 90 % answered 200, 5 %
500, 3 % 404, 2 % refused), then times, per filter, the store's page query
(Store.console_deliveries) and the whole HTML page served by a real daemon on that
database (GET /console/deliveries?...), printing p50 and p95 in ms.

    .venv/bin/python bench/console.py [--db /tmp/webhookd-console-bench.db] [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webhookd.store.console import DeliveryQuery
from webhookd.store.sqlite import SQLiteStore

EVENTS = 250_000
ENDPOINTS = (("ep_bench_a1", "acme"), ("ep_bench_a2", "acme"), ("ep_bench_g1", "globex"))
ENDPOINTS += (("ep_bench_g2", "globex"),)
TYPES = ("call.completed", "call.started", "invoice.paid", "user.created")
SPAN_MS = 7 * 86_400_000


def answer(rng: random.Random) -> tuple[int | None, str | None, str]:
    x = rng.random()
    if x < 0.90:
        return 200, None, "delivered"
    if x < 0.95:
        return 500, None, "failed"
    if x < 0.98:
        return 404, None, "failed"
    return None, "connection_refused", "failed"


def build(path: str) -> None:
    """The schema through the store (its migrations), the rows straight through SQL."""

    async def schema() -> None:
        s = SQLiteStore(path)
        await s.open()
        await s.close()

    asyncio.run(schema())
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    rng = random.Random(7)
    now = int(time.time() * 1000)
    start = now - SPAN_MS
    conn.execute("BEGIN")
    for ep_id, tenant in ENDPOINTS:
        conn.execute(
            "INSERT INTO endpoints(id, url, tenant, secret, created_at, updated_at) "
            "VALUES (?, ?, ?, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', ?, ?)",
            (ep_id, f"https://{tenant}.example/{ep_id}", tenant, start, start),
        )
    headers = orjson.dumps({"Content-Type": "application/json", "webhook-id": "x"}).decode()
    d_seq = 0
    for i in range(EVENTS):
        created = start + i * SPAN_MS // EVENTS
        tenant = "acme" if i % 2 else "globex"
        etype = TYPES[i % len(TYPES)]
        cur = conn.execute(
            "INSERT INTO events(id, type, tenant, payload, created_at) VALUES (?, ?, ?, ?, ?)",
            (f"evt_bench_{i:07d}", etype, tenant, b'{"n": 1}', created),
        )
        event_seq = cur.lastrowid
        rows = []
        attempts = []
        for ep_id, ep_tenant in ENDPOINTS:
            if ep_tenant != tenant:
                continue
            for copy in range(2):  # each event reaches its tenant's 2 endpoints twice
                d_seq += 1
                code, kind, status = answer(rng)
                dl_id = f"dlv_bench_{d_seq:08d}"
                rows.append(
                    (
                        dl_id,
                        event_seq,
                        f"evt_bench_{i:07d}",
                        etype,
                        ep_id,
                        tenant,
                        status,
                        created + copy,
                        created + copy,
                    )
                )
                attempts.append((dl_id, created + 50, rng.randint(5, 400), headers, code, kind))
        conn.executemany(
            "INSERT INTO deliveries(id, event_seq, event_id, event_type, endpoint_id, tenant, "
            "status, attempt_count, created_at, updated_at) VALUES (?,?,?,?,?,?,?,1,?,?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO attempts(delivery_id, number, started_at, duration_ms, trigger, "
            "format, request_headers, status_code, response_headers, response_body, "
            "error_kind) VALUES (?, 1, ?, ?, 'scheduled', 'json', ?, ?, '{}', '', ?)",
            attempts,
        )
        if i % 50_000 == 49_999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
            print(f"  {i + 1} events, {d_seq} deliveries", flush=True)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def cases(now: int) -> list[tuple[str, DeliveryQuery, str]]:
    """(name, store query, the console page's query string)."""
    day = 86_400_000
    old = now - 5 * day
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(old / 1000))
    iso_end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((old + 3_600_000) / 1000))
    return [
        ("newest, no filter", DeliveryQuery(), ""),
        ("endpoint", DeliveryQuery(endpoint_id="ep_bench_a1"), "endpoint_id=ep_bench_a1"),
        ("status failed", DeliveryQuery(statuses=("failed",)), "status=failed"),
        ("event type", DeliveryQuery(event_type="invoice.paid"), "event_type=invoice.paid"),
        ("tenant", DeliveryQuery(tenant="acme"), "tenant=acme"),
        ("last 1 h", DeliveryQuery(since=now - 3_600_000), "window=1h"),
        (
            "1 h five days ago",
            DeliveryQuery(since=old, until=old + 3_600_000),
            f"since={iso}&until={iso_end}",
        ),
        ("HTTP 5xx", DeliveryQuery(status_class="5xx"), "class=5xx"),
        ("no answer", DeliveryQuery(status_class="none"), "class=none"),
        ("HTTP 3xx (none exist)", DeliveryQuery(status_class="3xx"), "class=3xx"),
        (
            "tenant + type + 4xx",
            DeliveryQuery(tenant="globex", event_type="call.started", status_class="4xx"),
            "tenant=globex&event_type=call.started&class=4xx",
        ),
    ]


def summary(samples_ms: list[float]) -> str:
    s = sorted(samples_ms)
    p95 = s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]
    return f"{statistics.median(s):7.1f} {p95:7.1f}"


async def store_times(path: str, runs: int) -> dict[str, tuple[str, int, bool]]:
    store = SQLiteStore(path)
    await store.open()
    out = {}
    try:
        now = int(time.time() * 1000)
        for name, q, _ in cases(now):
            samples = []
            page = None
            for _ in range(runs):
                t0 = time.perf_counter()
                page = await store.console_deliveries(q, cursor=None, limit=50)
                samples.append((time.perf_counter() - t0) * 1000)
            assert page is not None
            # The second page too, through the first page's cursor.
            if page.next_cursor:
                t0 = time.perf_counter()
                await store.console_deliveries(q, cursor=page.next_cursor, limit=50)
            out[name] = (summary(samples), len(page.data), page.next_cursor is not None)
    finally:
        await store.close()
    return out


async def page_times(path: str, runs: int) -> dict[str, str]:
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-console-bench-"))
    config = tmp / "webhookd.yaml"
    config.write_text(f"listen: 127.0.0.1:0\ndatabase: {path}\n")
    log = open(tmp / "daemon.log", "wb")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhookd", "serve", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        base = await started(tmp / "daemon.log", proc)
        out = {}
        async with aiohttp.ClientSession() as s:
            now = int(time.time() * 1000)
            for name, _, qs in cases(now):
                samples = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    async with s.get(f"{base}/console/deliveries?{qs}&live=0") as r:
                        await r.read()
                        assert r.status == 200, (name, r.status)
                    samples.append((time.perf_counter() - t0) * 1000)
                out[name] = summary(samples)
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


async def started(log_path: Path, proc: subprocess.Popen[bytes]) -> str:
    import re

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(log_path.read_text())
        m = re.search(r"event=startup .*?listen=(\S+)", log_path.read_text())
        if m:
            return f"http://{m.group(1)}"
        await asyncio.sleep(0.1)
    raise SystemExit("the daemon did not start")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--db", default=os.path.join(tempfile.gettempdir(), "webhookd-console-bench.db")
    )
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if not Path(args.db).exists():
        t0 = time.monotonic()
        print(f"building {args.db} ...", flush=True)
        build(args.db)
        print(f"built in {time.monotonic() - t0:.0f} s", flush=True)
    n = sqlite3.connect(args.db).execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
    print(f"{n} deliveries; {args.runs} runs per filter; ms")
    stores = asyncio.run(store_times(args.db, args.runs))
    pages = asyncio.run(page_times(args.db, args.runs))
    print(f"{'filter':<24} {'query p50':>9} {'p95':>7} {'page p50':>9} {'p95':>7}  rows more")
    for name, (q, rows, more) in stores.items():
        print(f"{name:<24} {q}  {pages[name]}  {rows:4d} {'yes' if more else 'no'}")


if __name__ == "__main__":
    main()
