"""`webhookd endpoints pause|resume|retry-now`, `update --paused/--no-paused` and
`webhookd deliveries retry`, as real processes against a real daemon and receiver."""

from __future__ import annotations

from typing import Any

from tests.conftest import Daemon, Receiver, wait_until
from tests.test_cli_client import fails, field, ok, ok_json, rows

LATER = {"delivery": {"retry_schedule_s": [3600]}}  # a failed attempt waits an hour


async def test_pause_resume_and_the_paused_option(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    out = await ok(daemon, "endpoints", "pause", ep["id"])
    assert out.strip() == (
        f"paused endpoint {ep['id']}: its deliveries wait as pending until "
        f"`webhookd endpoints resume {ep['id']}`"
    )
    assert field(await ok(daemon, "endpoints", "show", ep["id"]), "paused") == "yes"
    [header, row] = rows(await ok(daemon, "endpoints", "list"))
    assert row[header.index("ACTIVE")] == "paused"
    await daemon.publish()
    assert receiver.received == []

    out = await ok(daemon, "endpoints", "resume", ep["id"])
    assert out.strip() == f"resumed endpoint {ep['id']}"
    await receiver.wait_for(1)
    assert (await ok_json(daemon, "endpoints", "show", ep["id"]))["paused"] is False

    out = await ok(daemon, "endpoints", "update", ep["id"], "--paused")
    assert field(out, "paused") == "yes"
    out = await ok(daemon, "endpoints", "update", ep["id"], "--no-paused")
    assert field(out, "paused") == "no"
    made = await ok_json(daemon, "endpoints", "create", receiver.url, "--paused")
    assert made["paused"] is True


async def test_retry_now_attempts_everything_pending_for_the_endpoint_at_once(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon(LATER)
    ep = await d.endpoint(receiver.url)
    receiver.default = 503
    for n in range(3):
        await d.publish(payload={"n": n})
    await receiver.wait_for(3)
    # Each failed once and now waits an hour for its next attempt.
    await wait_until(lambda: _pending(d, ep["id"], 3), 10, "three pending")
    receiver.default = 200
    out = await ok(d, "endpoints", "retry-now", ep["id"])
    assert out.strip() == f"queued 3 pending deliveries of {ep['id']} for an attempt now"
    await receiver.wait_for(6)
    await wait_until(lambda: _pending(d, ep["id"], 0), 10, "none pending")
    stats = await ok_json(d, "endpoints", "stats", ep["id"])
    assert stats["counts"]["delivered"] == 3

    # Nothing pending: nothing to do. Paused: resume first.
    assert (await ok_json(d, "endpoints", "retry-now", ep["id"]))["retried"] == 0
    await ok(d, "endpoints", "pause", ep["id"])
    err = await fails(d, "endpoints", "retry-now", ep["id"])
    assert "paused" in err and f"webhookd endpoints resume {ep['id']}" in err


async def test_deliveries_retry_attempts_one_delivery_now(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon(LATER)
    await d.endpoint(receiver.url)
    receiver.statuses = [503]
    published = await d.publish()
    await receiver.wait_for(1)
    [delivery] = (await d.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
    out = await ok(d, "deliveries", "retry", delivery["id"])
    assert out.strip() == f"queued {delivery['id']} for an attempt now"
    await d.wait_status(delivery["id"], "delivered")
    assert receiver.event_ids() == [published["id"]] * 2


async def _pending(d: Daemon, endpoint_id: str, n: int) -> bool:
    stats = (await d.get(f"/v1/endpoints/{endpoint_id}/stats")).json
    return bool(stats["counts"]["pending"] == n)
