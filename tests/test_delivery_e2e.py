"""End to end: a real daemon process delivers to real receivers on 127.0.0.1."""

from __future__ import annotations

import json
import time

from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import Daemon, Receiver, wait_until


async def test_published_event_arrives_signed_and_verifies(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    ev = await daemon.publish("call.completed", {"call_id": "c1", "seconds": 42, "ok": True})
    assert ev["deliveries"] == 1
    [req] = await receiver.wait_for(1)
    assert req.method == "POST"
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("webhookd/")
    assert req.headers["webhook-id"] == ev["id"]
    # The Standard Webhooks reference library verifies it unchanged.
    Webhook(ep["secret"]).verify(req.body, req.headers)
    body = json.loads(req.body)
    assert body == {
        "id": ev["id"],
        "type": "call.completed",
        "timestamp": ev["created_at"],
        "data": {"call_id": "c1", "seconds": 42, "ok": True},
    }
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 60


async def test_delivery_log_records_the_attempt(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    await receiver.wait_for(1)
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    [d] = r.json["data"]
    full = await daemon.wait_status(d["id"], "delivered")
    assert full["endpoint_id"] == ep["id"]
    assert full["event_type"] == "call.completed"
    assert full["attempt_count"] == 1
    assert full["next_attempt_at"] is None
    [a] = full["attempts"]
    assert a["number"] == 1
    assert a["status_code"] == 200
    assert a["trigger"] == "scheduled"
    assert a["format"] == "json"
    assert a["error_kind"] is None
    assert a["response_body"] == "ok"
    sent = receiver.received[0].headers
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature", "Content-Type"):
        assert a["request_headers"][name] == sent[name]
    assert isinstance(a["duration_ms"], int)
    # The event shows its delivery summary.
    r = await daemon.get(f"/v1/events/{ev['id']}")
    assert r.json["payload"] == {}
    assert [x["id"] for x in r.json["deliveries"]] == [d["id"]]


async def test_fan_out_follows_event_filters_and_tenants(
    daemon: Daemon, make_receiver: object
) -> None:
    recv_all = await make_receiver()  # type: ignore[operator]
    recv_calls = await make_receiver()  # type: ignore[operator]
    recv_exact = await make_receiver()  # type: ignore[operator]
    recv_tenant = await make_receiver()  # type: ignore[operator]
    await daemon.endpoint(recv_all.url)
    await daemon.endpoint(recv_calls.url, events=["call.*"])
    await daemon.endpoint(recv_exact.url, events=["invoice.paid"])
    await daemon.endpoint(recv_tenant.url, tenant="acme")
    e1 = await daemon.publish("call.completed")
    e2 = await daemon.publish("invoice.paid")
    e3 = await daemon.publish("call.started", tenant="acme")
    assert (e1["deliveries"], e2["deliveries"], e3["deliveries"]) == (2, 2, 1)
    await recv_all.wait_for(2)
    await recv_calls.wait_for(1)
    await recv_exact.wait_for(1)
    await recv_tenant.wait_for(1)
    assert sorted(recv_all.event_ids()) == sorted([e1["id"], e2["id"]])
    assert recv_calls.event_ids() == [e1["id"]]
    assert recv_exact.event_ids() == [e2["id"]]
    assert recv_tenant.event_ids() == [e3["id"]]
    assert json.loads(recv_tenant.received[0].body)["tenant"] == "acme"
    assert "tenant" not in json.loads(recv_all.received[0].body)


async def test_failures_are_retried_on_schedule_until_success(
    daemon: Daemon, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    await receiver.wait_for(3)
    gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
    # Schedule [0.2, 0.4] with no jitter: each gap at least its delay.
    assert gaps[0] >= 0.18 and gaps[1] >= 0.38, gaps
    assert set(receiver.event_ids()) == {ev["id"]}
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    full = await daemon.wait_status(r.json["data"][0]["id"], "delivered")
    assert [a["status_code"] for a in full["attempts"]] == [500, 503, 200]
    assert [a["number"] for a in full["attempts"]] == [1, 2, 3]
    assert full["attempts"][0]["error_message"]


async def test_retries_exhausted_means_failed(daemon: Daemon, receiver: Receiver) -> None:
    receiver.default = 500
    await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    full = await daemon.wait_status(r.json["data"][0]["id"], "failed")
    # One first attempt plus one per schedule entry.
    assert full["attempt_count"] == 3
    assert len(receiver.received) == 3


async def test_retry_after_lengthens_the_wait(make_daemon: object, receiver: Receiver) -> None:
    d: Daemon = await make_daemon({"delivery": {"retry_schedule_s": [0.1, 1.5]}})  # type: ignore[operator]

    def answer(request: web.Request, body: bytes) -> web.Response:
        if len(receiver.received) == 1:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=200)

    receiver.responder = answer
    await d.endpoint(receiver.url)
    await d.publish()
    await receiver.wait_for(2, timeout=10)
    gap = receiver.received[1].at - receiver.received[0].at
    assert gap >= 0.95, gap  # Retry-After 1 s beat the 0.1 s schedule entry


async def test_error_kinds_timeout_refused_redirect(
    make_daemon: object, make_receiver: object
) -> None:
    d: Daemon = await make_daemon(  # type: ignore[operator]
        {"delivery": {"timeout_s": 0.5, "retry_schedule_s": []}}
    )
    slow = await make_receiver(delay_s=3)  # type: ignore[operator]
    target = await make_receiver()  # type: ignore[operator]

    def redirect(request: web.Request, body: bytes) -> web.Response:
        return web.Response(status=302, headers={"Location": target.url})

    redirecting = await make_receiver(responder=redirect)  # type: ignore[operator]
    closed = await make_receiver()  # type: ignore[operator]
    closed_url = closed.url
    await closed.stop()

    kinds = {}
    for name, url in (("slow", slow.url), ("redirect", redirecting.url), ("closed", closed_url)):
        ep = await d.endpoint(url)
        ev = await d.post("/v1/endpoints/" + ep["id"])  # sanity: unknown method path is JSON 405
        assert ev.status == 405 and ev.json["error"]
        kinds[name] = ep["id"]
    await d.publish()
    for name, ep_id in kinds.items():
        r = await d.get(f"/v1/deliveries?endpoint_id={ep_id}")
        full = await d.wait_status(r.json["data"][0]["id"], "failed", timeout=15)
        a = full["attempts"][0]
        kinds[name] = (a["error_kind"], a["status_code"], a["error_message"])
    assert kinds["slow"][0] == "timeout"
    assert kinds["slow"][1] is None
    assert kinds["redirect"][:2] == ("redirect", 302)
    assert "redirect" in kinds["redirect"][2]
    assert kinds["closed"][0] == "connection_refused"
    assert target.received == []  # the redirect was not followed


async def test_response_body_kept_up_to_max_response_bytes(
    make_daemon: object, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon({"delivery": {"max_response_bytes": 100}})  # type: ignore[operator]
    receiver.responder = lambda request, body: web.Response(status=200, text="x" * 5000)
    await d.endpoint(receiver.url)
    ev = await d.publish()
    r = await d.get(f"/v1/deliveries?event_id={ev['id']}")
    full = await d.wait_status(r.json["data"][0]["id"], "delivered")
    assert full["attempts"][0]["response_body"] == "x" * 100


async def test_manual_retry_resends_a_delivered_delivery(
    daemon: Daemon, receiver: Receiver
) -> None:
    await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    dlv = r.json["data"][0]["id"]
    await daemon.wait_status(dlv, "delivered")
    r = await daemon.post(f"/v1/deliveries/{dlv}/retry")
    assert r.status == 202, r
    await receiver.wait_for(2)
    assert receiver.event_ids() == [ev["id"], ev["id"]]

    async def two_attempts() -> dict[str, object] | None:
        full = (await daemon.get(f"/v1/deliveries/{dlv}")).json
        return full if len(full["attempts"]) == 2 and full["status"] == "delivered" else None

    full = await wait_until(two_attempts, 10, "the manual attempt to be recorded")
    assert [a["trigger"] for a in full["attempts"]] == ["scheduled", "manual"]


async def test_manual_attempt_that_fails_is_not_retried(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url)
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    dlv = r.json["data"][0]["id"]
    await daemon.wait_status(dlv, "delivered")
    receiver.default = 500
    await daemon.post(f"/v1/deliveries/{dlv}/retry")
    full = await daemon.wait_status(dlv, "failed")
    assert [a["trigger"] for a in full["attempts"]] == ["scheduled", "manual"]
    assert full["next_attempt_at"] is None
    assert len(receiver.received) == 2


async def test_delay_s_holds_the_first_attempt(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, delay_s=1)
    started = time.monotonic()
    ev = await daemon.publish()
    r = await daemon.get(f"/v1/deliveries?event_id={ev['id']}")
    assert r.json["data"][0]["status"] == "pending"
    assert r.json["data"][0]["next_attempt_at"] is not None
    await receiver.wait_for(1)
    assert receiver.received[0].at - started >= 0.9


async def test_all_workers_busy_does_not_stall_delivery(
    make_daemon: object, receiver: Receiver
) -> None:
    """With every worker in use, a worker freed after its outcome is written must wake
    the dispatcher (regression: the backlog stalled when workers == per-endpoint limit)."""
    d: Daemon = await make_daemon(  # type: ignore[operator]
        {"delivery": {"workers": 4, "max_in_flight_per_endpoint": 4}}
    )
    await d.endpoint(receiver.url)
    events = [{"type": "call.completed", "payload": {"n": i}} for i in range(300)]
    r = await d.post("/v1/events/batch", {"events": events})
    assert r.status == 202
    await receiver.wait_for(300, timeout=30)
    assert len(set(receiver.event_ids())) == 300


async def test_payload_is_delivered_exactly_as_published(
    daemon: Daemon, receiver: Receiver
) -> None:
    """Big integers, deep nesting and unusual Unicode survive unchanged."""
    payload = {
        "big": 123456789012345678901234567890,
        "neg": -(2**70),
        "float": 0.1,
        "text": "zero\u200bwidth \U0001f600 \u202eRTL",
        "nested": {"a": [1, {"b": [None, True, False]}]},
    }
    raw = json.dumps({"type": "call.completed", "payload": payload}).encode()
    await daemon.endpoint(receiver.url)
    r = await daemon.request("POST", "/v1/events", data=raw)
    assert r.status == 202, r
    [req] = await receiver.wait_for(1)
    assert json.loads(req.body)["data"] == payload
    got = (await daemon.get(f"/v1/events/{r.json['id']}")).json
    assert got["payload"] == payload


async def test_numbers_beyond_the_float_range_are_refused_not_changed(daemon: Daemon) -> None:
    """1e400 would become infinity and then null; it is refused with a reason instead."""
    for number in ("1.5e400", "-2E+309"):
        raw = b'{"type": "call.completed", "payload": {"amount": ' + number.encode() + b"}}"
        r = await daemon.request("POST", "/v1/events", data=raw)
        assert r.status == 400, r
        assert r.json["error"] == "bad_request", r
        assert number in r.json["message"] and "64-bit float" in r.json["message"], r
    # The largest finite double passes through exactly.
    raw = b'{"type": "call.completed", "payload": {"amount": 1.7976931348623157e308}}'
    r = await daemon.request("POST", "/v1/events", data=raw)
    assert r.status == 202, r
    got = (await daemon.get(f"/v1/events/{r.json['id']}")).json
    assert got["payload"] == {"amount": 1.7976931348623157e308}
