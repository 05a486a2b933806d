"""No delivery is stranded in `delivering`: not by a receiver's unreadable Retry-After, not
by a failure while deciding an outcome, not by storage refusing writes for a while (a
file-size limit set on the running daemon's process), and /readyz tells the truth."""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import Daemon, Receiver, new_event, wait_until
from webhookd import http1
from webhookd.config import DeliveryConfig
from webhookd.dispatcher import Dispatcher
from webhookd.netguard import AddressPolicy, GuardedResolver
from webhookd.store.sqlite import SQLiteStore

MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

# Each of these once raised out of the dispatcher's decision (ValueError from int() past
# 4,300 digits, OverflowError from the date parser), leaving the delivery `delivering`.
HOSTILE_RETRY_AFTER = [
    "9" * 5000,
    "Fri, 31 Dec 99999999999999999999 23:59:59 GMT",
    "Fri, 99999999999999999999 Dec 2020 23:59:59 GMT",
    "Fri, 31 Dec 2020 99999999999999999999:59:59 GMT",
    "Fri, 31 Dec 2020 23:59:59 +99999999999999999999",
]
SCHEDULE_S = [30, 60]


def ms(rfc3339: str) -> int:
    return int(datetime.fromisoformat(rfc3339).timestamp() * 1000)


def answering_503(retry_after: str) -> Callable[[web.Request, bytes], web.Response]:
    def respond(request: web.Request, body: bytes) -> web.Response:
        return web.Response(status=503, text="busy", headers={"Retry-After": retry_after})

    return respond


