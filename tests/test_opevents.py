"""Operational events: webhookd.endpoint.disabled, webhookd.delivery.failed and
webhookd.delivery.recovered reach the subscribed endpoints of the same tenant, signed and
retried like any other event; `*` does not include them; they never loop.

Absence is checked behind a barrier: operational events are published in the order
their outcomes happened, so once a later one has arrived, an earlier one would have too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import Daemon, Receiver, wait_until

MakeReceiver = Callable[..., Awaitable[Receiver]]
MakeDaemon = Callable[..., Awaitable[Daemon]]
_barriers = itertools.count()


@pytest.fixture
async def daemon(make_daemon: MakeDaemon) -> Daemon:
    """Two retries as usual, after 50 and 100 ms instead of 0.2 and 0.4 s."""
    return await make_daemon({"delivery": {"retry_schedule_s": [0.05, 0.1]}})


def op_events(recv: Receiver, event_type: str | None = None) -> list[dict[str, Any]]:
    """Distinct operational events a receiver got (retries counted once)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in recv.received:
        doc = json.loads(r.body)
        if doc["type"].startswith("webhookd.") and (event_type in (None, doc["type"])):
            seen.setdefault(doc["id"], doc)
    return list(seen.values())


async def wait_op(recv: Receiver, event_type: str, count: int = 1) -> list[dict[str, Any]]:
    return await wait_until(  # type: ignore[no-any-return]
        lambda: len(op_events(recv, event_type)) >= count and op_events(recv, event_type),
        10,
        f"{count} {event_type} at {recv.url}",
    )


async def barrier(daemon: Daemon, make_receiver: MakeReceiver) -> None:
    """Raise a fresh operational event in a tenant of its own and wait for it."""
    tenant = f"barrier-{next(_barriers)}"
    ops = await make_receiver()
    gone = await make_receiver(default=410)
    await daemon.endpoint(ops.url, tenant=tenant, events=["webhookd.endpoint.disabled"])
    await daemon.endpoint(gone.url, tenant=tenant, events=["invoice.paid"])
    await daemon.publish("invoice.paid", {}, tenant=tenant)
    await wait_op(ops, "webhookd.endpoint.disabled")


async def listed_events(daemon: Daemon, event_type: str) -> list[dict[str, Any]]:
    r = await daemon.get(f"/v1/events?type={event_type}&limit=250")
    assert r.status == 200, r
    return r.json["data"]  # type: ignore[no-any-return]


async def test_delivery_failed_reaches_subscribed_endpoints_of_the_tenant_only(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    ops = await make_receiver(statuses=[503])  # the op event itself is retried once
    catch_all = await make_receiver()
    other_tenant = await make_receiver()
    no_tenant = await make_receiver()
    failing = await make_receiver(default=500)
    ops_ep = await daemon.endpoint(ops.url, tenant="acme", events=["webhookd.*"])
    catch_all_ep = await daemon.endpoint(catch_all.url, tenant="acme")
    await daemon.endpoint(other_tenant.url, tenant="globex", events=["webhookd.*"])
    await daemon.endpoint(no_tenant.url, events=["webhookd.delivery.failed"])
    bad = await daemon.endpoint(failing.url, tenant="acme", events=["invoice.paid"])

    ev = await daemon.publish("invoice.paid", {"amount": 5}, tenant="acme")
    [op] = await wait_op(ops, "webhookd.delivery.failed")
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}&endpoint_id={bad['id']}")
    failed = r.json["data"][0]
    assert op["tenant"] == "acme"
    assert op["data"] == {
        "delivery_id": failed["id"],
        "event_id": ev["id"],
        "event_type": "invoice.paid",
        "endpoint_id": bad["id"],
        "attempt_count": 3,
        "last_status_code": 500,
        "last_error_kind": None,
    }
    # Signed with the recipient's secret, and retried after the 503 like any event.
    await wait_until(
        lambda: len([x for x in ops.received if x.headers["webhook-id"] == op["id"]]) >= 2
    )
    reqs = [x for x in ops.received if x.headers["webhook-id"] == op["id"]]
    for req in reqs:
        Webhook(ops_ep["secret"]).verify(req.body, req.headers)
    r = await daemon.get(f"/v1/deliveries?event_id={op['id']}")
    [op_delivery] = r.json["data"]
    assert op_delivery["endpoint_id"] == ops_ep["id"]
    done = await daemon.wait_status(op_delivery["id"], "delivered")
    assert [a["status_code"] for a in done["attempts"]] == [503, 200]

    # Nobody else got it: not `*`, not another tenant, not the null tenant.
    listed = await listed_events(daemon, "webhookd.delivery.failed")
    assert [e["id"] for e in listed] == [op["id"]]
    r = await daemon.get(f"/v1/deliveries?endpoint_id={catch_all_ep['id']}")
    assert [d["event_type"] for d in r.json["data"]] == ["invoice.paid"]
    assert op_events(catch_all) == op_events(other_tenant) == op_events(no_tenant) == []


