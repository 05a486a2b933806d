"""The management API over real HTTP: validation, errors, lists, idempotency, auth."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Daemon, Receiver, wait_until

API_KEY = "k" * 40
TENANT_KEY = "t" * 40


def assert_error(r: Any, status: int, code: str) -> None:
    assert r.status == status, r
    assert r.json["error"] == code, r
    assert isinstance(r.json["message"], str) and r.json["message"]


async def test_endpoint_crud(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(
        receiver.url,
        events=["call.*", "invoice.paid"],
        description="billing",
        metadata={"team": "payments"},
        headers={"X-Env": "test"},
    )
    assert ep["id"].startswith("ep_")
    assert ep["secret"].startswith("whsec_")
    assert ep["active"] is True and ep["disabled_reason"] is None
    assert ep["signature"] == {"scheme": "standard", "algorithm": "hmac-sha256"}
    assert ep["format"] == "json"
    assert ep["max_in_flight"] == 10 and ep["ordered"] is False and ep["delay_s"] == 0
    r = await daemon.get(f"/v1/endpoints/{ep['id']}")
    assert r.status == 200
    assert "secret" not in r.json
    assert r.json["metadata"] == {"team": "payments"}
    r = await daemon.get("/v1/endpoints")
    assert [e["id"] for e in r.json["data"]] == [ep["id"]]
    assert all("secret" not in e for e in r.json["data"])
    r = await daemon.get(f"/v1/endpoints/{ep['id']}/secret")
    assert r.json == {"secret": ep["secret"], "previous_secrets": []}
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"description": "new", "active": False})
    assert r.status == 200 and r.json["description"] == "new" and r.json["active"] is False
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"active": True})
    assert r.json["active"] is True and r.json["disabled_reason"] is None
    r = await daemon.delete(f"/v1/endpoints/{ep['id']}")
    assert r.status == 204
    assert_error(await daemon.get(f"/v1/endpoints/{ep['id']}"), 404, "not_found")


async def test_endpoint_validation_names_each_field(daemon: Daemon) -> None:
    r = await daemon.post(
        "/v1/endpoints",
        {
            "url": "ftp://x",
            "events": ["no.such.type"],
            "delay_s": -1,
            "max_in_flight": 0,
            "headers": {"Content-Type": "text/plain", "X-Bad": "a\r\nb"},
            "metadata": {"k": 1},
            "format": "xml",
            "colour": "red",
        },
    )
    assert_error(r, 422, "validation_error")
    locs = {tuple(d["loc"]) for d in r.json["detail"]}
    for expected in [
        ("body", "url"),
        ("body", "events", 0),
        ("body", "delay_s"),
        ("body", "max_in_flight"),
        ("body", "headers", "Content-Type"),
        ("body", "headers", "X-Bad"),
        ("body", "metadata", "k"),
        ("body", "format"),
        ("body", "colour"),
    ]:
        assert expected in locs, (expected, locs)
    assert_error(await daemon.post("/v1/endpoints", {}), 422, "validation_error")


async def test_https_only_by_default(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"security": {"https_only": True}})
    r = await d.post("/v1/endpoints", {"url": "http://example.com/hook"})
    assert_error(r, 422, "validation_error")
    assert r.json["detail"][0]["loc"] == ["body", "url"]
    assert "https_only" in r.json["detail"][0]["msg"]
    r = await d.post("/v1/endpoints", {"url": "https://example.com/hook"})
    assert r.status == 201


async def test_malformed_and_oversized_bodies(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"limits": {"max_payload_bytes": 1000, "max_batch_bytes": 5000}})
    assert_error(await d.request("POST", "/v1/events", data=b"{not json"), 400, "bad_request")
    assert_error(await d.request("POST", "/v1/events", data=b"[1,2]"), 422, "validation_error")
    big = {"type": "call.completed", "payload": {"x": "y" * 2000}}
    assert_error(await d.post("/v1/events", big), 413, "payload_too_large")
    batch = {"events": [{"type": "call.completed", "payload": {"x": "y" * 900}}] * 10}
    assert_error(await d.post("/v1/events/batch", batch), 413, "payload_too_large")
    # Refused from Content-Length alone, before the body is read.
    r = await d.request("POST", "/v1/events/batch", data=b"{" + b" " * 100_000 + b"}", headers={})
    assert_error(r, 413, "payload_too_large")
    assert_error(await d.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await d.request("PUT", "/v1/events"), 405, "method_not_allowed")


async def test_publish_validation(daemon: Daemon) -> None:
    r = await daemon.post("/v1/events", {"type": "nope.unknown", "payload": {}})
    assert_error(r, 422, "validation_error")
    assert "nope.unknown" in r.json["message"]
    assert r.json["detail"][0]["loc"] == ["body", "type"]
    r = await daemon.post("/v1/events", {"type": "call.completed", "payload": "text"})
    assert r.json["detail"][0]["loc"] == ["body", "payload"]
    r = await daemon.post(
        "/v1/events", {"type": "call.completed", "payload": {}, "deliver_at": "soon"}
    )
    assert r.json["detail"][0]["loc"] == ["body", "deliver_at"]
    r = await daemon.post(
        "/v1/events/batch",
        {
            "events": [
                {"type": "call.completed", "payload": {}},
                {"type": "bad type", "payload": {}},
            ]
        },
    )
    assert_error(r, 422, "validation_error")
    assert r.json["detail"][0]["loc"] == ["body", "events", 1, "type"]
    r = await daemon.get("/v1/events")
    assert r.json["data"] == []  # the batch was refused whole


async def test_batch_publish_in_order(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url)
    events = [{"type": "call.completed", "payload": {"n": i}} for i in range(25)]
    r = await daemon.post("/v1/events/batch", {"events": events})
    assert r.status == 202
    data = r.json["data"]
    assert len(data) == 25 and all(x["deliveries"] == 1 for x in data)
    for x, n in zip(data, range(25), strict=True):
        got = (await daemon.get(f"/v1/events/{x['id']}")).json
        assert got["payload"] == {"n": n}
    await receiver.wait_for(25)


async def test_idempotent_publishing(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url)
    body = {"type": "call.completed", "payload": {"a": 1, "b": 2}, "id": "order-42"}
    first = await daemon.post("/v1/events", body)
    assert first.status == 202 and first.json["id"] == "order-42"
    again = await daemon.post("/v1/events", {**body, "payload": {"b": 2, "a": 1}})
    assert again.status == 200
    assert again.json == first.json
    conflict = await daemon.post("/v1/events", {**body, "payload": {"a": 2}})
    assert_error(conflict, 409, "conflict")
    by_header = await daemon.post(
        "/v1/events",
        {"type": "call.completed", "payload": {}},
        headers={"Idempotency-Key": "order-43"},
    )
    assert by_header.status == 202 and by_header.json["id"] == "order-43"
    again = await daemon.post(
        "/v1/events",
        {"type": "call.completed", "payload": {}},
        headers={"Idempotency-Key": "order-43"},
    )
    assert again.status == 200
    # Concurrent duplicates create one event.
    results = await asyncio.gather(
        *[
            daemon.post("/v1/events", {"type": "call.completed", "payload": {}, "id": "dup-1"})
            for _ in range(10)
        ]
    )
    assert sorted(r.status for r in results) == [200] * 9 + [202]
    await receiver.wait_for(3)
    r = await daemon.get("/v1/events?limit=250")
    assert sorted(e["id"] for e in r.json["data"]) == ["dup-1", "order-42", "order-43"]


async def test_pagination_walks_without_gaps_or_duplicates(daemon: Daemon) -> None:
    events = [{"type": "call.completed", "payload": {"n": i}} for i in range(120)]
    await daemon.post("/v1/events/batch", {"events": events})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        q = "/v1/events?limit=50" + (f"&cursor={cursor}" if cursor else "")
        r = await daemon.get(q)
        assert r.status == 200
        seen += [e["id"] for e in r.json["data"]]
        pages += 1
        # A concurrent insert must not shift the walk.
        await daemon.publish()
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 120
    assert seen == sorted(seen, reverse=True)  # newest first
    assert_error(await daemon.get("/v1/events?cursor=garbage"), 422, "validation_error")
    assert_error(await daemon.get("/v1/events?limit=0"), 422, "validation_error")
    assert_error(await daemon.get("/v1/events?limit=251"), 422, "validation_error")
    assert_error(await daemon.get("/v1/events?colour=red"), 422, "validation_error")


async def test_list_filters(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    other = await daemon.endpoint(receiver.url, events=["invoice.paid"])
    e1 = await daemon.publish("call.completed")
    mid = (await daemon.get(f"/v1/events/{e1['id']}")).json["created_at"]
    await asyncio.sleep(0.01)  # distinct millisecond timestamps for the window
    e2 = await daemon.publish("invoice.paid", tenant=None)
    await receiver.wait_for(3)
    r = await daemon.get("/v1/events?type=invoice.paid")
    assert [e["id"] for e in r.json["data"]] == [e2["id"]]
    r = await daemon.get(f"/v1/events?until={mid.replace('+', '%2B')}")
    assert r.json["data"] == []
    r = await daemon.get(f"/v1/events?since={mid}")
    assert {e["id"] for e in r.json["data"]} == {e1["id"], e2["id"]}
    r = await daemon.get(f"/v1/deliveries?endpoint_id={other['id']}")
    assert [d["event_id"] for d in r.json["data"]] == [e2["id"]]
    r = await daemon.get(f"/v1/deliveries?event_type=call.completed&endpoint_id={ep['id']}")
    assert [d["event_id"] for d in r.json["data"]] == [e1["id"]]

    async def three_delivered() -> bool:
        r = await daemon.get("/v1/deliveries?status=delivered")
        return len(r.json["data"]) == 3

    await wait_until(three_delivered, 10, "three delivered deliveries")
    assert_error(await daemon.get("/v1/deliveries?status=lost"), 422, "validation_error")
    r = await daemon.get("/v1/endpoints?active=true")
    assert len(r.json["data"]) == 2
    r = await daemon.get("/v1/endpoints?active=false")
    assert r.json["data"] == []


async def test_event_types_catalog(daemon: Daemon, receiver: Receiver) -> None:
    r = await daemon.get("/v1/event-types")
    names = {t["name"] for t in r.json["data"]}
    assert {"webhookd.test", "call.completed", "webhookd.delivery.failed"} <= names
    r = await daemon.post("/v1/event-types", {"name": "user.signed_up", "description": "hi"})
    assert r.status == 201 and r.json["name"] == "user.signed_up"
    assert_error(await daemon.post("/v1/event-types", {"name": "user.signed_up"}), 409, "conflict")
    assert_error(
        await daemon.post("/v1/event-types", {"name": "bad name!"}), 422, "validation_error"
    )
    await daemon.endpoint(receiver.url, events=["user.signed_up"])
    await daemon.publish("user.signed_up")
    await receiver.wait_for(1)
    assert (await daemon.delete("/v1/event-types/user.signed_up")).status == 204
    assert_error(await daemon.delete("/v1/event-types/user.signed_up"), 404, "not_found")
    assert_error(await daemon.delete("/v1/event-types/webhookd.test"), 409, "conflict")
    assert_error(await daemon.delete("/v1/event-types/call.completed"), 409, "conflict")


async def test_auth_with_keys(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon(
        {
            "api_keys": [
                {"name": "admin", "key": API_KEY},
                {"name": "acme", "key": TENANT_KEY, "tenant": "acme"},
            ]
        }
    )
    assert (await d.get("/healthz", key="")).status == 200
    assert (await d.get("/readyz", key="")).status == 200
    r = await d.get("/v1/endpoints", key="")
    assert_error(r, 401, "unauthorized")
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert_error(await d.get("/v1/endpoints", key="x" * 40), 401, "unauthorized")
    assert (await d.get("/v1/endpoints", key=API_KEY)).status == 200
    # A tenant-scoped key sees and changes only its tenant.
    d.api_key = API_KEY
    other = await d.endpoint(receiver.url, tenant="globex")
    d.api_key = TENANT_KEY
    mine = await d.endpoint(receiver.url)
    assert mine["tenant"] == "acme"
    assert_error(await d.get(f"/v1/endpoints/{other['id']}"), 404, "not_found")
    r = await d.get("/v1/endpoints")
    assert [e["id"] for e in r.json["data"]] == [mine["id"]]
    r = await d.post("/v1/events", {"type": "call.completed", "payload": {}, "tenant": "globex"})
    assert_error(r, 403, "forbidden")
    ev = await d.publish()
    assert ev["tenant"] == "acme" and ev["deliveries"] == 1
    await receiver.wait_for(1)
    assert receiver.event_ids() == [ev["id"]]


async def test_event_types_paginate(daemon: Daemon) -> None:
    for i in range(7):
        assert (await daemon.post("/v1/event-types", {"name": f"page.t{i}"})).status == 201
    names: list[str] = []
    cursor = None
    while True:
        q = "/v1/event-types?limit=3" + (f"&cursor={cursor}" if cursor else "")
        r = await daemon.get(q)
        assert r.status == 200 and len(r.json["data"]) <= 3
        names += [t["name"] for t in r.json["data"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert names == sorted(names) and len(names) == len(set(names))
    assert {f"page.t{i}" for i in range(7)} <= set(names)
    assert_error(await daemon.get("/v1/event-types?cursor=nope"), 422, "validation_error")


async def test_idempotency_holds_for_batches_and_across_a_restart(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon()
    await d.endpoint(receiver.url)
    batch = {
        "events": [
            {"type": "call.completed", "payload": {"n": i}, "id": f"batch-{i}"} for i in range(3)
        ]
    }
    first = await d.post("/v1/events/batch", batch)
    assert first.status == 202
    again = await d.post("/v1/events/batch", batch)
    assert again.status == 200
    assert again.json == first.json
    # Mixed: two known ids and one new one; the new one is created.
    mixed = {
        "events": [*batch["events"][:2], {"type": "call.completed", "payload": {}, "id": "batch-9"}]
    }
    r = await d.post("/v1/events/batch", mixed)
    assert r.status == 202
    assert [x["id"] for x in r.json["data"]] == ["batch-0", "batch-1", "batch-9"]
    changed = {"events": [{"type": "call.completed", "payload": {"n": 99}, "id": "batch-0"}]}
    assert_error(await d.post("/v1/events/batch", changed), 409, "conflict")
    single = {"type": "call.completed", "payload": {"x": 1}, "id": "single-1"}
    assert (await d.post("/v1/events", single)).status == 202
    await receiver.wait_for(5)
    # A restart on the same database file keeps the ids.
    assert await d.stop() == 0
    await d.start()
    r = await d.post("/v1/events", single)
    assert r.status == 200 and r.json["id"] == "single-1"
    assert_error(await d.post("/v1/events", {**single, "payload": {"x": 2}}), 409, "conflict")
    assert (await d.post("/v1/events/batch", batch)).status == 200
    r = await d.get("/v1/events?limit=250")
    assert len(r.json["data"]) == 5
    assert len(receiver.received) == 5
