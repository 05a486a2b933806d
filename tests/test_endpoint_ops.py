"""Endpoint operations against a running daemon: secrets, test, recover, stats, delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.conftest import Daemon, Receiver, wait_until


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def test_rotate_secret_signs_with_both_during_grace(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    old = ep["secret"]
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/secret/rotate", {"grace_s": 3600})
    assert r.status == 200, r
    new = r.json["secret"]
    assert new.startswith("whsec_") and new != old
    r = await daemon.get(f"/v1/endpoints/{ep['id']}/secret")
    assert r.json["secret"] == new
    [prev] = r.json["previous_secrets"]
    assert set(prev) == {"expires_at"}  # the old secret itself is not shown again
    await daemon.publish()
    [req] = await receiver.wait_for(1)
    sigs = req.headers["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)
    # Each secret alone verifies with the reference library.
    Webhook(new).verify(req.body, req.headers)
    Webhook(old).verify(req.body, req.headers)


async def test_rotate_without_grace_drops_the_old_secret(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    chosen = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"  # 24 bytes
    r = await daemon.post(
        f"/v1/endpoints/{ep['id']}/secret/rotate", {"secret": chosen, "grace_s": 0}
    )
    assert r.json == {"secret": chosen}
    await daemon.publish()
    [req] = await receiver.wait_for(1)
    assert len(req.headers["webhook-signature"].split(" ")) == 1
    Webhook(chosen).verify(req.body, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(ep["secret"]).verify(req.body, req.headers)
    for bad in ({"grace_s": 7 * 86400 + 1}, {"grace_s": -1}, {"secret": "short"}):
        r = await daemon.post(f"/v1/endpoints/{ep['id']}/secret/rotate", bad)
        assert r.status == 422, (bad, r)


async def test_send_test_event_to_one_endpoint(daemon: Daemon, make_receiver: Any) -> None:
    target = await make_receiver()
    other = await make_receiver()
    ep = await daemon.endpoint(target.url)
    await daemon.endpoint(other.url)
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/test", {"payload": {"hello": "world"}})
    assert r.status == 202, r
    assert r.json["event_id"].startswith("evt_") and r.json["delivery_id"].startswith("dlv_")
    [req] = await target.wait_for(1)
    assert req.headers["webhook-id"] == r.json["event_id"]
    assert b'"type":"webhookd.test"' in req.body and b'"hello":"world"' in req.body
    await daemon.wait_status(r.json["delivery_id"], "delivered")
    assert other.received == []
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/test", {"event_type": "call.completed"})
    assert r.status == 202
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/test", {"event_type": "no.such"})
    assert r.status == 422
    assert (await daemon.post("/v1/endpoints/ep_nope/test", {})).status == 404


async def test_recover_requeues_failed_and_skipped_in_the_window(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon({"delivery": {"retry_schedule_s": []}})
    receiver.default = 500
    ep = await d.endpoint(receiver.url)
    before = datetime.now(UTC) - timedelta(seconds=1)
    evs = [await d.publish() for _ in range(3)]
    for ev in evs:
        r = await d.get(f"/v1/deliveries?event_id={ev['id']}")
        await d.wait_status(r.json["data"][0]["id"], "failed")
    # Nothing in a window before the events.
    r = await d.post(
        f"/v1/endpoints/{ep['id']}/recover",
        {"since": iso(before - timedelta(hours=1)), "until": iso(before)},
    )
    assert r.status == 202 and r.json == {"requeued": 0}
    receiver.default = 200
    r = await d.post(f"/v1/endpoints/{ep['id']}/recover", {"since": iso(before)})
    assert r.json == {"requeued": 3}
    await wait_until(
        lambda: len(receiver.received) >= 6, 10, "the recovered deliveries to be attempted"
    )
    for ev in evs:
        r = await d.get(f"/v1/deliveries?event_id={ev['id']}")
        await d.wait_status(r.json["data"][0]["id"], "delivered")
    r = await d.post(f"/v1/endpoints/{ep['id']}/recover", {})
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "since"]


async def test_stats(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon({"delivery": {"retry_schedule_s": []}})
    ep = await d.endpoint(receiver.url)
    r = await d.get(f"/v1/endpoints/{ep['id']}/stats")
    assert r.json == {
        "counts": dict.fromkeys(
            ("pending", "delivering", "delivered", "failed", "skipped", "cancelled"), 0
        ),
        "success_rate_24h": None,
        "in_flight": 0,
        "last_success_at": None,
        "failing_since": None,
    }
    receiver.statuses = [200, 200, 200, 500]
    evs = [await d.publish() for _ in range(4)]
    await receiver.wait_for(4)

    async def settled() -> dict[str, Any] | None:
        s = (await d.get(f"/v1/endpoints/{ep['id']}/stats")).json
        c = s["counts"]
        return s if c["delivered"] + c["failed"] == 4 else None

    s = await wait_until(settled, 10, "four finished deliveries")
    assert s["counts"]["delivered"] == 3 and s["counts"]["failed"] == 1
    assert s["success_rate_24h"] == 0.75
    assert s["last_success_at"] is not None
    assert len(evs) == 4


async def test_delete_cancels_undelivered(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon()
    ep = await d.endpoint(receiver.url, delay_s=3600)
    ev = await d.publish()
    r = await d.get(f"/v1/deliveries?event_id={ev['id']}")
    dlv = r.json["data"][0]
    assert dlv["status"] == "pending"
    assert (await d.delete(f"/v1/endpoints/{ep['id']}")).status == 204
    r = await d.get(f"/v1/deliveries/{dlv['id']}")
    assert r.json["status"] == "cancelled"
    assert r.json["next_attempt_at"] is None
    # The delivery stays listed; the endpoint is gone.
    r = await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")
    assert [x["id"] for x in r.json["data"]] == [dlv["id"]]
    assert (await d.post(f"/v1/deliveries/{dlv['id']}/retry")).status == 409
    assert receiver.received == []


async def test_patch_every_mutable_field(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    change = {
        "url": receiver.url + "?v=2",
        "events": ["call.*"],
        "tenant": "acme",
        "description": "d",
        "metadata": {"a": "b"},
        "active": False,
        "signature": {"scheme": "hmac-sha256", "header": "X-Sig"},
        "format": ["form", "multipart"],
        "headers": {"X-Team": "core"},
        "delay_s": 5,
        "rate_limit_per_s": 2.5,
        "max_in_flight": 3,
        "ordered": True,
    }
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", change)
    assert r.status == 200, r
    for key, value in change.items():
        assert r.json[key] == value, key
    again = (await daemon.get(f"/v1/endpoints/{ep['id']}")).json
    for key, value in change.items():
        assert again[key] == value, key
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"secret": "whsec_x"})
    assert r.status == 422
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"max_in_flight": 65})
    assert r.status == 422  # at most delivery.workers
