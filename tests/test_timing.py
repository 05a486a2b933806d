"""When attempts happen: delay_s, deliver_at, rate limits, max_in_flight, ordered
delivery, and one dead endpoint not slowing the others. Bounds are generous: the machine
is shared."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until
from webhookd.timefmt import parse_rfc3339

MakeReceiver = Callable[..., Awaitable[Receiver]]
MakeDaemon = Callable[..., Awaitable[Daemon]]


@dataclass
class Concurrency:
    """A slow responder that counts the requests open at once."""

    hold_s: float
    open: int = 0
    peak: int = 0

    async def __call__(self, request: web.Request, body: bytes) -> web.Response:
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await asyncio.sleep(self.hold_s)  # the receiver's own slowness
        finally:
            self.open -= 1
        return web.Response(text="ok")


async def publish_batch(daemon: Daemon, n: int, event_type: str = "call.completed") -> list[str]:
    r = await daemon.post(
        "/v1/events/batch",
        {"events": [{"type": event_type, "payload": {"n": i}} for i in range(n)]},
    )
    assert r.status == 202, r
    return [e["id"] for e in r.json["data"]]


def rfc3339(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def first_attempt_after_ms(daemon: Daemon, event_id: str, endpoint_id: str) -> int:
    """Milliseconds from the event's creation to its delivery's first attempt, by the
    daemon's own clock."""
    r = await daemon.get(f"/v1/deliveries?event_id={event_id}&endpoint_id={endpoint_id}")
    [summary] = r.json["data"]
    full = await daemon.wait_status(summary["id"], "delivered")
    return parse_rfc3339(full["attempts"][0]["started_at"]) - parse_rfc3339(full["created_at"])


async def test_delay_s_holds_the_first_attempt(daemon: Daemon, make_receiver: MakeReceiver) -> None:
    held = await make_receiver()
    prompt = await make_receiver()
    ep = await daemon.endpoint(held.url, delay_s=0.6)
    assert ep["delay_s"] == 0.6
    await daemon.endpoint(prompt.url)
    ev = await daemon.publish()
    [quick] = await prompt.wait_for(1)
    [late] = await held.wait_for(1)
    assert quick.at < late.at
    assert late.headers["webhook-id"] == ev["id"]
    assert await first_attempt_after_ms(daemon, ev["id"], ep["id"]) >= 600


async def test_deliver_at_holds_the_first_attempt(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url)
    at = datetime.now(UTC) + timedelta(seconds=0.6)
    later = await daemon.publish("call.completed", {"n": 1}, deliver_at=rfc3339(at))
    now = await daemon.publish("call.completed", {"n": 2})
    reqs = await receiver.wait_for(2)
    assert [r.headers["webhook-id"] for r in reqs] == [now["id"], later["id"]]
    r = await daemon.get(f"/v1/deliveries?event_id={later['id']}")
    full = await daemon.wait_status(r.json["data"][0]["id"], "delivered")
    assert parse_rfc3339(full["attempts"][0]["started_at"]) >= parse_rfc3339(rfc3339(at))


async def test_rate_limit_spreads_attempts_evenly(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, rate_limit_per_s=10)
    await publish_batch(daemon, 20)
    reqs = await receiver.wait_for(20, timeout=20)
    at = [r.at for r in reqs]
    gaps = sorted(b - a for a, b in itertools.pairwise(at))
    span = at[-1] - at[0]
    # 19 gaps of ~100 ms: no burst at the start, no clumps later.
    assert span >= 1.6, span
    assert gaps[len(gaps) // 2] >= 0.08, gaps  # median
    assert gaps[1] >= 0.04, gaps  # at most one gap squeezed by scheduling noise
    for i in range(len(at)):
        in_window = [t for t in at if at[i] <= t < at[i] + 0.5]
        assert len(in_window) <= 7, (i, gaps)


async def test_max_in_flight_per_endpoint_is_respected(daemon: Daemon, receiver: Receiver) -> None:
    slow = Concurrency(hold_s=0.1)
    receiver.responder = slow
    await daemon.endpoint(receiver.url, max_in_flight=3)
    await publish_batch(daemon, 12)
    await receiver.wait_for(12, timeout=20)
    await wait_until(lambda: slow.open == 0, 5, "the last requests to finish")
    assert slow.peak == 3


# Retries of the ordered tests come after 50 and 100 ms, not the usual 0.2 and 0.4 s.
QUICK_RETRIES = {"delivery": {"retry_schedule_s": [0.05, 0.1]}}


async def test_ordered_delivers_one_at_a_time_in_publish_order(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon(QUICK_RETRIES)
    slow = Concurrency(hold_s=0.05)
    tries: dict[str, int] = {}

    async def answer(request: web.Request, body: bytes) -> web.Response:
        event_id = request.headers["webhook-id"]
        tries[event_id] = tries.get(event_id, 0) + 1
        await slow(request, body)
        # The head fails twice, then succeeds; the rest succeed at once.
        if event_id == ids[0] and tries[event_id] <= 2:
            return web.Response(status=503)
        return web.Response(text="ok")

    receiver.responder = answer
    await daemon.endpoint(receiver.url, ordered=True)
    ids = await publish_batch(daemon, 6)
    await receiver.wait_for(8, timeout=20)
    assert receiver.event_ids() == [ids[0], ids[0], ids[0], *ids[1:]]
    assert slow.peak == 1


async def test_ordered_head_that_fails_for_good_releases_the_rest(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon(QUICK_RETRIES)

    async def answer(request: web.Request, body: bytes) -> web.Response:
        return web.Response(status=500 if request.headers["webhook-id"] == ids[0] else 200)

    receiver.responder = answer
    await daemon.endpoint(receiver.url, ordered=True)
    ids = await publish_batch(daemon, 4)
    # Two retries: the head is tried 3 times and fails, then the rest in order.
    await receiver.wait_for(6, timeout=20)
    assert receiver.event_ids() == [ids[0], ids[0], ids[0], *ids[1:]]
    r = await daemon.get(f"/v1/deliveries?event_id={ids[0]}")
    assert r.json["data"][0]["status"] == "failed"


async def test_a_dead_endpoint_does_not_slow_the_healthy_ones(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    daemon = await make_daemon(
        {"delivery": {"timeout_s": 2, "workers": 16, "max_in_flight_per_endpoint": 8}}
    )
    healthy = await make_receiver()
    await daemon.endpoint(healthy.url, events=["call.completed"])

    async def healthy_round(n: int) -> float:
        start = time.monotonic()
        before = len(healthy.received)
        ids = await publish_batch(daemon, n)
        await healthy.wait_for(before + n, timeout=10)
        assert set(healthy.event_ids()[before:]) == set(ids)
        return time.monotonic() - start

    alone = await healthy_round(20)

    # The dead endpoint never answers within timeout_s: every request holds a slot for 2 s.
    hung = Concurrency(hold_s=10)
    dead = await make_receiver(responder=hung)
    await daemon.endpoint(dead.url, events=["*"])  # it gets the healthy round's events too
    await publish_batch(daemon, 30, "invoice.paid")
    await dead.wait_for(8, timeout=10)  # it now holds all 8 of its slots

    with_dead = await healthy_round(20)
    assert hung.peak == 8  # its own max_in_flight, no more
    # Well below the dead endpoint's 2 s timeout, and close to the pace without it.
    assert with_dead < 1.5, (alone, with_dead)
    assert with_dead < alone + 1.0, (alone, with_dead)
