"""Figure 7: a backlog of pending deliveries (a million in a full run): the time to
publish it, the daemon's memory with it pending, and its drain rate against the empty
queue measured right before and after each drain window.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from core import Bench, describe_usage
from daemons import Daemon
from delivery import sustained
from harness import WORKERS, log


async def publish_backlog(b: Bench, d: Daemon, name: str, db: Path) -> tuple[float, dict[str, Any]]:
    """Publish the backlog, due after publishing plus room for the first empty-queue
    reference, and record the publish time. When it falls due, and what it left."""
    n, est = b.s.backlog, b.estimate_publish_s(b.s.backlog)
    # Room before the backlog falls due for the first empty-queue reference (the
    # margin after publishing, 0.3 x its estimate, usually holds it already).
    deliver_at = time.time() + 1.3 * est + 8 + max(0.0, b.reference_s() - 0.3 * est)
    log(f"  7  publishing {n:,} pending deliveries (due in {deliver_at - time.time():.0f} s)")
    pub_s = await b.prepublish(d, n, ["bench.event"], deliver_at, 2.5 * est + 120)
    early = await b.count(name)
    rss_published = d.rss_kb() / 1024
    db_mb = sum(f.stat().st_size for f in db.parent.glob("webhookd.db*")) / 2**20
    b.samples.add("7.publish_s", pub_s)
    b.samples.add("7.publish_rate", n / pub_s)
    log(
        f"  7  published in {pub_s:.1f} s ({n / pub_s:,.0f} events/s), "
        f"RSS {rss_published:.0f} MB, database {db_mb:.0f} MB, {early} early"
    )
    return deliver_at, {"rss_after_publish_mb": rss_published, "db_mb": db_mb, "early": early}


async def drain_window(b: Bench, d: Daemon, name: str) -> tuple[float, dict[str, Any]]:
    """The drain rate over the first `drain_window_s` after the first arrival, with the
    receiver's stats and the daemon's CPU use in that window."""
    window = b.s.drain_window_s
    deadline = time.monotonic() + window + 60
    u0: dict[str, Any] | None = None
    count0 = 0
    while time.monotonic() < deadline:
        _, first = await b.arrivals(name)
        if first is not None and u0 is None:
            u0, count0 = await b.usage_start(d), await b.count(name)
        if first is not None and time.time() > first + window + 0.3:
            break
        await asyncio.sleep(0.25)
    cpu = {}
    if u0 is not None:
        cpu = await b.usage(d, u0, await b.count(name) - count0)
    st = await b.stats(name, window_s=window)
    return st.get("window_count", 0) / window, {**st, **cpu}


async def backlog(b: Bench) -> None:
    """Figure 7. The drain is measured once per run, in the daemon that published the
    backlog and then in daemons restarted on the same database. Its reference is the
    empty-queue rate measured right before and right after each window (figure 3's
    setup, a fresh daemon and database), as A and A' bracket figure 3: the machine's
    speed moves by a third within a minute."""
    n, name = b.s.backlog, "backlog"
    db = b.tmp / f"backlog{b.impl.suffix}" / "webhookd.db"
    d = Daemon(b, "backlog", db=db)
    await d.start()
    delivered_total = 0
    try:
        await d.endpoint(f"{b.recv}/hook/{name}", ["bench.event"], WORKERS)
        deliver_at, published = await publish_backlog(b, d, name, db)
        refs: list[float | None] = [None]
        if deliver_at - time.time() - 1.0 > b.reference_s():
            refs[0] = await sustained(b, 0, key="7.empty")
        else:
            log("  7  no time for the empty-queue reference before the backlog is due")
        await asyncio.sleep(max(0.0, deliver_at - time.time() - 1.0))
        b.samples.add("7.rss_idle", d.rss_kb() / 1024, published)  # all pending, idle
        for run in range(b.s.runs):
            if run > 0:
                await b.forget(name)
                d = Daemon(b, f"backlog-{run}", db=db)
                await d.start()
                b.samples.add("7.restart_ready_s", d.ready_s)
            pending = n - delivered_total
            d.rss_max_kb = 0
            await asyncio.sleep(max(0.0, deliver_at - time.time()))
            rate, st = await drain_window(b, d, name)
            r_mem = await d.stop()
            delivered_total += st["count"]
            b.samples.add("7.drain", rate, {**st, **r_mem, "pending_at_start": pending})
            b.samples.add("7.rss_drain", r_mem.get("rss_max_mb"))
            if "daemon_us_per_delivery" in st:
                b.samples.add("cpu.7.drain.daemon", st["daemon_us_per_delivery"])
            log(
                f"  7  drain run {run + 1}: {rate:,.0f} deliveries/s over the first "
                f"{b.s.drain_window_s:.0f} s, {pending:,} pending, RSS max "
                f"{r_mem.get('rss_max_mb', 0):.0f} MB; "
                + describe_usage(st if "daemon_cpu" in st else {})
            )
            refs.append(await sustained(b, run + 1, key="7.empty"))
            around = [x for x in refs[-2:] if x]
            if around:
                ratio = rate / statistics.mean(around)
                b.samples.add("7.drain.x_empty", ratio)
                log(f"  7  drain run {run + 1}: {ratio:.2f} x the empty queue around it")
    finally:
        await d.stop()
        await b.forget(name)
