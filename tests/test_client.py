"""`webhookd.Client` and `webhookd.AsyncClient` against a real daemon (and, for the answers a
daemon rarely gives, a real aiohttp server on 127.0.0.1 that scripts them)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import pytest
from aiohttp import web

import webhookd
from tests.conftest import Daemon, Receiver, wait_until
from webhookd import AsyncClient, Client, WebhookdError


def test_the_client_is_exported_from_the_package() -> None:
    assert set(webhookd.__all__) >= {"Client", "AsyncClient", "WebhookdError"}
    from webhookd.client.core import AsyncClient as Core

    assert AsyncClient is Core


async def test_async_client_publishes_manages_endpoints_and_retries_deliveries(
    daemon: Daemon, receiver: Receiver
) -> None:
    async with AsyncClient(daemon.base) as client:
        ep = await client.create_endpoint(
            receiver.url, events=["call.completed"], description="billing"
        )
        assert ep["secret"].startswith("whsec_") and ep["description"] == "billing"
        first = await client.publish("call.completed", {"n": 1}, id="call-1")
        again = await client.publish("call.completed", {"n": 1}, id="call-1")
        assert first == again and first["id"] == "call-1" and first["deliveries"] == 1
        with pytest.raises(WebhookdError) as caught:
            await client.publish("call.completed", {"n": 2}, id="call-1")
        assert (caught.value.status, caught.value.code) == (409, "conflict")

        batch = await client.publish_batch(
            [{"type": "call.completed", "payload": {"n": n}} for n in range(3)]
        )
        assert [r["deliveries"] for r in batch] == [1, 1, 1]
        await receiver.wait_for(4)

        page = await client.list_deliveries(event_id="call-1")
        [delivery] = page["data"]
        assert page["next_cursor"] is None and delivery["endpoint_id"] == ep["id"]
        await daemon.wait_status(delivery["id"], "delivered")
        retried = await client.retry_delivery(delivery["id"])
        assert retried["id"] == delivery["id"]
        await receiver.wait_for(5)

        async def two_attempts() -> bool:
            shown = await client.get_delivery(delivery["id"])
            return [a["trigger"] for a in shown["attempts"]] == ["scheduled", "manual"]

        await wait_until(two_attempts, what="the manual attempt")
        updated = await client.update_endpoint(ep["id"], active=False)
        assert updated["active"] is False
        assert [e["id"] for e in (await client.list_endpoints(active=False))["data"]] == [ep["id"]]
        await client.delete_endpoint(ep["id"])
        with pytest.raises(WebhookdError) as caught:
            await client.get_endpoint(ep["id"])
        assert caught.value.status == 404 and caught.value.code == "not_found"


def test_sync_client_from_plain_code(daemon: Daemon, receiver: Receiver) -> None:
    with Client(daemon.base) as client:
        ep = client.create_endpoint(receiver.url)
        published = client.publish("invoice.paid", {"invoice": 7}, id="inv-7")
        assert published["deliveries"] == 1
        event = client.get_event("inv-7")
        assert event["payload"] == {"invoice": 7}
        assert [d["endpoint_id"] for d in event["deliveries"]] == [ep["id"]]
        assert client.endpoint_secret(ep["id"])["secret"] == ep["secret"]
        names = [t["name"] for t in client.list_event_types()]
        assert "invoice.paid" in names and "webhookd.test" in names
        with pytest.raises(WebhookdError) as caught:
            client.publish("no.such.type", {})
        err = caught.value
        assert (err.status, err.code) == (422, "validation_error")
        assert "no.such.type" in err.message
        assert err.detail[0]["loc"] == ["body", "type"]
        assert str(err).startswith("422 validation_error: ")
    with pytest.raises(RuntimeError):
        client.get_endpoint(ep["id"])


async def test_a_503_from_storage_is_sent_again_after_retry_after(daemon: Daemon) -> None:
    """The daemon answers 503 (Retry-After: 5) while another process holds the database's
    write lock; the client waits what it was told (here: the injected sleep records it and
    lets the lock go) and the same publish then succeeds."""
    blocker = sqlite3.connect(daemon.config["database"], isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")

    try:
        async with AsyncClient(daemon.base, sleep=sleep) as client:
            published = await client.publish("call.completed", {"n": 1}, id="after-503")
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert waits == [5.0]
    assert published["id"] == "after-503"


# --- answers scripted by a real server ------------------------------------------------------


class Scripted:
    """An aiohttp server on 127.0.0.1 answering POST /v1/events from a list of answers."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = answers
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        status, headers = self.answers.pop(0) if self.answers else (202, {})
        if status >= 400:
            body = {"error": "unavailable", "message": "try later"}
            return web.json_response(body, status=status, headers=headers)
        ok = {"id": "evt_1", "type": "t", "tenant": None, "created_at": "x", "deliveries": 0}
        return web.json_response(ok, status=status)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(answers: list[tuple[int, dict[str, str]]]) -> Scripted:
        server = Scripted(answers)
        app = web.Application()
        app.router.add_post("/v1/events", server.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return server

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_retry_after_seconds_dates_and_backoff(scripted: Callable[..., Any]) -> None:
    date = formatdate(timeval=None, usegmt=True)  # now: wait 0 s
    server = await scripted([(429, {"Retry-After": "2"}), (503, {"Retry-After": date}), (503, {})])
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async with AsyncClient(server.url, sleep=sleep, max_attempts=4) as client:
        await client.publish("t", {})
    assert server.requests == 4
    assert waits[0] == 2.0 and 0 <= waits[1] <= 1.0 and waits[2] == 2.0  # 0.5 s doubling


async def test_attempts_are_bounded_and_a_long_retry_after_is_not_cut_short(
    scripted: Callable[..., Any],
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    server = await scripted([(503, {"Retry-After": "1"})] * 5)
    async with AsyncClient(server.url, sleep=sleep, max_attempts=3) as client:
        with pytest.raises(WebhookdError) as caught:
            await client.publish("t", {})
    assert server.requests == 3 and waits == [1.0, 1.0]
    assert caught.value.status == 503 and caught.value.retry_after_s == 1.0

    waits.clear()
    server = await scripted([(503, {"Retry-After": "3600"})])
    async with AsyncClient(server.url, sleep=sleep, max_retry_wait_s=30) as client:
        with pytest.raises(WebhookdError) as caught:
            await client.publish("t", {})
    assert server.requests == 1 and waits == []
    assert str(caught.value) == "503 unavailable: try later (retry after 3600 s)"


async def test_sync_client_takes_a_blocking_sleep(scripted: Callable[..., Any]) -> None:
    server = await scripted([(503, {"Retry-After": "7"})])
    waits: list[float] = []

    def publish() -> str:
        with Client(server.url, sleep=waits.append) as client:
            return client.publish("t", {})["id"]

    # In a thread: the server answers on this test's loop meanwhile.
    assert await asyncio.to_thread(publish) == "evt_1"
    assert waits == [7.0] and server.requests == 2


async def test_no_answer_is_one_error_type_too() -> None:
    async with AsyncClient("http://127.0.0.1:1") as client:
        with pytest.raises(WebhookdError) as caught:
            await client.publish("t", {})
    assert caught.value.status is None and caught.value.code == "connection_refused"
    assert str(caught.value) == (
        "cannot reach http://127.0.0.1:1: connection refused "
        "(is webhookd running and listening there?)"
    )
    with pytest.raises(ValueError):
        AsyncClient("ftp://127.0.0.1")
