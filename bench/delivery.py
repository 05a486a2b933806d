"""The delivery figures and their baselines: A (a bare aiohttp client loop to the
receiver), W (wrk to the receiver: the receiver's own ceiling), 3 (deliveries published
ahead), 3P (deliveries of events published meanwhile, as users load the daemon) and 8
(a healthy endpoint next to a dead one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from typing import Any

import profiling
from core import Bench, describe_usage
from daemons import Daemon
from harness import WORKERS, log, proc_cpu_s


def delivery_headers() -> list[tuple[str, str]]:
    """Headers the size of a delivery's (besides Content-Type), for A and W."""
    return [
        ("User-Agent", "webhookd/0.0.0"),
        ("webhook-id", "evt_01KAQ8Z3D2W4M7V9X1B3C5E7G9"),
        ("webhook-timestamp", str(int(time.time()))),
        ("webhook-signature", "v1," + "A" * 43 + "="),
    ]


async def baseline_a(b: Bench, run: int, key: str = "A") -> None:
    name = f"base{key}-{run}"
    extra = ["--concurrency", str(WORKERS), "--expect", "200"]
    for h, value in delivery_headers():
        extra += ["--header", f"{h}: {value}"]
    assert b.receiver is not None
    rcpu0 = proc_cpu_s(b.receiver.pid) or 0.0
    r = await b.loadgen(f"{b.recv}/hook/{name}", "delivery", extra=extra)
    rcpu = (proc_cpu_s(b.receiver.pid) or 0.0) - rcpu0
    r["receiver_us_per_request"] = rcpu / max(r["answered"], 1) * 1e6
    b.samples.add(key, r["rate"], r)
    b.samples.add(f"cpu.{key}.client", r["cpu_us_per_request"])
    b.samples.add(f"cpu.{key}.receiver", r["receiver_us_per_request"])
    await b.forget(name)
    log(f"  {key}  baseline client->receiver: {r['rate']:,.0f} req/s ({r['loop']})")


async def sustained(
    b: Bench, run: int, *, events: int | None = None, profile_prefix: str = "", key: str = "3"
) -> float | None:
    """Figure 3: a fresh daemon delivers `events` published ahead to one endpoint; its
    steady rate. Also the backlog figure's empty-queue reference (`key` "7.empty")."""
    n = events or b.s.sustained_events
    tag, what = ("sustained", "sustained") if key == "3" else ("empty", "empty queue")
    d = Daemon(b, f"{tag}-{run}")
    await d.start()
    name = f"{tag}-{run}"
    try:
        await d.endpoint(f"{b.recv}/hook/{name}", ["bench.event"], WORKERS)
        est = b.estimate_publish_s(n)
        deliver_at = time.time() + 1.3 * est + 1.5
        pub_s = await b.prepublish(d, n, ["bench.event"], deliver_at, 60 + 4 * est)
        early = await b.count(name)
        rss_pending = d.rss_kb() / 1024
        profiler = None
        if profile_prefix:
            profiler = asyncio.create_task(profiling.profile(b, d, deliver_at, profile_prefix))
        st, cpu = await b.drain(d, name, n, deliver_at)
        if profiler is not None:
            await profiler
        await b.forget(name)
    finally:
        r_mem = await d.stop()
    if profile_prefix:
        return None
    detail = {**st, **cpu, **r_mem, "publish_s": pub_s, "early": early}
    detail["rss_pending_mb"] = rss_pending
    rate: float | None = st.get("steady_rate")
    b.samples.add(key, rate, detail)
    b.samples.add(f"cpu.{key}.daemon", cpu["daemon_us_per_delivery"])
    b.samples.add(f"cpu.{key}.receiver", cpu["receiver_us_per_request"])
    b.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
    log(f"  {key[0]}  {what}: {rate or 0:,.0f} deliveries/s ({describe_usage(cpu)}; {early} early)")
    return rate


async def isolation(b: Bench, run: int, with_dead: bool) -> None:
    key = "8.dead" if with_dead else "8.alone"
    n = b.s.isolation_events
    d = Daemon(
        b,
        f"iso-{'dead' if with_dead else 'alone'}-{run}",
        timeout_s=b.s.isolation_timeout_s,
    )
    await d.start()
    name = f"iso-{key}-{run}"
    healthy_slots, dead_slots = WORKERS * 3 // 4, WORKERS // 4
    dead_id = ""
    dead: dict[str, Any] = {}
    try:
        await d.endpoint(f"{b.recv}/hook/{name}", ["bench.a"], healthy_slots)
        if with_dead:
            dead_id = await d.endpoint(
                f"http://127.0.0.1:{b.dead_port}/hook", ["bench.b"], dead_slots
            )
        est = b.estimate_publish_s(2 * n)
        deliver_at = time.time() + 1.3 * est + 1.5
        await b.prepublish(d, 2 * n, ["bench.a", "bench.b"], deliver_at, 60 + 4 * est)
        st, cpu = await b.drain(d, name, n, deliver_at)
        await b.forget(name)
        if dead_id:
            dead = await d.api("GET", f"/v1/endpoints/{dead_id}/stats")
            dead["timeouts"] = await b.timeouts(d)
    finally:
        r_mem = await d.stop()
    b.samples.add(key, st.get("steady_rate"), {**st, **cpu, **r_mem, "dead": dead})
    b.samples.add(f"mem.{key}", r_mem.get("rss_max_mb"))
    b.samples.add(f"cpu.{key}.daemon", cpu["daemon_us_per_delivery"])
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


