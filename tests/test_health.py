"""Endpoint health: 410 / `webhook-delivery: disable` disable at once, long failure
disables, disabled endpoints skip, re-enabling and recover bring deliveries back."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until

MakeDaemon = Callable[..., Awaitable[Daemon]]


async def endpoint_state(daemon: Daemon, endpoint_id: str) -> dict[str, Any]:
    r = await daemon.get(f"/v1/endpoints/{endpoint_id}")
    assert r.status == 200, r
    return r.json  # type: ignore[no-any-return]


async def wait_disabled(daemon: Daemon, endpoint_id: str, timeout: float = 10) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        ep = await endpoint_state(daemon, endpoint_id)
        return ep if not ep["active"] else None

    return await wait_until(check, timeout, f"{endpoint_id} to be disabled")  # type: ignore[no-any-return]


async def deliveries_of(daemon: Daemon, endpoint_id: str) -> list[dict[str, Any]]:
    r = await daemon.get(f"/v1/deliveries?endpoint_id={endpoint_id}&limit=250")
    return r.json["data"]  # type: ignore[no-any-return]


async def test_410_gone_disables_the_endpoint_at_once(daemon: Daemon, receiver: Receiver) -> None:
    release = asyncio.Event()

    async def answer(request: web.Request, body: bytes) -> web.Response:
        await release.wait()
        return web.Response(status=410, text="gone")

    receiver.responder = answer
    ep = await daemon.endpoint(receiver.url, max_in_flight=1)
    first = await daemon.publish("call.completed", {"n": 0})
    await receiver.wait_for(1)
    # Queued behind the open request; they must not be attempted once it says 410.
    for i in range(3):
        await daemon.publish("call.completed", {"n": i + 1})
    release.set()
    disabled = await wait_disabled(daemon, ep["id"])
    assert disabled["disabled_reason"] == "gone"
    r = await daemon.get(f"/v1/deliveries?event_id={first['id']}")
    full = await daemon.wait_status(r.json["data"][0]["id"], "skipped")
    assert [a["status_code"] for a in full["attempts"]] == [410]
    assert full["next_attempt_at"] is None
    assert sorted(d["status"] for d in await deliveries_of(daemon, ep["id"])) == ["skipped"] * 4
    assert len(receiver.received) == 1
    # Published while disabled: skipped at once, still listed.
    late = await daemon.publish("call.completed", {"n": 9})
    assert late["deliveries"] == 1
    r = await daemon.get(f"/v1/deliveries?event_id={late['id']}")
    assert r.json["data"][0]["status"] == "skipped"
    assert r.json["data"][0]["next_attempt_at"] is None


@pytest.mark.parametrize("status", [200, 500])
async def test_webhook_delivery_disable_header_disables(
    daemon: Daemon, receiver: Receiver, status: int
) -> None:
    receiver.responder = lambda request, body: web.Response(
        status=status, headers={"Webhook-Delivery": "Disable"}
    )
    ep = await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    disabled = await wait_disabled(daemon, ep["id"])
    assert disabled["disabled_reason"] == "gone"
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    # A 2xx still counts as delivered; the endpoint gets nothing more.
    await daemon.wait_status(r.json["data"][0]["id"], "delivered" if status == 200 else "skipped")


async def test_endpoint_failing_for_disable_after_s_is_disabled(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon({"delivery": {"disable_after_s": 1, "retry_schedule_s": [0.3] * 12}})
    receiver.default = 500
    ep = await daemon.endpoint(receiver.url)
    other = await daemon.endpoint(receiver.url + "?healthy", events=["invoice.paid"])
    ev = await daemon.publish()
    disabled = await wait_disabled(daemon, ep["id"])
    assert disabled["disabled_reason"] == "failing"
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    full = await daemon.wait_status(r.json["data"][0]["id"], "skipped")
    # Disabled after about a second of failures, long before the 12 retries ran out.
    assert 3 <= full["attempt_count"] < 12, full["attempt_count"]
    stats = await daemon.get(f"/v1/endpoints/{ep['id']}/stats")
    assert stats.json["failing_since"] is not None
    assert (await endpoint_state(daemon, other["id"]))["active"] is True

    # Re-enabling clears the reason; deliveries go out again.
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"active": True})
    assert r.status == 200, r
    assert (r.json["active"], r.json["disabled_reason"]) == (True, None)
    receiver.default = 200
    before = len(receiver.received)
    await daemon.publish()
    await receiver.wait_for(before + 1)
    # Skipped deliveries stay skipped until recovered.
    assert (await daemon.delivery_status(full["id"])) == "skipped"


async def test_reenabled_endpoint_gets_a_fresh_failure_window(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon({"delivery": {"disable_after_s": 1, "retry_schedule_s": [0.3] * 12}})
    receiver.default = 500
    ep = await daemon.endpoint(receiver.url)
    await daemon.publish()
    await wait_disabled(daemon, ep["id"])
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"active": True})
    assert r.status == 200, r
    # One more failure right after re-enabling is a new failure, not 1 s of failing.
    receiver.statuses = [500]
    receiver.default = 200
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    delivery_id = r.json["data"][0]["id"]

    async def settled() -> dict[str, Any] | None:
        full = (await daemon.get(f"/v1/deliveries/{delivery_id}")).json
        return full if full["status"] in ("delivered", "skipped") else None

    full = await wait_until(settled, 10, "the delivery to settle")
    assert full["status"] == "delivered", full
    assert [a["status_code"] for a in full["attempts"]] == [500, 200]
    assert (await endpoint_state(daemon, ep["id"]))["active"] is True


async def test_disabled_endpoint_deliveries_come_back_with_recover(
    daemon: Daemon, receiver: Receiver
) -> None:
    since = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    receiver.statuses = [410]
    ep = await daemon.endpoint(receiver.url)
    first = await daemon.publish("call.completed", {"n": 1})
    await wait_disabled(daemon, ep["id"])
    second = await daemon.publish("call.completed", {"n": 2})
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"active": True})
    assert r.json["disabled_reason"] is None
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/recover", {"since": since})
    assert r.status == 202, r
    assert r.json == {"requeued": 2}
    reqs = await receiver.wait_for(3)
    assert sorted(x.headers["webhook-id"] for x in reqs[1:]) == sorted([first["id"], second["id"]])
    for ev in (first, second):
        r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
        await daemon.wait_status(r.json["data"][0]["id"], "delivered")


async def test_deactivating_by_patch_skips_pending_and_keeps_no_reason(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon({"delivery": {"retry_schedule_s": [30]}})
    receiver.default = 500
    ep = await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    delivery_id = r.json["data"][0]["id"]

    async def retry_scheduled() -> bool:
        r = await daemon.get(f"/v1/deliveries/{delivery_id}")
        return r.json["status"] == "pending" and r.json["attempt_count"] == 1  # type: ignore[no-any-return]

    await wait_until(retry_scheduled, what="the first attempt to be recorded")
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"active": False})
    assert (r.json["active"], r.json["disabled_reason"]) == (False, None)
    await daemon.wait_status(delivery_id, "skipped")


async def test_attempt_open_while_the_endpoint_is_disabled_ends_skipped(
    daemon: Daemon, receiver: Receiver
) -> None:
    second_open = asyncio.Event()
    release = asyncio.Event()

    async def answer(request: web.Request, body: bytes) -> web.Response:
        if b'"n":1' in body:
            second_open.set()
            await release.wait()
            return web.Response(status=500)
        await second_open.wait()
        return web.Response(status=410)

    receiver.responder = answer
    ep = await daemon.endpoint(receiver.url, max_in_flight=2)
    await daemon.publish("call.completed", {"n": 0})
    slow = await daemon.publish("call.completed", {"n": 1})
    await wait_disabled(daemon, ep["id"])
    release.set()
    r = await daemon.get(f"/v1/deliveries?event_id={slow['id']}")
    # Not rescheduled for an endpoint that no longer receives anything.
    full = await daemon.wait_status(r.json["data"][0]["id"], "skipped")
    assert [a["status_code"] for a in full["attempts"]] == [500]
    assert (await endpoint_state(daemon, ep["id"]))["disabled_reason"] == "gone"