async def test_delivery_recovered_after_failures_but_not_after_a_format_fallback(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    ops = await make_receiver()
    await daemon.endpoint(ops.url, events=["webhookd.delivery.recovered"])

    def only_multipart(request: web.Request, body: bytes) -> web.Response:
        return web.Response(status=200 if request.content_type == "multipart/form-data" else 415)

    picky = await make_receiver(responder=only_multipart)
    await daemon.endpoint(picky.url, events=["call.started"], format=["form", "multipart"])
    hop = await daemon.publish("call.started", {"n": 1})
    r = await daemon.get(f"/v1/deliveries?event_id={hop['id']}")
    hopped = await daemon.wait_status(r.json["data"][0]["id"], "delivered")
    assert hopped["attempt_count"] == 2

    flaky = await make_receiver(statuses=[500, 502])
    flaky_ep = await daemon.endpoint(flaky.url, events=["invoice.paid"])
    ev = await daemon.publish("invoice.paid", {"n": 2})
    [op] = await wait_op(ops, "webhookd.delivery.recovered")
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    assert op["data"] == {
        "delivery_id": r.json["data"][0]["id"],
        "event_id": ev["id"],
        "event_type": "invoice.paid",
        "endpoint_id": flaky_ep["id"],
        "attempt_count": 3,
    }
    await barrier(daemon, make_receiver)
    # Only the real recovery was announced, not the form -> multipart hop.
    assert [e["data"]["event_id"] for e in op_events(ops)] == [ev["id"]]


async def test_endpoint_disabled_is_announced_once_to_the_tenant(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    ops = await make_receiver()
    await daemon.endpoint(ops.url, tenant="acme", events=["webhookd.endpoint.*"])
    # Three requests open at once all get the 410: one announcement, not three.
    open_now: list[int] = [0]
    all_open = asyncio.Event()

    async def gone_together(request: web.Request, body: bytes) -> web.Response:
        open_now[0] += 1
        if open_now[0] >= 3:
            all_open.set()
        await all_open.wait()
        return web.Response(status=410)

    gone = await make_receiver(responder=gone_together)
    gone_ep = await daemon.endpoint(
        gone.url,
        tenant="acme",
        max_in_flight=3,
        events=["call.completed", "webhookd.endpoint.disabled"],
    )
    for i in range(3):
        await daemon.publish("call.completed", {"n": i}, tenant="acme")
    [op] = await wait_op(ops, "webhookd.endpoint.disabled")
    assert op["tenant"] == "acme"
    assert op["data"] == {
        "endpoint_id": gone_ep["id"],
        "url": gone.url,
        "reason": "gone",
        "tenant": "acme",
    }
    await barrier(daemon, make_receiver)
    assert len(op_events(ops)) == 1
    # The disabled endpoint subscribed to its own notice: its copy is skipped, not sent.
    listed = await listed_events(daemon, "webhookd.endpoint.disabled")
    acme = [e for e in listed if e["tenant"] == "acme"]
    # One event for the occurrence, fanned out to both subscribers of the tenant.
    assert len(acme) == 1
    full = (await daemon.get(f"/v1/events/{acme[0]['id']}")).json
    assert len(full["deliveries"]) == 2
    r = await daemon.get(
        f"/v1/deliveries?endpoint_id={gone_ep['id']}&event_type=webhookd.endpoint.disabled"
    )
    assert [d["status"] for d in r.json["data"]] == ["skipped"]
    assert op_events(gone) == []


async def test_failing_endpoint_disable_is_announced(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    daemon = await make_daemon(
        {"delivery": {"disable_after_s": 0.2, "retry_schedule_s": [0.05] * 20}}
    )
    ops = await make_receiver()
    await daemon.endpoint(ops.url, events=["webhookd.*"])
    failing = await make_receiver(default=500)
    ep = await daemon.endpoint(failing.url, events=["invoice.paid"])
    await daemon.publish("invoice.paid", {})
    [op] = await wait_op(ops, "webhookd.endpoint.disabled")
    assert op["data"]["reason"] == "failing"
    assert op["data"]["endpoint_id"] == ep["id"]
    # Disabled, not exhausted: the delivery is skipped, so no delivery.failed.
    await barrier(daemon, make_receiver)
    assert [e["type"] for e in op_events(ops)] == ["webhookd.endpoint.disabled"]


async def test_operational_deliveries_never_raise_operational_events(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    # The operations endpoint of this tenant is itself down.
    ops_down = await make_receiver(default=500)
    ops_ep = await daemon.endpoint(ops_down.url, tenant="loop", events=["webhookd.*"])
    failing = await make_receiver(default=500)
    await daemon.endpoint(failing.url, tenant="loop", events=["invoice.paid"])
    await daemon.publish("invoice.paid", {}, tenant="loop")
    [op] = await wait_op(ops_down, "webhookd.delivery.failed")
    r = await daemon.get(f"/v1/deliveries?event_id={op['id']}")
    await daemon.wait_status(r.json["data"][0]["id"], "failed")
    await barrier(daemon, make_receiver)
    listed = await listed_events(daemon, "webhookd.delivery.failed")
    assert [e["id"] for e in listed if e["tenant"] == "loop"] == [op["id"]]
    r = await daemon.get(f"/v1/deliveries?endpoint_id={ops_ep['id']}")
    assert len(r.json["data"]) == 1


async def test_operational_events_raised_during_shutdown_are_kept(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    daemon = await make_daemon({"delivery": {"retry_schedule_s": [0.05]}})
    ops = await make_receiver()
    await daemon.endpoint(ops.url, events=["webhookd.delivery.failed"])
    release = asyncio.Event()

    async def fail_slowly(request: web.Request, body: bytes) -> web.Response:
        if len(failing.received) >= 2:
            await release.wait()  # the last attempt is still open when SIGTERM comes
        return web.Response(status=500)

    failing = await make_receiver(responder=fail_slowly)
    await daemon.endpoint(failing.url, events=["invoice.paid"])
    ev = await daemon.publish("invoice.paid", {})
    await failing.wait_for(2)
    daemon.signal(signal.SIGTERM)
    await wait_until(lambda: "stopping" in daemon.log_text(True), what="the stop to begin")
    release.set()
    assert await daemon.wait_exit() == 0
    assert op_events(ops) == []
    # The event raised by that last outcome was stored before the store closed.
    await daemon.start()
    [op] = await wait_op(ops, "webhookd.delivery.failed")
    assert op["data"]["event_id"] == ev["id"]
    assert op["data"]["attempt_count"] == 2
