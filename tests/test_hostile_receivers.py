"""Receivers that answer to hurt: the cost of reading an answer is bounded by its size.

A real daemon delivers to raw TCP servers on 127.0.0.1 that answer without end, as fast
as the socket takes it: interim `100 Continue` heads, or a chunked body of one-byte
chunks. Each attempt must end within `delivery.timeout_s` + 1 s with a sensible error
kind, /healthz must keep answering at once, and a healthy endpoint must still get its
delivery while the attack runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tests.conftest import Daemon, Receiver, wait_until

TIMEOUT_S = 3
HEALTHZ_MAX_S = 0.5

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
ONE_BYTE_CHUNK = b"1\r\nx\r\n"

Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def endless_continue(writer: asyncio.StreamWriter) -> None:
    block = CONTINUE * 1000
    while True:
        writer.write(block)
        await writer.drain()


async def endless_chunks(writer: asyncio.StreamWriter) -> None:
    writer.write(CHUNKED_HEAD)
    block = ONE_BYTE_CHUNK * 10_000
    while True:
        writer.write(block)
        await writer.drain()


@contextlib.asynccontextmanager
async def hostile_server(answer: Writer) -> AsyncIterator[tuple[str, list[int]]]:
    """A bare TCP server on 127.0.0.1: reads a request's head and body, then `answer`s until
    the client hangs up. Yields its URL and a list counting the connections."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            await answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", connections
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def first_attempt(d: Daemon, endpoint_id: str) -> dict[str, Any] | None:
    r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}")
    if not r.json["data"]:
        return None
    full = await d.get(f"/v1/deliveries/{r.json['data'][0]['id']}")
    attempts = full.json["attempts"]
    return attempts[0] if attempts else None


async def healthz_latencies(d: Daemon, stop: asyncio.Event) -> list[float]:
    """GET /healthz again and again until `stop`; the time each took."""
    latencies: list[float] = []
    while not stop.is_set():
        started = time.monotonic()
        try:
            async with asyncio.timeout(HEALTHZ_MAX_S * 4):
                r = await d.get("/healthz")
        except TimeoutError:
            latencies.append(time.monotonic() - started)
            return latencies  # frozen: no need to ask again
        latencies.append(time.monotonic() - started)
        assert r.status == 200, r
        await asyncio.sleep(0.02)  # the poll's pace, not a wait for anything
    return latencies


async def attack(
    d: Daemon,
    servers: list[tuple[str, list[int]]],
    hostile: list[str],
    receiver: Receiver,
    started: float,
) -> tuple[list[dict[str, Any]], float]:
    """Publish to the hostile endpoints, then to the healthy one while the attack runs;
    the hostile attempts once recorded, and when the healthy delivery arrived."""
    await d.publish("call.completed")
    # The attack is under way: every hostile server has its connection.
    await wait_until(lambda: all(conns for _, conns in servers), 10, "four connections")
    await d.publish("call.started")
    await receiver.wait_for(1, timeout=TIMEOUT_S + 1)
    healthy_after = time.monotonic() - started

    async def all_recorded() -> list[dict[str, Any]] | None:
        attempts = [await first_attempt(d, ep) for ep in hostile]
        return None if None in attempts else attempts  # type: ignore[return-value]

    # Recorded within timeout_s + 1 s of starting, and a little for the log's writer and
    # this poll.
    attempts = await wait_until(all_recorded, TIMEOUT_S + 2.5, "the four attempts")
    return attempts, healthy_after


async def test_endless_interim_heads_and_one_byte_chunks_do_not_freeze_the_daemon(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon(
        {
            "security": {"https_only": False, "allow_networks": ["127.0.0.0/8"]},
            "delivery": {"timeout_s": TIMEOUT_S, "retry_schedule_s": []},
        }
    )
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(hostile_server(answer))
            for answer in (endless_continue, endless_continue, endless_chunks, endless_chunks)
        ]
        hostile = [(await d.endpoint(url, events=["call.completed"]))["id"] for url, _ in servers]
        healthy = (await d.endpoint(receiver.url, events=["call.started"]))["id"]

        stop = asyncio.Event()
        poller = asyncio.create_task(healthz_latencies(d, stop))
        started = time.monotonic()
        try:
            # A frozen daemon answers nothing, these polls included: bound them all.
            async with asyncio.timeout(TIMEOUT_S + 5):
                attempts, healthy_after = await attack(d, servers, hostile, receiver, started)
        except TimeoutError:
            raise AssertionError(
                f"the daemon did not record the attempts within {TIMEOUT_S + 5} s"
            ) from None
        finally:
            stop.set()
            latencies = await poller

    kinds = sorted(a["error_kind"] for a in attempts)
    assert kinds == ["invalid_response"] * 2 + ["response_too_large"] * 2, attempts
    for a in attempts:
        assert a["duration_ms"] <= (TIMEOUT_S + 1) * 1000, a
    assert latencies, "/healthz was never asked"
    assert max(latencies) < HEALTHZ_MAX_S, (max(latencies), len(latencies))
    assert healthy_after < TIMEOUT_S + 1
    r = await d.get(f"/v1/deliveries?endpoint_id={healthy}")
    await d.wait_status(r.json["data"][0]["id"], "delivered")
    print(
        f"attempts {[a['duration_ms'] for a in attempts]} ms, healthy after "
        f"{healthy_after:.2f} s, /healthz max {max(latencies) * 1000:.0f} ms of {len(latencies)}"
    )