# wrk's script: the body from a file, the headers of a delivery, and one JSON line of
# totals at the end (wrk's own summary is text meant for people).
WRK_SCRIPT = """
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK {"requests": %%d, "duration_us": %%d, "socket_errors": %%d, "status_errors": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def wrk_script(b: Bench) -> str:
    headers = [("Content-Type", "application/json"), *delivery_headers()]
    lines = [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers]
    body = json.dumps(str(b.files["delivery"]))
    return WRK_SCRIPT % {"body": body, "headers": "\n".join(lines)}


async def run_wrk(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """Run wrk to completion (killed if it outlives `timeout_s`); its JSON totals."""
    p = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(p.communicate(), timeout_s)
    finally:
        if p.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
    text = out.decode(errors="replace")
    for line in reversed(text.splitlines()):
        if line.startswith("WRK "):
            result: dict[str, Any] = json.loads(line[4:])
            return result
    raise RuntimeError(f"wrk exited {p.returncode} without totals: {text[-1000:]}")


async def baseline_w(b: Bench, run: int) -> None:
    """Baseline W: wrk (C, one thread, 64 connections) posting a delivery's body and
    headers to the receiver. wrk's client costs little, so the receiver gets a core of
    its own: this is the rate the receiver itself can take."""
    wrk = shutil.which("wrk")
    if wrk is None:
        if run == 0:
            log("  W  wrk not found (apt-get install wrk): baseline W skipped")
        return
    script = b.tmp / "post.lua"
    script.write_text(wrk_script(b))
    name = f"baseW-{run}"
    duration_s = max(1, round(b.s.closed_s))
    assert b.receiver is not None
    rcpu0, t0 = proc_cpu_s(b.receiver.pid) or 0.0, time.perf_counter()
    argv = [wrk, "-t1", f"-c{WORKERS}", f"-d{duration_s}s", "-s", str(script)]
    r = await run_wrk([*argv, f"{b.recv}/hook/{name}"], duration_s + 30)
    wall = time.perf_counter() - t0
    rcpu = (proc_cpu_s(b.receiver.pid) or 0.0) - rcpu0
    arrived = await b.count(name)
    await b.forget(name)
    rate = r["requests"] / max(r["duration_us"] / 1e6, 1e-9)
    r.update(
        rate=rate,
        arrived=arrived,
        receiver_cpu=rcpu / wall,
        receiver_us_per_request=rcpu / max(arrived, 1) * 1e6,
    )
    if r["socket_errors"] or r["status_errors"]:
        log(f"  W  wrk: {r['socket_errors']} socket errors, {r['status_errors']} non-2xx")
    b.samples.add("W", rate, r)
    b.samples.add("cpu.W.receiver", r["receiver_us_per_request"])
    log(f"  W  baseline wrk->receiver: {rate:,.0f} req/s (receiver {rcpu / wall:.0%} CPU)")


async def published_meanwhile(b: Bench, run: int) -> None:
    """Figure 3P: closed-loop publishers send events (in small batches, or single with
    --batch-3p 1) to a fresh daemon while it delivers them to one endpoint; deliveries/s
    at the receiver within the load generator's measuring window, and the daemon's CPU
    per delivery, publishing included."""
    d = Daemon(b, f"pubdel-{run}")
    await d.start()
    name = f"pub3p-{run}"
    try:
        await d.endpoint(f"{b.recv}/hook/{name}", ["bench.event"], WORKERS)
        per_request = b.s.batch_3p
        path, body = (
            ("/v1/events", "single") if per_request == 1 else ("/v1/events/batch", "small_batch")
        )
        u0, c0 = await b.usage_start(d), await b.count(name)
        r = await b.loadgen(
            d.base + path,
            body,
            extra=["--concurrency", str(b.s.publishers_3p), "--expect", "202"],
        )
        r["rate"] *= per_request
        r["answered"] *= per_request
        t0, t1 = r["window_start_unix"], r["window_end_unix"]
        within = await b.arrived_between(name, t0, t1)
        c1 = await b.count(name)
        cpu = await b.usage(d, u0, c1 - c0)
        await b.forget(name)
    finally:
        r_mem = await d.stop()
    rate = within / max(t1 - t0, 1e-9)
    detail = {**cpu, **r_mem, "publish_rate": r["rate"], "behind_at_end": r["answered"] - c1}
    b.samples.add("3P", rate, detail)
    b.samples.add("3P.publish_rate", r["rate"])
    b.samples.add("cpu.3P.daemon", cpu["daemon_us_per_delivery"])
    b.samples.add("cpu.3P.receiver", cpu["receiver_us_per_request"])
    b.samples.add("mem.3P", r_mem.get("rss_max_mb"))
    log(
        f"  3P published meanwhile: {rate:,.0f} deliveries/s, {r['rate']:,.0f} publishes/s "
        f"({describe_usage(cpu)}; {detail['behind_at_end']} not yet delivered at the end)"
    )
