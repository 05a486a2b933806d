"""Fan-out at scale: the dispatcher's work per wake-up follows the endpoints with something
to do, not all endpoints; and limits.max_endpoints_per_tenant caps each tenant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, new_event, wait_until
from webhookd import http1, signing
from webhookd.config import DeliveryConfig
from webhookd.dispatcher import Dispatcher
from webhookd.netguard import AddressPolicy, GuardedResolver
from webhookd.store.models import Endpoint, NewEvent
from webhookd.store.sqlite import SQLiteStore
from webhookd.timefmt import now_ms

IDLE_ENDPOINTS = 3000


async def make_endpoints(store: SQLiteStore, url: str, n: int, **fields: Any) -> list[Endpoint]:
    """`n` endpoints at once: their inserts share the writer's transactions."""
    return list(
        await asyncio.gather(
            *(
                store.create_endpoint(
                    {"url": f"{url}/{i}", "secret": signing.generate_secret(), **fields}
                )
                for i in range(n)
            )
        )
    )


@pytest.fixture
async def started(
    store: SQLiteStore, receiver: Receiver
) -> AsyncIterator[tuple[Dispatcher, list[Endpoint]]]:
    """A running dispatcher over IDLE_ENDPOINTS endpoints with nothing pending."""
    endpoints = await make_endpoints(store, receiver.url, IDLE_ENDPOINTS)
    client = http1.Client(GuardedResolver(AddressPolicy(["127.0.0.0/8"])))
    d = Dispatcher(store, client, DeliveryConfig(workers=8, retry_schedule_s=(0.05,), jitter=0))
    await d.start()
    # Its first wake-up files every endpoint once (each offers its room to publishing).
    await wait_until(lambda: d.stats.state_visits >= IDLE_ENDPOINTS, 10, "the first filing")
    try:
        yield d, endpoints
    finally:
        await d.stop(1.0)
        await client.close()


def only_to(ep: Endpoint, **kw: Any) -> NewEvent:
    ev = new_event(**kw)
    ev.only_endpoint = ep.id
    return ev


async def publish(d: Dispatcher, store: SQLiteStore, events: list[NewEvent]) -> None:
    # The store tells the dispatcher (its subscriber) what became due once committed.
    await store.publish(events)


def visits_per_wakeup(d: Dispatcher, before: tuple[int, int]) -> float:
    wakeups = d.stats.wakeups - before[1]
    assert wakeups > 0
    return (d.stats.state_visits - before[0]) / wakeups


async def test_work_per_wakeup_does_not_grow_with_idle_endpoints(
    store: SQLiteStore, receiver: Receiver, started: tuple[Dispatcher, list[Endpoint]]
) -> None:
    d, endpoints = started
    busy, later, retried = endpoints[7], endpoints[1234], endpoints[2500]
    failed: list[str] = []

    def fail_once(request: web.Request, body: bytes) -> web.Response:
        if request.path.endswith("/2500") and not failed:
            failed.append(request.path)
            return web.Response(status=500)
        return web.Response(status=200)

    receiver.responder = fail_once
    before = (d.stats.state_visits, d.stats.wakeups)
    # One endpoint busy (more than its limit, so some go through claims), one with a
    # delivery due in 300 ms (through the heap of future work), one answering 500 once
    # and retried 50 ms later.
    published_at = time.monotonic()
    await publish(
        d,
        store,
        [only_to(busy, n=i) for i in range(25)]
        + [only_to(later, deliver_at=now_ms() + 300), only_to(retried)],
    )
    await wait_until(lambda: d.stats.delivered == 27, 10, "27 deliveries")
    assert len(receiver.received) == 28
    assert {r.path.rsplit("/", 1)[1] for r in receiver.received} == {"7", "1234", "2500"}
    [late] = [r for r in receiver.received if r.path.endswith("/1234")]
    assert late.at - published_at >= 0.29
    # Every wake-up looked at a handful of endpoints, never at the idle thousands.
    per_wakeup = visits_per_wakeup(d, before)
    assert per_wakeup <= 10, per_wakeup
    assert d.stats.state_visits - before[0] < IDLE_ENDPOINTS // 10