async def first_attempt_recorded(d: Daemon, delivery_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        doc: dict[str, Any] = (await d.get(f"/v1/deliveries/{delivery_id}")).json
        return doc if doc["attempt_count"] >= 1 and doc["status"] != "delivering" else None

    got: dict[str, Any] = await wait_until(check, 10, f"{delivery_id}'s first attempt recorded")
    return got


async def test_an_unreadable_retry_after_is_ignored_and_strands_nothing(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    d = await make_daemon({"delivery": {"retry_schedule_s": SCHEDULE_S, "jitter": 0}})
    sent: list[tuple[Receiver, str]] = []
    for value in HOSTILE_RETRY_AFTER:
        rcv = await make_receiver(responder=answering_503(value))
        ep = await d.endpoint(rcv.url)
        r = await d.post(f"/v1/endpoints/{ep['id']}/test", {})
        assert r.status == 202, r
        sent.append((rcv, r.json["delivery_id"]))
    for rcv, delivery_id in sent:
        doc = await first_attempt_recorded(d, delivery_id)
        [attempt] = doc["attempts"]
        assert attempt["status_code"] == 503
        assert attempt["error_kind"] is None
        # Rescheduled on the schedule: 30 s, or up to its longest delay (60 s) where the
        # value was read as a huge number of seconds.
        assert doc["status"] == "pending"
        wait_ms = ms(doc["next_attempt_at"]) - ms(attempt["started_at"])
        assert SCHEDULE_S[0] * 1000 - 1000 <= wait_ms <= SCHEDULE_S[-1] * 1000 + 1000, doc
        # Not "in progress": a manual retry is accepted and made.
        r = await d.post(f"/v1/deliveries/{delivery_id}/retry")
        assert r.status == 202, r
        await rcv.wait_for(2)
    for _, delivery_id in sent:

        async def manual_recorded(delivery_id: str = delivery_id) -> bool:
            doc = (await d.get(f"/v1/deliveries/{delivery_id}")).json
            return bool(doc["attempt_count"] == 2 and doc["status"] == "pending")

        await wait_until(manual_recorded, 10, f"{delivery_id}'s manual attempt recorded")
    r = await d.get("/v1/deliveries?status=delivering")
    assert r.json["data"] == []
    assert d.proc is not None and d.proc.poll() is None


class NoRandomness(random.Random):
    """A random source that fails: jitter is computed inside the dispatcher's decision,
    so this makes deciding an outcome raise (standing in for any bug there)."""

    def uniform(self, a: float, b: float) -> float:
        raise RuntimeError("no randomness today")


async def test_a_failure_while_deciding_still_records_the_attempt_and_reschedules(
    store: SQLiteStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.default = 503
    ep = await store.create_endpoint({"url": receiver.url, "secret": "whsec_" + "A" * 32})
    [published] = await store.publish([new_event()])
    [delivery_id] = published.delivery_ids
    resolver = GuardedResolver(AddressPolicy(("127.0.0.0/8",)))
    client = http1.Client(resolver)
    config = DeliveryConfig(retry_schedule_s=(30.0, 60.0), jitter=0.2, timeout_s=5)
    dispatcher = Dispatcher(store, client, config, rand=NoRandomness())
    await dispatcher.start()
    try:

        async def settled() -> bool:
            d, attempts = await store.get_delivery(delivery_id)
            return d.status != "delivering" and len(attempts) == 1

        await wait_until(settled, 10, "the attempt recorded")
    finally:
        await dispatcher.stop(1)
        await client.close()
        await resolver.close()
    d, [attempt] = await store.get_delivery(delivery_id)
    assert d.endpoint_id == ep.id
    assert attempt.status_code == 503  # what the receiver answered is kept
    assert attempt.error_kind == "internal_error"
    assert attempt.error_message is not None
    assert "RuntimeError" in attempt.error_message and "Traceback" not in attempt.error_message
    # The plain schedule (no jitter: that is what failed).
    assert d.status == "pending"
    assert d.next_attempt_at is not None
    assert d.next_attempt_at - attempt.started_at == pytest.approx(30_000, abs=1000)
    crashes = [r for r in caplog.records if getattr(r, "event", None) == "decide_crashed"]
    assert len(crashes) == 1


# --- a storage outage under a running daemon ---------------------------------------------


@pytest.fixture
def release_receivers() -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    yield event
    event.set()  # never leave a held request behind


def holding(release: asyncio.Event) -> Callable[[web.Request, bytes], Awaitable[web.Response]]:
    async def respond(request: web.Request, body: bytes) -> web.Response:
        await release.wait()
        return web.Response(status=200, text="ok")

    return respond


def limit_file_size(pid: int, db_path: str) -> tuple[int, int]:
    """Make every further write of the daemon's database fail (EFBIG): a write at or past
    RLIMIT_FSIZE fails, and the WAL only grows here. Returns the limits to restore."""
    sizes = [Path(db_path).stat().st_size, Path(db_path + "-wal").stat().st_size]
    old = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (min(sizes), old[1]))
    return old


async def in_flight(d: Daemon, endpoint_id: str) -> int:
    doc = (await d.get(f"/v1/endpoints/{endpoint_id}/stats")).json
    return int(doc["in_flight"])


async def statuses(d: Daemon, endpoint_id: str) -> list[str]:
    r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}")
    return [x["status"] for x in r.json["data"]]


async def start_outage(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, release: asyncio.Event, n: int
) -> tuple[Daemon, Receiver, str, tuple[int, int]]:
    """A daemon with `n` requests held open by the receiver, then its writes failing."""
    rcv = await make_receiver(responder=holding(release))
    d = await make_daemon({"delivery": {"shutdown_grace_s": 1}})
    ep = await d.endpoint(rcv.url)
    for i in range(n):
        await d.publish(payload={"n": i})
    await rcv.wait_for(n)
    assert d.proc is not None
    old = limit_file_size(d.proc.pid, d.config["database"])
    return d, rcv, ep["id"], old


async def test_outcomes_refused_by_storage_are_written_when_it_returns(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, release_receivers: asyncio.Event
) -> None:
    n = 5
    d, rcv, endpoint_id, old = await start_outage(make_daemon, make_receiver, release_receivers, n)
    assert d.proc is not None
    pid = d.proc.pid
    try:
        # Readiness is a real write: it fails now, with the reason.
        r = await wait_until(lambda: _if_status(d.get("/readyz"), 503), 5, "/readyz to answer 503")
        assert "storage cannot write" in r.json["problems"]
        assert r.json["reason"]
        r = await d.post("/v1/events", {"type": "call.completed", "payload": {}})
        assert r.status == 503, r
        # The held requests are answered; their outcomes cannot be written yet.
        release_receivers.set()
        await wait_until(lambda: _is_zero(in_flight(d, endpoint_id)), 10, "requests over")
        assert await statuses(d, endpoint_id) == ["delivering"] * n
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, old)
    lifted = time.monotonic()
    # Without a restart: every outcome is written, and the daemon is ready again.
    await wait_until(
        lambda: _all_are(statuses(d, endpoint_id), "delivered", n), 5, "deliveries recorded"
    )
    took_s = time.monotonic() - lifted
    assert (await d.get("/readyz")).status == 200
    assert d.proc.poll() is None and d.proc.pid == pid
    assert len(rcv.received) == n  # recorded, not sent again
    assert "outcomes_deferred" in d.log_text()
    await d.publish()
    await rcv.wait_for(n + 1)
    print(f"all {n} outcomes recorded {took_s:.2f} s after storage returned")


async def test_stopping_during_an_outage_requeues_the_unwritten_at_the_next_start(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, release_receivers: asyncio.Event
) -> None:
    n = 3
    d, rcv, endpoint_id, _ = await start_outage(make_daemon, make_receiver, release_receivers, n)
    release_receivers.set()
    await wait_until(lambda: _is_zero(in_flight(d, endpoint_id)), 10, "requests over")
    # Storage never comes back for this process: it stops within its grace anyway.
    assert await d.stop() == 0
    await d.start()
    await wait_until(
        lambda: _all_are(statuses(d, endpoint_id), "delivered", n), 10, "deliveries recorded"
    )
    # Sent again after the restart (at least once): the first outcomes were never stored.
    assert len(rcv.received) == 2 * n


async def _if_status(response: Awaitable[Any], status: int) -> Any:
    r = await response
    return r if r.status == status else None


async def _is_zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def _all_are(values: Awaitable[list[str]], status: str, n: int) -> bool:
    got = await values
    return len(got) == n and all(s == status for s in got)
