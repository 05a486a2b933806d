"""Attacks from the receiving side: the address guard and endpoints that misbehave on purpose.

Every target here is on 127.0.0.1; no traffic goes anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import Daemon, Receiver

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[tuple[str, list[int]]]:
    """A bare TCP server on 127.0.0.1 that speaks whatever (broken) HTTP the test wants;
    yields its base URL and a list that counts connections."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await _read_request(reader)
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook", connections
    finally:
        server.close()
        # Handlers that stream forever are cancelled with the server.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)


async def last_attempt(d: Daemon, endpoint_id: str, timeout: float = 20) -> dict[str, Any]:
    r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}")
    full = await d.wait_status(r.json["data"][0]["id"], "failed", timeout=timeout)
    return full["attempts"][-1]  # type: ignore[no-any-return]


# --- the address guard ------------------------------------------------------------------


# IP literals in every spelling are refused when the endpoint is made (and, made before
# the policy tightened, when connecting): tests/test_url_policy.py.
@pytest.mark.parametrize("host", ["localhost"])
async def test_guard_refuses_loopback_in_every_spelling(
    make_daemon: Any, receiver: Receiver, host: str
) -> None:
    d: Daemon = await make_daemon(
        {
            "security": {"https_only": False, "allow_networks": []},
            "delivery": {"retry_schedule_s": []},
        }
    )
    port = receiver.url.split(":")[2].split("/")[0]
    ep = await d.endpoint(f"http://{host}:{port}/hook")
    await d.publish()
    a = await last_attempt(d, ep["id"])
    assert a["error_kind"] == "blocked_address", a
    assert a["status_code"] is None
    assert "security.allow_networks" in a["error_message"]
    assert receiver.received == []


async def test_guard_allows_listed_networks(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon(
        {"security": {"https_only": False, "allow_networks": ["127.0.0.1/32"]}}
    )
    await d.endpoint(receiver.url)
    await d.publish()
    await receiver.wait_for(1)


async def test_https_endpoint_to_loopback_is_blocked_before_any_tls(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(
        {
            "security": {"https_only": True, "allow_networks": []},
            "delivery": {"retry_schedule_s": []},
        }
    )

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise AssertionError("the guard let a connection through")

    async with raw_server(never) as (url, connections):
        port = url.split(":")[2].split("/")[0]
        ep = await d.endpoint(f"https://localhost:{port}/hook")
        await d.publish()
        a = await last_attempt(d, ep["id"])
        assert a["error_kind"] == "blocked_address"
        assert connections == []


# --- hostile endpoints ------------------------------------------------------------------

HOSTILE = {"delivery": {"timeout_s": 1.5, "retry_schedule_s": [], "max_response_bytes": 1024}}


async def test_dripping_response_costs_at_most_the_timeout(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(HOSTILE)

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_server(drip) as (url, _):
        ep = await d.endpoint(url)
        await d.publish()
        a = await last_attempt(d, ep["id"])
    assert a["error_kind"] == "timeout"
    assert a["duration_ms"] < 4000
    assert len(a["response_body"]) <= 1024


async def test_headers_that_never_end(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(HOSTILE)

    async def slow_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(1000):
            writer.write(f"X-{i}: y\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.05)

    async with raw_server(slow_headers) as (url, _):
        ep = await d.endpoint(url)
        await d.publish()
        a = await last_attempt(d, ep["id"])
    assert a["error_kind"] == "timeout"
    assert a["duration_ms"] < 4000


async def test_gigabytes_of_body_are_cut_off(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({**HOSTILE, "delivery": {**HOSTILE["delivery"], "timeout_s": 20}})
    chunk = b"z" * 65536

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4000000000\r\n\r\n")
        for _ in range(60000):  # up to ~4 GB, stopped as soon as the client hangs up
            writer.write(chunk)
            await writer.drain()

    async with raw_server(flood) as (url, _):
        ep = await d.endpoint(url)
        rss_before = _rss_kib(d)
        await d.publish()
        a = await last_attempt(d, ep["id"])
        rss_after = _rss_kib(d)
    assert a["error_kind"] == "response_too_large", a
    assert a["status_code"] == 200
    assert len(a["response_body"]) == 1024
    assert a["duration_ms"] < 10000
    assert rss_after - rss_before < 50 * 1024, (rss_before, rss_after)


async def test_huge_and_malformed_headers(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(HOSTILE)

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\x00\x01\x02\r\n\r\n")
        await writer.drain()

    async with raw_server(huge) as (url1, _), raw_server(garbage) as (url2, _):
        ep1 = await d.endpoint(url1)
        ep2 = await d.endpoint(url2)
        await d.publish()
        a1 = await last_attempt(d, ep1["id"])
        a2 = await last_attempt(d, ep2["id"])
    assert a1["error_kind"] == "invalid_response", a1
    assert a2["error_kind"] in ("invalid_response", "connection_reset"), a2
    for a in (a1, a2):
        assert a["status_code"] is None
        assert a["error_message"]


async def test_redirect_loop_is_not_followed(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(HOSTILE)
    hits: list[int] = []

    async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(1)
        writer.write(
            b"HTTP/1.1 307 Temporary Redirect\r\nLocation: /hook\r\nContent-Length: 0\r\n\r\n"
        )
        await writer.drain()

    async with raw_server(loop) as (url, _):
        ep = await d.endpoint(url)
        await d.publish()
        a = await last_attempt(d, ep["id"])
    assert a["error_kind"] == "redirect" and a["status_code"] == 307
    assert hits == [1]


async def test_connection_reset_mid_response(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(HOSTILE)

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async with raw_server(reset) as (url, _):
        ep = await d.endpoint(url)
        await d.publish()
        a = await last_attempt(d, ep["id"])
    assert a["error_kind"] == "connection_reset", a


def _rss_kib(d: Daemon) -> int:
    assert d.proc is not None
    with open(f"/proc/{d.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