async def test_due_endpoints_beyond_the_free_workers_are_all_served(
    store: SQLiteStore, receiver: Receiver, started: tuple[Dispatcher, list[Endpoint]]
) -> None:
    # One event to every endpoint: thousands due at once for 8 workers. Each wake-up takes
    # as many due endpoints as it has free workers, in turn, so all are served.
    d, _ = started
    before = (d.stats.state_visits, d.stats.wakeups)
    await publish(d, store, [new_event()])
    await wait_until(lambda: d.stats.delivered == IDLE_ENDPOINTS, 60, "one delivery each")
    paths = [r.path for r in receiver.received]
    assert len(paths) == len(set(paths)) == IDLE_ENDPOINTS
    # Filing each endpoint when it comes due, when its claim returns and when its request
    # ends: a few visits per delivery, not one per endpoint per wake-up.
    assert d.stats.state_visits - before[0] < 8 * IDLE_ENDPOINTS
    assert visits_per_wakeup(d, before) < IDLE_ENDPOINTS / 20


async def test_a_rate_limited_endpoint_among_idle_ones_keeps_its_pace(
    store: SQLiteStore, receiver: Receiver, started: tuple[Dispatcher, list[Endpoint]]
) -> None:
    d, _ = started
    [limited] = await make_endpoints(store, receiver.url + "/limited", 1, rate_limit_per_s=20)
    before = (d.stats.state_visits, d.stats.wakeups)
    await publish(d, store, [only_to(limited, n=i) for i in range(5)])
    await receiver.wait_for(5)
    times = sorted(r.at for r in receiver.received)
    # 20 per second: the fifth no sooner than 4 intervals (0.2 s) after the first.
    assert times[-1] - times[0] >= 0.19, times
    assert visits_per_wakeup(d, before) <= 10


async def test_deleting_an_endpoint_forgets_it(
    store: SQLiteStore, receiver: Receiver, started: tuple[Dispatcher, list[Endpoint]]
) -> None:
    d, endpoints = started
    gone = endpoints[99]
    await store.delete_endpoint(gone.id)  # the store tells the dispatcher once committed
    assert gone.id not in d._states
    # A publish to every endpoint still reaches all the others.
    await publish(d, store, [new_event()])
    await wait_until(lambda: d.stats.delivered == IDLE_ENDPOINTS - 1, 60, "the others")
    assert not any(r.path.endswith("/99") for r in receiver.received)


# --- limits.max_endpoints_per_tenant, end to end ----------------------------------------


async def test_tenant_endpoint_cap(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon({"limits": {"max_endpoints_per_tenant": 2}})

    async def create(tenant: str | None) -> Any:
        return await d.post("/v1/endpoints", {"url": receiver.url, "tenant": tenant})

    a1, a2 = [(await create("acme")).json for _ in range(2)]
    assert a1["tenant"] == a2["tenant"] == "acme"
    refused = await create("acme")
    assert refused.status == 422, refused
    assert refused.json["error"] == "validation_error"
    assert "limits.max_endpoints_per_tenant" in refused.json["message"]
    assert refused.json["detail"][0]["loc"] == ["body", "tenant"]
    # Another tenant is unaffected; no tenant counts as a tenant of its own.
    other = await create("globex")
    assert other.status == 201
    assert (await create(None)).status == 201
    assert (await create(None)).status == 201
    assert (await create(None)).status == 422
    # Moving an endpoint into a full tenant is refused too.
    moved = await d.patch(f"/v1/endpoints/{other.json['id']}", {"tenant": "acme"})
    assert moved.status == 422 and "max_endpoints_per_tenant" in moved.json["message"]
    # Deleting one frees its place.
    assert (await d.delete(f"/v1/endpoints/{a1['id']}")).status == 204
    assert (await create("acme")).status == 201
    assert (await create("acme")).status == 422
    r = await d.get("/v1/endpoints?tenant=acme")
    assert len(r.json["data"]) == 2


async def test_concurrent_creates_do_not_pass_the_cap(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon({"limits": {"max_endpoints_per_tenant": 3}})
    answers = await asyncio.gather(
        *(d.post("/v1/endpoints", {"url": receiver.url, "tenant": "t"}) for _ in range(8))
    )
    assert sorted(a.status for a in answers) == [201] * 3 + [422] * 5
    assert len((await d.get("/v1/endpoints?tenant=t")).json["data"]) == 3
