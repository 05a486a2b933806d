"""Pausing an endpoint (`paused`): its new and pending deliveries wait as `pending`,
unattempted and never skipped, until it is unpaused; then they go at its limits, in
publish order where it is ordered. End to end with real daemons and receivers on both
backends, the store's claim rule on both, and the claim statement of PostgreSQL across
daemons."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, new_event, wait_until
from tests.pg import BACKENDS
from webhookd.store.models import Claimed, Conflict
from webhookd.timefmt import now_ms

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]
EP = {"url": "https://example.com/h", "secret": "whsec_x"}


def rfc3339(at_s: float) -> str:
    return datetime.fromtimestamp(at_s, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def counts(d: Daemon, endpoint_id: str) -> dict[str, int]:
    stats = (await d.get(f"/v1/endpoints/{endpoint_id}/stats")).json
    return {k: v for k, v in stats["counts"].items() if v}


# --- end to end ---------------------------------------------------------------------------


@BOTH
async def test_a_paused_endpoint_holds_everything_until_resumed_then_delivers_in_order(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    ordered_rx, plain_rx, other_rx = [await make_receiver() for _ in range(3)]
    ordered = await d.endpoint(ordered_rx.url, ordered=True)
    plain = await d.endpoint(plain_rx.url)
    await d.endpoint(other_rx.url)
    # One delivery pending before the pause, due in two seconds...
    due_s = time.time() + 2
    first = await d.publish(payload={"n": 0}, deliver_at=rfc3339(due_s))
    for ep in (ordered, plain):
        r = await d.patch(f"/v1/endpoints/{ep['id']}", {"paused": True})
        assert r.status == 200 and r.json["paused"] is True, r
    assert time.time() < due_s, "paused only after the first delivery was due"
    # ...and new ones published while paused.
    published = [first["id"]] + [(await d.publish(payload={"n": n}))["id"] for n in (1, 2, 3)]

    # The endpoint that is not paused gets all four, the first once it is due...
    await wait_until(
        lambda: sorted(other_rx.event_ids()) == sorted(published), 15, "the other deliveries"
    )
    # ...while the paused ones got nothing: their deliveries wait, unattempted, none skipped.
    assert ordered_rx.received == [] and plain_rx.received == []
    for ep in (ordered, plain):
        mine = (await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")).json["data"]
        assert [(x["status"], x["attempt_count"]) for x in mine] == [("pending", 0)] * 4
        # A manual retry cannot be "now" while paused.
        r = await d.post(f"/v1/deliveries/{mine[0]['id']}/retry")
        assert r.status == 409 and "paused" in r.json["message"], r

    for ep in (ordered, plain):
        r = await d.patch(f"/v1/endpoints/{ep['id']}", {"paused": False})
        assert r.status == 200 and r.json["paused"] is False, r
    await ordered_rx.wait_for(4, timeout=15)
    await plain_rx.wait_for(4, timeout=15)
    assert ordered_rx.event_ids() == published  # publish order, the held one first
    assert sorted(plain_rx.event_ids()) == sorted(published)
    for ep in (ordered, plain):
        await wait_until(
            lambda ep=ep: _all_delivered(d, ep["id"], 4), 15, f"{ep['id']} all delivered"
        )


async def _all_delivered(d: Daemon, endpoint_id: str, n: int) -> bool:
    return await counts(d, endpoint_id) == {"delivered": n}


@BOTH
async def test_what_was_claimed_ahead_goes_back_to_pending_when_paused(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    gate = asyncio.Event()

    async def held(request: web.Request, body: bytes) -> web.Response:
        await gate.wait()
        return web.Response(text="ok")

    rx = await make_receiver(responder=held)
    ep = await d.endpoint(rx.url, max_in_flight=1)
    path = f"/v1/endpoints/{ep['id']}"
    for n in range(4):
        await d.publish(payload={"n": n})
    await rx.wait_for(1)  # one request open; on SQLite the other three claimed ahead
    if backend == "sqlite":
        await wait_until(
            lambda: _counts_are(d, ep["id"], {"delivering": 4}), 10, "three claimed ahead"
        )
    assert (await d.patch(path, {"paused": True})).status == 200
    # Given back unattempted (pending, not skipped); the open request goes on.
    await wait_until(
        lambda: _counts_are(d, ep["id"], {"delivering": 1, "pending": 3}), 10, "given back"
    )
    gate.set()
    await wait_until(
        lambda: _counts_are(d, ep["id"], {"delivered": 1, "pending": 3}), 10, "the open one"
    )
    assert len(rx.received) == 1
    assert (await d.patch(path, {"paused": False})).status == 200
    await rx.wait_for(4)
    await wait_until(lambda: _counts_are(d, ep["id"], {"delivered": 4}), 10, "all delivered")
    assert len(rx.received) == 4


async def _counts_are(d: Daemon, endpoint_id: str, expected: dict[str, int]) -> bool:
    return await counts(d, endpoint_id) == expected


async def test_paused_is_a_boolean_field_of_the_endpoint(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    assert ep["paused"] is False
    path = f"/v1/endpoints/{ep['id']}"
    for bad in ("yes", 1, None):
        r = await daemon.patch(path, {"paused": bad})
        assert r.status == 422, r
        assert r.json["detail"][0]["loc"] == ["body", "paused"]
    r = await daemon.patch(path, {"paused": True})
    assert r.status == 200 and r.json["paused"] is True and r.json["active"] is True
    assert (await daemon.get(path)).json["paused"] is True
    [listed] = (await daemon.get("/v1/endpoints")).json["data"]
    assert listed["paused"] is True
    made = await daemon.endpoint(receiver.url, paused=True)
    assert made["paused"] is True
    doc = (await daemon.get("/openapi.json")).json
    field = doc["components"]["schemas"]["Endpoint"]["properties"]["paused"]
    assert field["type"] == "boolean" and "skipped" in field["description"]


# --- the store ----------------------------------------------------------------------------


@BOTH
async def test_the_store_never_claims_a_paused_endpoints_deliveries(store: Any) -> None:
    plain = await store.create_endpoint(EP)
    ordered = await store.create_endpoint({**EP, "ordered": True})
    await store.publish([new_event(n) for n in range(3)])
    for ep in (plain, ordered):
        paused = await store.update_endpoint(ep.id, {"paused": True})
        assert paused.paused and store.endpoint(ep.id).paused
        assert (await store.get_endpoint(ep.id)).paused
    later = now_ms() + 1000
    wants = {plain.id: 10, ordered.id: 1}
    assert await store.claim(wants, later) == ([], {plain.id: None, ordered.id: None})
    page = await store.list_deliveries(endpoint_id=plain.id, cursor=None, limit=10)
    with pytest.raises(Conflict, match="paused"):
        await store.retry_delivery(page.data[0].id)

    await store.update_endpoint(plain.id, {"paused": False})
    claimed, _ = await store.claim(wants, later)
    assert sorted(c.endpoint_id for c in claimed) == [plain.id] * 3
    # What is given back is pending again, and claimed again.
    await store.release(claimed)
    again, _ = await store.claim(wants, later)
    assert len(again) == 3
    await store.update_endpoint(ordered.id, {"paused": False})
    head, _ = await store.claim({ordered.id: 1}, later)
    assert [c.event.payload_json for c in head] == [b'{"n":0}']  # the oldest


@pytest.mark.sqlite_only
async def test_a_paused_endpoints_fresh_deliveries_are_never_handed_over(store: Any) -> None:
    ep = await store.create_endpoint({**EP, "paused": True})
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ep.id: 5})  # an offer made before the pause was seen
    [result] = await store.publish([new_event()])
    assert received == [] and len(result.due) == 1


async def test_the_claim_statement_skips_paused_endpoints_whatever_a_daemon_thinks(
    pg_dsn: str,
) -> None:
    """The claim of claims.py, as any daemon runs it: its view plays no part."""
    from tests.pg_fleet import add_deliveries, add_endpoint, close_daemon, connect, open_daemon

    a, b = await open_daemon(pg_dsn), await open_daemon(pg_dsn)
    try:
        conn = await connect(pg_dsn)
        async with conn:
            await add_endpoint(conn, "ep_p")
            await add_endpoint(conn, "ep_o", ordered=True)
            await add_endpoint(conn, "ep_on")
            await add_deliveries(conn, ["ep_p", "ep_o", "ep_on"], 2)
            await conn.execute("UPDATE endpoints SET paused = true WHERE id <> 'ep_on'")
            wants = {"ep_p": 2, "ep_o": 1, "ep_on": 2}
            for daemon in (a, b):
                claimed, next_due = await daemon.claims.claim(wants, now_ms())
                assert {c.endpoint_id for c in claimed} <= {"ep_on"}
                assert next_due.get("ep_p", None) is None and next_due.get("ep_o") is None
            await conn.execute("UPDATE endpoints SET paused = false")
            claimed, _ = await b.claims.claim(wants, now_ms())
            assert sorted(c.endpoint_id for c in claimed) == ["ep_o", "ep_p", "ep_p"]
    finally:
        await close_daemon(a)
        await close_daemon(b)
