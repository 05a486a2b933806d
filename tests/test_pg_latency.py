"""Wake-ups across daemon processes on one PostgreSQL database: a publish on one daemon is
attempted within 100 ms (p99, idle cluster) by whichever daemon has a free worker, and a
retry one daemon scheduled is attempted on time by another (its notice, or the rescan a
daemon makes when it starts listening)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until

# The contract: a publish is attempted within 100 ms, p99, on an idle cluster.
P99_LIMIT_S = 0.100


async def start(tmp_path: Path, dsn: str, name: str, **config: Any) -> Daemon:
    (tmp_path / name).mkdir(exist_ok=True)
    return await Daemon(tmp_path / name, {"database": dsn, **config}).start()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def publish_and_time(
    d: Daemon, receiver: Receiver, n: int, event_type: str = "call.completed"
) -> float:
    """Publish one event on `d`; seconds from sending the publish to the receiver getting
    the first attempt."""
    seen = len(receiver.received)
    sent = time.monotonic()
    await d.publish(event_type, payload={"n": n})
    await receiver.wait_for(seen + 1)
    return receiver.received[seen].at - sent


async def test_a_publish_is_attempted_within_100_ms_whichever_daemon_receives_it(
    tmp_path: Path, pg_dsn: str, receiver: Receiver
) -> None:
    daemons = [await start(tmp_path, pg_dsn, name) for name in "ab"]
    try:
        await daemons[0].endpoint(receiver.url)
        await wait_until(lambda: daemons[1].get("/v1/endpoints"), 5, "b to answer")
        await publish_and_time(daemons[1], receiver, -1)  # b's view has the endpoint
        latencies = [await publish_and_time(daemons[i % 2], receiver, i) for i in range(200)]
        print(
            f"publish -> first attempt over two daemons: p50 "
            f"{sorted(latencies)[100] * 1000:.1f} ms, p99 {p99(latencies) * 1000:.1f} ms"
        )
        assert p99(latencies) < P99_LIMIT_S, sorted(latencies)[-5:]
    finally:
        for d in daemons:
            await d.close()


async def test_a_publish_on_a_daemon_without_a_free_worker_goes_to_another(
    tmp_path: Path, pg_dsn: str, make_receiver: Any
) -> None:
    release = asyncio.Event()

    async def hold(request: web.Request, body: bytes) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    slow: Receiver = await make_receiver(responder=hold)
    fast: Receiver = await make_receiver()
    # a has one worker, kept busy by a request the slow receiver holds; b has none busy.
    a = await start(tmp_path, pg_dsn, "a", delivery={"workers": 1, "max_in_flight_per_endpoint": 1})
    daemons = [a]
    try:
        await a.endpoint(slow.url, events=["call.completed"])
        await a.publish()
        await slow.wait_for(1)
        daemons.append(await start(tmp_path, pg_dsn, "b"))
        await a.endpoint(fast.url, events=["call.started"])
        latencies = [await publish_and_time(a, fast, i, "call.started") for i in range(30)]
        print(f"published on a busy daemon, attempted by the other: max {max(latencies):.3f} s")
        assert max(latencies) < P99_LIMIT_S * 2, latencies
        assert len(slow.received) == 1  # a's one worker is still busy
    finally:
        release.set()
        for d in daemons:
            await d.close()


async def attempts(d: Daemon) -> float:
    """The attempts this daemon made, from its /metrics."""
    text = (await d.get("/metrics")).body.decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("webhookd_attempts_total{")
    )


class FailFirst:
    """A responder that answers 500 to the first attempt of each event whose payload has
    "fail": true, and 200 to everything else."""

    def __init__(self) -> None:
        self.failed: set[str] = set()

    def __call__(self, request: web.Request, body: bytes) -> web.Response:
        event_id = request.headers["webhook-id"]
        if b'"fail":true' in body and event_id not in self.failed:
            self.failed.add(event_id)
            return web.Response(status=500)
        return web.Response(status=200)


RETRY_S = 1.5
RETRY_CONFIG = {"delivery": {"retry_schedule_s": [RETRY_S], "jitter": 0}}


async def fail_once(daemons: list[Daemon], receiver: Receiver) -> tuple[Daemon, str]:
    """Publish an event whose first attempt fails; once its retry is scheduled (a pending
    row, nothing held), SIGKILL the daemon that made the attempt. Returns it and the
    delivery's id."""
    seen = len(receiver.received)

    async def counted() -> list[float] | None:
        # Every attempt the receiver got so far is in the daemons' metrics.
        counts = [await attempts(d) for d in daemons]
        return counts if sum(counts) == seen else None

    before = await wait_until(counted, 5, "the earlier attempts to be counted")
    published = await daemons[0].publish(payload={"fail": True})
    await receiver.wait_for(seen + 1)
    event = (await daemons[0].get(f"/v1/events/{published['id']}")).json
    delivery_id = event["deliveries"][0]["id"]
    await daemons[0].wait_status(delivery_id, "pending")
    [made] = [d for d, n in zip(daemons, before, strict=True) if await attempts(d) > n]
    made.kill()
    return made, delivery_id


