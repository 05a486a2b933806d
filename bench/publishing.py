"""The publishing figures and their baseline: B (a trivial aiohttp publish handler),
4 (single publishes from 50 clients, with and without an endpoint delivering), 5
(batches of 1000) and 6 (publish-to-first-attempt latency at a steady rate).
"""

from __future__ import annotations

import asyncio

from core import Bench
from daemons import Daemon
from harness import (
    BATCH_CONCURRENCY,
    BATCH_SIZE,
    BENCH_DIR,
    PUBLISH_CLIENTS,
    PY,
    WORKERS,
    log,
    proc_cpu_s,
    proc_status_kb,
    wait_http,
)


async def baseline_b(b: Bench, run: int) -> None:
    p = b.procs.start(
        [PY, str(BENCH_DIR / "trivial_api.py"), "--port", str(b.trivial_port)],
        b.tmp / "trivial.log",
    )
    try:
        base = f"http://127.0.0.1:{b.trivial_port}"
        await wait_http(b.http, base + "/healthz", 30)
        cpu0 = proc_cpu_s(p.pid) or 0.0
        r = await b.loadgen(
            base + "/v1/events",
            "single",
            extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
        )
        cpu = (proc_cpu_s(p.pid) or 0.0) - cpu0
        r["server_us_per_request"] = cpu / max(r["answered"], 1) * 1e6
        r["rss_mb"] = (proc_status_kb(p.pid, "VmRSS") or 0) / 1024
        b.samples.add("cpu.B.server", r["server_us_per_request"])
        b.samples.add("cpu.B.client", r["cpu_us_per_request"])
    finally:
        await asyncio.to_thread(b.procs.stop, p)
    b.samples.add("B", r["rate"], r)
    log(f"  B  baseline trivial API: {r['rate']:,.0f} req/s")


async def single_publish(b: Bench, run: int, with_endpoint: bool) -> None:
    key = "4b" if with_endpoint else "4a"
    d = Daemon(b, f"single-{key}-{run}")
    await d.start()
    name = f"pubdel-{run}"
    try:
        if with_endpoint:
            await d.endpoint(f"{b.recv}/hook/{name}", ["bench.event"], WORKERS)
        u0 = await b.usage_start(d)
        r = await b.loadgen(
            d.base + "/v1/events",
            "single",
            extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
        )
        r.update(await b.usage(d, u0, r["answered"]))
        r["daemon_us_per_request"] = r["daemon_us_per_delivery"]  # one publish each here
        r["publishes_per_transaction"] = r["answered"] / max(r["transactions"], 1)
        b.samples.add(f"cpu.{key}.daemon", r["daemon_us_per_request"])
        if with_endpoint:
            delivered = await b.count(name)
            r["delivered_during"] = delivered
            # Deliveries per second while publishing (from the first publish).
            b.samples.add("4b.deliveries", delivered / b.s.closed_s)
            await b.forget(name)
    finally:
        r_mem = await d.stop()
    b.samples.add(key, r["rate"], {**r, **r_mem})
    b.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
    log(
        f"  {key} single publish: {r['rate']:,.0f} req/s ({r['daemon_us_per_request']:.0f} "
        f"us per publish, main thread {r['daemon_main_thread_cpu']:.0%}, writer busy "
        f"{r['writer_busy']:.0%}, {r['publishes_per_transaction']:.1f} publishes per "
        f"transaction, commit {r['commit_ms_mean']:.2f} ms on average; waiting for a CPU: "
        f"daemon {r['daemon_runqueue_wait']:.0%})"
    )


async def batch_publish(b: Bench, run: int, with_endpoint: bool) -> None:
    key = "5b" if with_endpoint else "5a"
    d = Daemon(b, f"batch-{key}-{run}")
    await d.start()
    try:
        if with_endpoint:
            await d.endpoint(f"{b.recv}/hook/held-{run}", ["bench.event"], WORKERS)
        r = await b.loadgen(
            d.base + "/v1/events/batch",
            "batch_held" if with_endpoint else "batch",
            extra=["--concurrency", str(BATCH_CONCURRENCY), "--expect", "202"],
        )
    finally:
        r_mem = await d.stop()
    rate = r["rate"] * BATCH_SIZE
    b.samples.add(key, rate, {**r, **r_mem})
    b.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
    log(f"  {key} batch publish: {rate:,.0f} events/s")


async def latency(b: Bench, run: int) -> None:
    d = Daemon(b, f"latency-{run}")
    await d.start()
    name = f"lat-{run}"
    try:
        await d.endpoint(f"{b.recv}/hook/{name}", ["bench.event"], WORKERS)
        r = await b.loadgen(
            d.base + "/v1/events",
            "timed",
            extra=["--mode", "paced", "--rate", str(b.s.latency_rate), "--expect", "202"],
            duration_s=b.s.latency_s,
        )
        await b.wait_count(name, int(r["ok"]), timeout_s=30)
        st = await b.stats(name, skip_s=1.0)
        await b.forget(name)
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
    b.samples.add("6.p50", st.get("latency_p50_ms"), detail)
    b.samples.add("6.p99", st.get("latency_p99_ms"))
    b.samples.add("mem.6", r_mem.get("rss_max_mb"))
    log(
        f"  6  latency p50 {st.get('latency_p50_ms', 0):.1f} ms, "
        f"p99 {st.get('latency_p99_ms', 0):.1f} ms ({st.get('latency_count')} events, "
        f"publish answer p50 {r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms; "
        f"{slow} commits over 25 ms, slowest up to {slowest})"
    )