def lateness_s(receiver: Receiver) -> float:
    """How late the retry came, from the first attempt's arrival and the schedule."""
    first, retry = receiver.received[-2:]
    return retry.at - first.at - RETRY_S


async def test_a_retry_scheduled_by_one_daemon_is_attempted_on_time_by_another(
    tmp_path: Path, pg_dsn: str, make_receiver: Any
) -> None:
    receiver: Receiver = await make_receiver(responder=FailFirst())
    daemons = [await start(tmp_path, pg_dsn, name, **RETRY_CONFIG) for name in "ab"]
    try:
        await daemons[0].endpoint(receiver.url)
        # Both views have the endpoint once a publish on b fans out to it.
        await wait_until(lambda: _fans_out(daemons[1]), 5, "b to see the endpoint")
        await receiver.wait_for(1)
        made, delivery_id = await fail_once(daemons, receiver)
        [other] = [d for d in daemons if d is not made]
        await receiver.wait_for(3, timeout=RETRY_S + 5)
        late_s = lateness_s(receiver)
        print(f"a retry scheduled by one daemon, attempted by another: {late_s * 1000:+.0f} ms")
        # The attempt's outcome (and its due time) is written a few ms after it arrived.
        assert -0.01 < late_s < 0.5, late_s
        await other.wait_status(delivery_id, "delivered")
    finally:
        for d in daemons:
            await d.close()


async def test_a_daemon_started_later_attempts_a_retry_scheduled_before_on_time(
    tmp_path: Path, pg_dsn: str, make_receiver: Any
) -> None:
    receiver: Receiver = await make_receiver(responder=FailFirst())
    config = {"delivery": {"retry_schedule_s": [RETRY_S * 2], "jitter": 0}}
    a = await start(tmp_path, pg_dsn, "a", **config)
    daemons = [a]
    try:
        await a.endpoint(receiver.url)
        _, delivery_id = await fail_once(daemons, receiver)
        # b never heard the notice: what it reads when it starts brings the retry.
        daemons.append(b := await start(tmp_path, pg_dsn, "b", **config))
        await receiver.wait_for(2, timeout=RETRY_S * 2 + 5)
        first, retry = receiver.received
        late_s = retry.at - first.at - RETRY_S * 2
        print(f"a retry scheduled before this daemon started, attempted {late_s * 1000:+.0f} ms")
        assert -0.01 < late_s < 0.5, late_s
        await b.wait_status(delivery_id, "delivered")
    finally:
        for d in daemons:
            await d.close()


async def _fans_out(d: Daemon) -> bool:
    return bool((await d.publish(payload={"warm": True}))["deliveries"])


def test_a_publish_notice_names_its_endpoints_when_they_fit() -> None:
    from webhookd.store.postgres import wakeups

    # The other daemons need no query to learn what became due ...
    few = wakeups.published_notice("d1", [7, 3], [("ep_a", 5), ("ep_b", 9), ("ep_a", 4)])
    assert few == '{"from":"d1","due":[["ep_a",4],["ep_b",9]]}'
    # ... unless the events fan out to more endpoints than a notice holds.
    fan_out = [(f"ep_{i:026d}", 1_796_000_000_000) for i in range(300)]
    assert wakeups.published_notice("d1", [7, 3], fan_out) == '{"from":"d1","seq":[3,7]}'
