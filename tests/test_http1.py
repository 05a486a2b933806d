"""The delivery HTTP/1.1 client at the protocol level, against real servers on 127.0.0.1.

Raw servers write exact bytes (split, dripped, malformed) and count connections; aiohttp
servers stand in for ordinary endpoints, with and without TLS. Nothing here is mocked and
nothing connects anywhere but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trustme
from aiohttp import web

from tests.conftest import wait_until
from webhookd import delivery, http1
from webhookd.netguard import AddressPolicy, GuardedResolver

LIMIT = 1 << 20


def make_client(ssl_context: ssl.SSLContext | None = None) -> http1.Client:
    return http1.Client(GuardedResolver(AddressPolicy(["127.0.0.0/8"])), ssl_context=ssl_context)


@pytest.fixture
async def client() -> AsyncIterator[http1.Client]:
    c = make_client()
    try:
        yield c
    finally:
        await c.close()


async def post(
    client: http1.Client,
    url: str,
    body: bytes = b"{}",
    *,
    timeout_s: float = 10.0,
    keep: int = 65536,
    discard: int = LIMIT,
) -> http1.Answer:
    head = http1.header_block(
        {"Host": http1.target(url).host_header, "Content-Length": str(len(body))}
    )
    return await client.post(url, head, body, timeout_s=timeout_s, keep=keep, discard=discard)


async def fails(
    client: http1.Client, url: str, body: bytes = b"{}", *, timeout_s: float = 10.0
) -> http1.Failure:
    with pytest.raises(http1.Failure) as info:
        await post(client, url, body, timeout_s=timeout_s)
    return info.value


# --- a raw server that writes exact bytes ----------------------------------------------


@dataclass
class RawServer:
    url: str = ""
    connections: int = 0  # accepted so far
    requests: list[bytes] = field(default_factory=list)  # every request, head and body
    closed: int = 0  # connections the client closed (clean EOF)
    reset: int = 0  # connections the client reset, or hung up on while the server wrote
    errors: list[BaseException] = field(default_factory=list)


class Peer:
    """The server side of one accepted connection."""

    def __init__(
        self,
        server: RawServer,
        index: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.index = index  # 0 for the first connection accepted
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes | None:
        """The next request on this connection, or None once the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            self.server.closed += 1
            return None
        except ConnectionResetError:
            self.server.reset += 1
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await self.reader.readexactly(length)
        self.server.requests.append(head + body)
        return head + body

    async def send(self, *parts: bytes) -> None:
        """Write each part on its own, so that the client reads each part on its own."""
        for part in parts:
            self.writer.write(part)
            await self.writer.drain()
            # The client is on this loop: two turns, one for the selector to see the bytes
            # and one for the client to read them, before the next part joins them.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    async def until_client_closes(self) -> None:
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionResetError:
            self.server.reset += 1
        else:
            self.server.closed += 1


Handler = Callable[[Peer], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    """A bare TCP server on 127.0.0.1: `handler` gets each connection and speaks whatever
    (broken) HTTP the test wants; the connection is closed when it returns."""
    state = RawServer()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        peer = Peer(state, state.connections, reader, writer)
        state.connections += 1
        try:
            await handler(peer)
        except ConnectionError:
            state.reset += 1  # the client hung up while the server was writing
        except (asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:
            state.errors.append(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    try:
        yield state
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
    if state.errors:
        raise state.errors[0]


def each(response: bytes) -> Handler:
    """Answer every request on every connection with `response`, in one write."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(response)

    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- bodies -----------------------------------------------------------------------------


async def test_content_length_body_and_the_request_on_the_wire(client: http1.Client) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    async with raw_server(each(response)) as server:
        url = server.url.replace("/hook", "/a%2Fb/hook?a=1&b=%26")
        answer = await post(client, url, b'{"x": 1}')
    assert answer == http1.Answer(
        200, {"Content-Type": "text/plain", "Content-Length": "5"}, b"hello", False
    )
    port = url.split(":")[2].split("/")[0]
    assert server.requests == [
        b"POST /a%2Fb/hook?a=1&b=%26 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\nContent-Length: 8\r\n\r\n".encode()
        + b'{"x": 1}'
    ]


async def test_response_one_byte_per_write(client: http1.Client) -> None:
    response = b"HTTP/1.1 200 OK\r\nX-One: 1\r\nContent-Length: 11\r\n\r\nhello world"

    async def drip(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*(response[i : i + 1] for i in range(len(response))))

    async with raw_server(drip) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert (answer.status, answer.body) == (200, b"hello world")
            assert answer.headers["X-One"] == "1"
    assert server.connections == 1  # framed exactly: the connection was kept


async def test_long_head_one_byte_per_write(client: http1.Client) -> None:
    count = http1.MAX_FIELDS - 1  # and Content-Length
    lines = b"".join(b"X-Line-%d: %s\r\n" % (i, b"v" * (i % 50)) for i in range(count))
    response = b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"

    async def drip(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*(response[i : i + 1] for i in range(len(response))))

    async with raw_server(drip) as server:
        answer = await post(client, server.url)
    assert len(answer.headers) == http1.MAX_FIELDS
    assert answer.headers["X-Line-98"] == "v" * 48
    assert answer.body == b"ok"


async def test_response_head_split_at_every_position(client: http1.Client) -> None:
    response = b"HTTP/1.1 201 Created\r\nX-A: b\r\nContent-Length: 3\r\n\r\nabc"

    async def split(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            at = int(request.split(b"\r\n\r\n", 1)[1])  # the client says where
            await peer.send(response[:at], response[at:])

    async with raw_server(split) as server:
        for at in range(1, len(response)):
            answer = await post(client, server.url, str(at).encode())
            assert (answer.status, answer.headers["X-A"], answer.body) == (201, "b", b"abc"), at
    assert server.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\nX-A: b\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\nok",  # CRLF, then a bare LF
        b"HTTP/1.1 200 OK\nX-A: b\r\nContent-Length: 2\r\n\nok",
    ],
    ids=["lf", "crlf-then-lf", "mixed"],
)
async def test_bare_lf_line_ends_are_accepted(client: http1.Client, response: bytes) -> None:
    async with raw_server(each(response)) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert (answer.status, answer.headers, answer.body) == (
                200,
                {"X-A": "b", "Content-Length": "2"},
                b"ok",
            )
    assert server.connections == 1


async def test_status_line_alone_ending_in_crlf_then_lf(client: http1.Client) -> None:
    async with raw_server(each(b"HTTP/1.1 204 No Content\r\n\n")) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert (answer.status, answer.headers, answer.body) == (204, {}, b"")
    assert server.connections == 1


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;x=y\r\nhello\r\n"
    b"1;a=b;c\r\n \r\n"
    b"A\r\nworld-wide\r\n"
    b"0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
)


async def test_chunked_body_with_extensions_and_trailers(client: http1.Client) -> None:
    async with raw_server(each(CHUNKED)) as server:
        for _ in range(3):
            answer = await post(client, server.url)
            assert (answer.status, answer.body) == (200, b"hello world-wide")
            assert answer.headers == {"Transfer-Encoding": "chunked"}
    assert server.connections == 1  # trailers consumed to the end: the connection was kept


@pytest.mark.parametrize("piece", [1, 2, 3, 7])
async def test_chunked_body_in_tiny_pieces(client: http1.Client, piece: int) -> None:
    async def tiny(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(*(CHUNKED[i : i + piece] for i in range(0, len(CHUNKED), piece)))

    async with raw_server(tiny) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert answer.body == b"hello world-wide"
    assert server.connections == 1


async def test_chunked_with_content_length_is_refused(client: http1.Client) -> None:
    # Two framings: a smuggling attempt or a broken stack; llhttp refuses the message.
    for extra in (b"Content-Length: 3\r\n", b"content-length: 3\r\n"):
        response = CHUNKED.replace(b"\r\n\r\n", b"\r\n" + extra + b"\r\n", 1)
        failure = await answer_and_hold(response, client)
        assert failure.kind == "invalid_response", failure.message
        assert "Content-Length" in failure.message


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",  # not hex
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"\r\nhello\r\n0\r\n\r\n",  # empty size line
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\nhello\r\n0\r\n\r\n",  # 17 hex digits
        b"5\r\nhelloXX\r\n0\r\n\r\n",  # chunk not followed by CRLF
        b"5\r\nhello5\r\nworld\r\n0\r\n\r\n",  # ... even if a chunk size line follows
        b"5" * 2000,  # a size line that never ends
    ],
)
async def test_invalid_chunked_framing(client: http1.Client, chunks: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        await peer.until_client_closes()

    async with raw_server(handler) as server:
        failure = await fails(client, server.url)
    assert failure.kind == "invalid_response", failure.message
    assert failure.status == 200


async def test_trailers_are_held_to_the_head_limit(client: http1.Client) -> None:
    start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    line = b"X-Trailer: " + b"t" * 1000 + b"\r\n"

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            lines = int(request.split(b"\r\n\r\n", 1)[1])  # the client says how many
            await peer.send(start + line * lines + b"\r\n")

    async with raw_server(handler) as server:
        answer = await post(client, server.url, b"60")  # 60 KiB of trailers is fine
        assert (answer.status, answer.body) == (200, b"ok")
        failure = await fails(client, server.url, b"1000")  # 1 MB is not
    assert failure.kind == "invalid_response", failure.message
    assert "trailers" in failure.message
    assert server.connections == 1  # the trailers were framed exactly: the connection was kept


async def test_read_until_close_body(client: http1.Client) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n", b"part one, ", b"part two")
        # returning closes the connection: that ends the body

    async with raw_server(handler) as server:
        first = await post(client, server.url)
        second = await post(client, server.url)
    for answer in (first, second):
        assert (answer.status, answer.headers, answer.body) == (
            200,
            {"X-A": "b"},
            b"part one, part two",
        )
    assert server.connections == 2


# --- interim answers --------------------------------------------------------------------


async def test_interim_answers_are_skipped(client: http1.Client) -> None:
    real = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"
    hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            if peer.server.requests[-1].endswith(b"together"):
                await peer.send(continue_ + hints + real)
            else:
                await peer.send(continue_, hints, real)

    async with raw_server(handler) as server:
        for body in (b"apart", b"together"):
            answer = await post(client, server.url, body)
            assert (answer.status, answer.headers, answer.body) == (
                201,
                {"Content-Length": "2"},
                b"ok",
            )
    assert server.connections == 1


async def test_switching_protocols_is_invalid(client: http1.Client) -> None:
    response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
    async with raw_server(each(response)) as server:
        failure = await fails(client, server.url)
    assert failure.kind == "invalid_response"
    assert "switched protocols" in failure.message


# --- reuse and non-reuse ----------------------------------------------------------------


async def test_204_without_body_keeps_the_connection(client: http1.Client) -> None:
    async with raw_server(each(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")) as server:
        for _ in range(3):
            answer = await post(client, server.url)
            assert (answer.status, answer.headers, answer.body) == (204, {"X-A": "b"}, b"")
    assert server.connections == 1


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["http10", "http10-keep-alive", "close", "close-in-a-list"],
)
async def test_connection_not_reused(client: http1.Client, response: bytes) -> None:
    # The server would answer again on the same connection; the client must not ask.
    async with raw_server(each(response)) as server:
        for _ in range(3):
            answer = await post(client, server.url)
            assert (answer.status, answer.body) == (200, b"ok")
        await wait_until(lambda: server.closed == 3, 10, "the client to close each connection")
    assert server.connections == 3
    assert len(server.requests) == 3


@dataclass
class WebServer:
    url: str
    peers: list[str]  # the client address of each request
    in_flight: int = 0
    most_in_flight: int = 0


@contextlib.asynccontextmanager
async def web_server(
    *, gate: int = 0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[WebServer]:
    """An aiohttp server answering "ok"; with `gate`, each request waits until `gate`
    requests are being handled at once (so that many connections must be open)."""
    state = WebServer("", [])
    arrived = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        state.peers.append(str(request.transport.get_extra_info("peername")))  # type: ignore[union-attr]
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            if gate and state.in_flight >= gate:
                arrived.set()
            if gate:
                await asyncio.wait_for(arrived.wait(), 10)
            return web.Response(text="ok", headers={"X-Seen": str(len(state.peers))})
        finally:
            state.in_flight -= 1

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    scheme = "https" if ssl_context else "http"
    state.url = f"{scheme}://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


async def test_repeated_answers_stay_independent(client: http1.Client) -> None:
    response = b"HTTP/1.1 201 Created\r\nX-A: 1\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(each(response)) as server:
        first = await post(client, server.url)
        first.headers["X-A"] = "changed by the first caller"
        second = await post(client, server.url)
        third = await post(client, server.url)
    expected = http1.Answer(201, {"X-A": "1, 2", "Content-Length": "2"}, b"ok", False)
    assert second == expected and third == expected
    assert second.headers is not third.headers
    assert server.connections == 1


async def test_sequential_requests_reuse_one_connection(client: http1.Client) -> None:
    async with web_server() as server:
        for i in range(5):
            answer = await post(client, server.url)
            assert (answer.status, answer.body, answer.headers["X-Seen"]) == (
                200,
                b"ok",
                str(i + 1),
            )
        peers = list(server.peers)
    assert len(peers) == 5
    assert len(set(peers)) == 1


async def test_concurrent_requests_open_several_connections_then_reuse_them(
    client: http1.Client,
) -> None:
    async with web_server(gate=3) as server:
        for _ in range(3):
            answers = await asyncio.gather(*(post(client, server.url) for _ in range(3)))
            assert [a.body for a in answers] == [b"ok"] * 3
        peers = list(server.peers)
        most = server.most_in_flight
    assert most == 3
    assert len(peers) == 9
    assert len(set(peers)) == 3


async def test_idle_connections_are_capped_over_all_origins() -> None:
    capped = http1.Client(GuardedResolver(AddressPolicy(["127.0.0.0/8"])), max_idle=2)
    try:
        async with web_server(gate=3) as server:
            for _ in range(2):
                answers = await asyncio.gather(*(post(capped, server.url) for _ in range(3)))
                assert [a.body for a in answers] == [b"ok"] * 3
            peers = list(server.peers)
    finally:
        await capped.close()
    # Three at once each round, but only two kept: the second round opens one new one.
    assert len(set(peers)) == 4
    assert len(peers) == 6


async def test_delivery_send_reuses_the_connection(client: http1.Client) -> None:
    async with web_server() as server:
        for _ in range(3):
            r = await delivery.send(
                client,
                server.url,
                b"{}",
                {"Content-Type": "application/json"},
                timeout_s=10,
                max_response_bytes=100,
            )
            assert (r.ok, r.status_code, r.body, r.error_kind) == (True, 200, "ok", None)
            assert r.request_headers["Content-Length"] == "2"
        peers = list(server.peers)
    assert len(set(peers)) == 1


# --- connections the endpoint closes ----------------------------------------------------


def idle_connections(client: http1.Client) -> list[http1._Conn]:
    return [c for conns in client._idle.values() for c in conns]


async def test_idle_connection_closed_by_the_endpoint(client: http1.Client) -> None:
    async def answer_once(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)  # keep-alive by default, and then close it anyway

    async with raw_server(answer_once) as server:
        assert (await post(client, server.url)).body == b"ok"
        # The client notices the close while the connection sits idle.
        await wait_until(
            lambda: (conns := idle_connections(client)) and all(c.lost for c in conns),
            10,
            "the client to see EOF",
        )
        assert (await post(client, server.url)).body == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 2


async def test_endpoint_closing_a_kept_connection_without_answer_is_retried_once(
    client: http1.Client,
) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
            await peer.request()  # the second request arrives, and is not answered
            return
        while await peer.request() is not None:
            await peer.send(OK)

    async with raw_server(handler) as server:
        assert (await post(client, server.url, b"first")).body == b"ok"
        assert (await post(client, server.url, b"second")).body == b"ok"
        assert (await post(client, server.url, b"third")).body == b"ok"
    assert server.connections == 2
    bodies = [r.split(b"\r\n\r\n", 1)[1] for r in server.requests]
    assert bodies == [b"first", b"second", b"second", b"third"]


async def test_kept_connection_reset_after_the_request_is_retried_once(
    client: http1.Client,
) -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(OK)
            await peer.request()
            peer.writer.transport.abort()  # RST rather than FIN
            return
        while await peer.request() is not None:
            await peer.send(OK)

    async with raw_server(handler) as server:
        assert (await post(client, server.url)).body == b"ok"
        assert (await post(client, server.url)).body == b"ok"
    assert server.connections == 2
    assert len(server.requests) == 3


async def test_new_connection_closed_without_answer_is_not_retried(client: http1.Client) -> None:
    async def hang_up(peer: Peer) -> None:
        await peer.request()

    async with raw_server(hang_up) as server:
        failure = await fails(client, server.url)
        assert failure.kind == "connection_reset"
        assert failure.status is None
        assert server.connections == 1
        assert len(server.requests) == 1


async def test_kept_connection_that_answered_partly_is_not_retried(client: http1.Client) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")

    async with raw_server(handler) as server:
        assert (await post(client, server.url)).body == b"ok"
        failure = await fails(client, server.url)
        assert failure.kind == "connection_reset"
        assert (failure.status, failure.body) == (200, b"part")
        assert server.connections == 1


# --- limits -----------------------------------------------------------------------------


async def test_keep_bytes_of_a_longer_body(client: http1.Client) -> None:
    body = bytes(range(256)) * 40
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with raw_server(each(response)) as server:
        for keep in (0, 10, 10240, 20000):
            answer = await post(client, server.url, keep=keep, discard=len(body))
            assert answer.body == body[:keep]
            assert answer.too_large is False
    assert server.connections == 1  # the rest was read and thrown away, exactly


async def test_body_over_the_discard_limit_drops_the_connection(client: http1.Client) -> None:
    body = b"y" * 300_000
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with raw_server(each(response)) as server:
        answer = await post(client, server.url, keep=100, discard=1000)
        assert (answer.status, answer.body, answer.too_large) == (200, b"y" * 100, True)
        await wait_until(lambda: server.closed + server.reset == 1, 10, "the client to hang up")
        answer = await post(client, server.url, keep=100, discard=len(body))
        assert (answer.body, answer.too_large) == (b"y" * 100, False)
    assert server.connections == 2


async def test_chunked_body_over_the_discard_limit(client: http1.Client) -> None:
    chunk = b"1000\r\n" + b"c" * 4096 + b"\r\n"
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 10

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        await peer.until_client_closes()

    async with raw_server(handler) as server:
        answer = await post(client, server.url, keep=5, discard=10_000)
    assert (answer.status, answer.body, answer.too_large) == (200, b"ccccc", True)


async def test_delivery_send_reports_too_large(client: http1.Client) -> None:
    body = b"q" * (delivery.DISCARD_LIMIT_BYTES + 10)
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with raw_server(each(response)) as server:
        r = await delivery.send(client, server.url, b"{}", {}, timeout_s=10, max_response_bytes=8)
    assert (r.status_code, r.body, r.error_kind, r.ok) == (
        200,
        "qqqqqqqq",
        "response_too_large",
        False,
    )


def with_head(lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return status + b"\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


async def answer_and_hold(response: bytes, client: http1.Client) -> http1.Failure:
    """Answer with `response` and keep the connection open: the client has to decide."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)
        await peer.until_client_closes()

    async with raw_server(handler) as server:
        return await fails(client, server.url)


@pytest.mark.parametrize(
    "response",
    [
        # a complete header block over 64 KiB, every line under the line limit
        with_head(b"".join(b"X-%d: %s\r\n" % (i, b"h" * 8000) for i in range(9))),
        # a header block that never ends
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: h\r\n" * 7000,
        # one line over 8190 bytes
        with_head(b"X-Long: " + b"l" * 8183 + b"\r\n"),
        # ... in bytes, though under 8190 characters
        with_head(b"X-Long: " + "é".encode() * 4100 + b"\r\n"),
        with_head(b"X-Long: " + b"\xff" * 8183 + b"\r\n"),
    ],
    ids=["complete-over-64k", "endless-over-64k", "line-over-8190", "utf8", "not-utf8"],
)
async def test_header_limits(client: http1.Client, response: bytes) -> None:
    failure = await answer_and_hold(response, client)
    assert failure.kind == "invalid_response", failure.message
    assert failure.status is None


async def test_header_lines_at_the_limits_are_accepted(client: http1.Client) -> None:
    line = b"X-Long: " + b"l" * 8182  # 8190 bytes
    assert len(line) == http1.MAX_FIELD_BYTES
    lines = b"X-A: " + b"a" * 8000 + b"\r\n"
    response = with_head(line + b"\r\n" + lines * 6)
    assert response.index(b"\r\n\r\n") <= http1.MAX_HEAD_BYTES
    async with raw_server(each(response)) as server:
        answer = await post(client, server.url)
    assert answer.headers["X-Long"] == "l" * 8182
    assert answer.headers["X-A"] == ", ".join(["a" * 8000] * 6)


@pytest.mark.parametrize(
    "lines",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
        b"Content-Length: 2, 3\r\n",
        b"Content-Length: -2\r\n",
        b"Content-Length: +2\r\n",
        b"Content-Length: 0x2\r\n",
        b"Content-Length:\r\n",
        "Content-Length: ²\r\n".encode(),  # a Unicode digit, not an ASCII one
        "Content-Length: ٢\r\n".encode(),  # ARABIC-INDIC DIGIT TWO
        b"Content-Length: " + b"9" * 5000 + b"\r\n",  # more digits than int() takes
        b"Content-Length: 1" + b"0" * 20 + b"\r\n",  # past 2**64
        b"Content-Length: 2\r\ncontent-length: 2, 2\r\n",  # repeated, even if equal
        b"Content-Length: 2\r\nContent-Length: 2\r\n",
    ],
    ids=[
        "abc",
        "two-values",
        "list",
        "negative",
        "plus",
        "hex",
        "empty",
        "superscript",
        "arabic-indic",
        "5000-digits",
        "past-2**64",
        "repeated-equal-list",
        "repeated-equal",
    ],
)
async def test_bad_content_length(client: http1.Client, lines: bytes) -> None:
    failure = await answer_and_hold(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\nok", client)
    assert failure.kind == "invalid_response", failure.message
    assert "Content-Length" in failure.message


@pytest.mark.parametrize(
    "status",
    [
        b"NOT HTTP AT ALL",
        b"HTTP/2 200 OK",
        b"HTTP/1.2 200 OK",
        b"http/1.1 200 OK",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1  200 OK",
        b"ICY 200 OK",
        b"\x16\x03\x01\x02\x00",  # a TLS record
    ],
)
async def test_garbage_status_line(client: http1.Client, status: bytes) -> None:
    failure = await answer_and_hold(with_head(b"", status), client)
    assert failure.kind == "invalid_response", failure.message
    assert failure.status is None


@pytest.mark.parametrize(
    "lines",
    [
        b"No colon here\r\n",
        b"  continued\r\n",  # a continuation with nothing to continue
        b"X-A : b\r\n",  # space before the colon
        b": no name\r\n",
        b"X(A): b\r\n",
        b"X-A: b\rc\r\n",
    ],
)
async def test_bad_header_lines(client: http1.Client, lines: bytes) -> None:
    failure = await answer_and_hold(with_head(lines), client)
    assert failure.kind == "invalid_response", failure.message
    assert failure.status is None


# --- timeouts, refusals -----------------------------------------------------------------


async def test_endpoint_that_never_answers_times_out(client: http1.Client) -> None:
    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.until_client_closes()

    async with raw_server(silent) as server:
        started = time.monotonic()
        failure = await fails(client, server.url, timeout_s=0.5)
        elapsed = time.monotonic() - started
        await wait_until(lambda: server.closed + server.reset == 1, 10, "the client to hang up")
    assert failure.kind == "timeout"
    assert "0.5 s" in failure.message
    assert (failure.status, failure.headers, failure.body) == (None, {}, b"")
    assert 0.45 <= elapsed < 5


async def test_each_open_request_times_out_at_its_own_deadline(client: http1.Client) -> None:
    """Deadlines are checked for all open requests together: each still fails at its own
    time, and a request that is answered in time is not touched."""

    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.until_client_closes()

    async def timed(url: str, timeout_s: float) -> tuple[str, float]:
        started = time.monotonic()
        failure = await fails(client, url, timeout_s=timeout_s)
        return failure.kind, time.monotonic() - started

    async with raw_server(silent) as server, web_server() as good:
        short, long, answered = await asyncio.gather(
            timed(server.url, 0.3), timed(server.url, 1.2), post(client, good.url, b"{}")
        )
    assert short[0] == long[0] == "timeout"
    assert 0.3 <= short[1] < 1.0, short
    assert 1.2 <= long[1] < 3.0, long
    assert answered.status == 200


async def test_head_arriving_too_slowly_times_out(client: http1.Client) -> None:
    async def slow_head(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        for i in range(1000):
            await peer.send(b"X-%d: y\r\n" % i)
            await asyncio.sleep(0.05)  # the endpoint's pace, not a wait for anything

    async with raw_server(slow_head) as server:
        started = time.monotonic()
        failure = await fails(client, server.url, timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert failure.kind == "timeout"
    assert failure.status is None
    assert elapsed < 5


async def test_body_dripping_past_the_deadline_times_out_with_what_arrived(
    client: http1.Client,
) -> None:
    async def drip(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nX-Drip: yes\r\nContent-Length: 100000\r\n\r\nstart")
        for _ in range(1000):
            await peer.send(b".")
            await asyncio.sleep(0.05)  # the endpoint's pace, not a wait for anything

    async with raw_server(drip) as server:
        started = time.monotonic()
        failure = await fails(client, server.url, timeout_s=0.6)
        elapsed = time.monotonic() - started
    assert failure.kind == "timeout"
    assert failure.status == 200
    assert failure.headers == {"X-Drip": "yes", "Content-Length": "100000"}
    assert failure.body.startswith(b"start")
    assert 0.5 <= elapsed < 5


async def test_connection_refused(client: http1.Client) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    failure = await fails(client, f"http://127.0.0.1:{port}/hook")
    assert failure.kind == "connection_refused"
    assert failure.status is None


# --- TLS --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_tls_delivery_to_a_trusted_certificate(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("localhost", "127.0.0.1"))
    client = make_client(trusting(ca))
    try:
        async with web_server(ssl_context=ctx) as server:
            port = server.url.split(":")[2].split("/")[0]
            for url in (f"https://localhost:{port}/hook", f"https://127.0.0.1:{port}/"):
                for _ in range(2):
                    answer = await post(client, url)
                    assert (answer.status, answer.body) == (200, b"ok")
            r = await delivery.send(
                client, server.url, b"{}", {}, timeout_s=10, max_response_bytes=10
            )
            assert (r.ok, r.body) == (True, "ok")
            peers = list(server.peers)
    finally:
        await client.close()
    assert len(peers) == 5
    assert len(set(peers)) == 2  # one kept connection per host name


async def test_tls_with_the_system_trust_store_refuses_a_private_ca(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("localhost", "127.0.0.1"))
    client = make_client()
    try:
        async with web_server(ssl_context=ctx) as server:
            failure = await fails(client, server.url)
            peers = list(server.peers)
    finally:
        await client.close()
    assert failure.kind == "tls", failure.message
    assert "certificate" in failure.message
    assert peers == []


async def test_tls_certificate_for_another_name(ca: trustme.CA) -> None:
    ctx = server_context(ca.issue_cert("other.example"))
    client = make_client(trusting(ca))
    try:
        async with web_server(ssl_context=ctx) as server:
            port = server.url.split(":")[2].split("/")[0]
            for url in (f"https://localhost:{port}/hook", server.url):
                failure = await fails(client, url)
                assert failure.kind == "tls", failure.message
            peers = list(server.peers)
    finally:
        await client.close()
    assert peers == []


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
async def test_tls_certificate_names_are_checked_per_url(ca: trustme.CA, name: str) -> None:
    ctx = server_context(ca.issue_cert(name))
    client = make_client(trusting(ca))
    try:
        async with web_server(ssl_context=ctx) as server:
            port = server.url.split(":")[2].split("/")[0]
            other = "127.0.0.1" if name == "localhost" else "localhost"
            answer = await post(client, f"https://{name}:{port}/hook")
            assert answer.body == b"ok"
            failure = await fails(client, f"https://{other}:{port}/hook")
            assert failure.kind == "tls", failure.message
            peers = list(server.peers)
    finally:
        await client.close()
    assert len(peers) == 1


async def test_plain_http_answer_to_tls_fails_as_tls(ca: trustme.CA) -> None:
    async def plain(peer: Peer) -> None:
        await peer.send(OK)  # at once, over the client's hello
        await peer.until_client_closes()

    client = make_client(trusting(ca))
    try:
        async with raw_server(plain) as server:
            failure = await fails(client, server.url.replace("http://", "https://"))
    finally:
        await client.close()
    assert failure.kind == "tls", failure.message


# --- header values ----------------------------------------------------------------------


async def test_duplicate_headers_are_joined_and_names_keep_their_case(
    client: http1.Client,
) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\n"
        b"Set-Cookie: a=1\r\n"
        b"X-MiXeD-Case: v\r\n"
        b"Set-Cookie: b=2\r\n"
        b"Set-Cookie: c=3\r\n"
        b"X-Empty:\r\n"
        b"X-Spaces: \t padded \t\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    async with raw_server(each(response)) as server:
        answer = await post(client, server.url)
    assert answer.headers == {
        "Set-Cookie": "a=1, b=2, c=3",
        "X-MiXeD-Case": "v",
        "X-Empty": "",
        "X-Spaces": "padded",
        "Content-Length": "2",
    }


async def test_non_utf8_header_bytes_do_not_crash(client: http1.Client) -> None:
    response = (
        b"HTTP/1.1 200 \xc9t\xe9 OK\r\nX-Latin1: caf\xe9\r\nX-Bytes: \xff\xfe\x80\r\n"
        b"X-Utf8: caf\xc3\xa9\r\nContent-Length: 2\r\n\r\nok"
    )
    async with raw_server(each(response)) as server:
        answer = await post(client, server.url)
        r = await delivery.send(client, server.url, b"{}", {}, timeout_s=10, max_response_bytes=9)
    assert answer.status == 200
    assert answer.headers["X-Latin1"] == "caf\ufffd"
    assert answer.headers["X-Bytes"] == "\ufffd\ufffd\ufffd"
    assert answer.headers["X-Utf8"] == "café"
    assert (r.ok, r.header("x-utf8")) == (True, "café")


# --- bytes beyond the response ----------------------------------------------------------


async def test_two_responses_at_once_answers_the_first_and_drops_the_connection(
    client: http1.Client,
) -> None:
    second = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbad"
    async with raw_server(each(OK + second)) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert (answer.status, answer.body) == (200, b"ok")
        await wait_until(lambda: server.closed == 2, 10, "the client to close both connections")
    assert server.connections == 2


async def test_204_followed_by_bytes_is_not_reused(client: http1.Client) -> None:
    async with raw_server(each(b"HTTP/1.1 204 No Content\r\n\r\nsurprise")) as server:
        for _ in range(2):
            assert (await post(client, server.url)).status == 204
    assert server.connections == 2


async def test_bytes_while_idle_drop_the_connection(client: http1.Client) -> None:
    answered = asyncio.Event()

    async def talkative(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(OK)
            if peer.index == 0:
                await asyncio.wait_for(answered.wait(), 10)
                await peer.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")

    async with raw_server(talkative) as server:
        assert (await post(client, server.url)).body == b"ok"
        answered.set()
        await wait_until(lambda: server.closed + server.reset == 1, 10, "the client to hang up")
        assert (await post(client, server.url)).body == b"ok"
    assert server.connections == 2


# --- shutting down ----------------------------------------------------------------------


async def test_close_closes_idle_connections_and_refuses_new_requests() -> None:
    client = make_client()
    async with raw_server(each(OK)) as server:
        try:
            assert (await post(client, server.url)).body == b"ok"
            assert server.closed == 0
        finally:
            await client.close()
        await wait_until(lambda: server.closed == 1, 10, "the server to see EOF")
        failure = await fails(client, server.url)
    assert failure.kind == "connection_error"
    assert server.connections == 1


async def test_close_aborts_a_request_in_flight() -> None:
    client = make_client()

    async def silent(peer: Peer) -> None:
        await peer.request()
        await peer.until_client_closes()

    async with raw_server(silent) as server:
        try:
            task = asyncio.create_task(post(client, server.url))
            await wait_until(lambda: server.requests, 10, "the request to arrive")
        finally:
            await client.close()
        with pytest.raises(http1.Failure) as info:
            await asyncio.wait_for(task, 10)
        await wait_until(lambda: server.closed + server.reset == 1, 10, "the server to see it")
    assert info.value.kind == "connection_reset"


# --- what llhttp leaves to us: folds, limits, the end of a close-delimited body ---------


async def test_folded_header_lines_are_joined_with_a_space(client: http1.Client) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\n"
        b"X-Folded: first\r\n  second\r\n\tthird\r\n"
        b"X-Plain: a  b\r\n"  # not folded, but in a folded head: its blanks are joined too
        b"X-After: z\r\n"
        b"Content-Length: 2\r\n\r\nok"
    )
    async with raw_server(each(response)) as server:
        for _ in range(2):
            answer = await post(client, server.url)
            assert (answer.status, answer.body) == (200, b"ok")
            assert answer.headers == {
                "X-Folded": "first second third",
                "X-Plain": "a b",
                "X-After": "z",
                "Content-Length": "2",
            }
        # A head without a fold keeps its values exactly (after the outer blanks).
        plain = b"HTTP/1.1 200 OK\r\nX-Plain: a  b\t c\r\nContent-Length: 2\r\n\r\nok"
    async with raw_server(each(plain)) as server:
        assert (await post(client, server.url)).headers["X-Plain"] == "a  b\t c"
    assert server.connections == 1


async def test_folded_header_through_delivery_send(client: http1.Client) -> None:
    response = b"HTTP/1.1 503 Busy\r\nRetry-After:\r\n 120\r\nContent-Length: 0\r\n\r\n"
    async with raw_server(each(response)) as server:
        r = await delivery.send(client, server.url, b"{}", {}, timeout_s=10, max_response_bytes=9)
    assert (r.status_code, r.header("retry-after"), r.error_kind) == (503, "120", None)


async def test_redirect_location_is_found_whatever_its_case(client: http1.Client) -> None:
    for name in (b"Location", b"location", b"LOCATION", b"LoCaTiOn"):
        response = b"HTTP/1.1 302 Found\r\n%s: https://example.com/new\r\nContent-Length: 0\r\n\r\n"
        async with raw_server(each(response % name)) as server:
            r = await delivery.send(
                client, server.url, b"{}", {}, timeout_s=10, max_response_bytes=9
            )
        assert (r.status_code, r.error_kind) == (302, "redirect")
        assert r.error_message is not None
        assert "302 to https://example.com/new" in r.error_message, r.error_message
        assert r.headers == {name.decode(): "https://example.com/new", "Content-Length": "0"}


async def test_interim_heads_count_against_the_head_limit(client: http1.Client) -> None:
    continue_ = b"HTTP/1.1 100 Continue\r\n\r\n"

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            count = int(request.split(b"\r\n\r\n", 1)[1])  # the client says how many
            await peer.send(continue_ * count + OK)

    within = (http1.MAX_HEAD_BYTES - len(OK)) // len(continue_)
    async with raw_server(handler) as server:
        answer = await post(client, server.url, str(within).encode())
        assert (answer.status, answer.body) == (200, b"ok")
        failure = await fails(client, server.url, str(within + 2).encode())
    assert failure.kind == "invalid_response", failure.message
    assert str(http1.MAX_HEAD_BYTES) in failure.message
    assert failure.status is None
    assert server.connections == 1


async def test_more_header_fields_than_the_limit(client: http1.Client) -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(http1.MAX_FIELDS))
    failure = await answer_and_hold(with_head(lines), client)
    assert failure.kind == "invalid_response", failure.message
    assert "header fields" in failure.message


async def test_trailer_fields_are_counted(client: http1.Client) -> None:
    trailers = b"".join(b"X-%d: v\r\n" % i for i in range(http1.MAX_FIELDS + 1))
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n"
    failure = await answer_and_hold(response + trailers + b"\r\n", client)
    assert failure.kind == "invalid_response", failure.message
    assert (failure.status, failure.body) == (200, b"ok")


async def test_head_then_body_in_one_write_past_the_head_limit(client: http1.Client) -> None:
    # The head is fed to the parser no further than the limit; the rest of the same read
    # is body, read to its end: the connection stays exact and is kept.
    head = with_head(b"X-Pad: " + b"p" * 8000 + b"\r\n").split(b"Content-Length")[0]
    body = b"b" * 200_000
    response = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    async with raw_server(each(response)) as server:
        for _ in range(2):
            answer = await post(client, server.url, keep=10)
            assert (answer.status, answer.body, answer.too_large) == (200, b"bbbbbbbbbb", False)
    assert server.connections == 1


async def test_chunk_framing_counts_against_the_discard_limit(client: http1.Client) -> None:
    """One-byte chunks: 6 bytes on the wire per byte of body. The body stays under the
    discard limit, the wire does not: the answer is cut off as too large."""
    chunks = b"1\r\nx\r\n" * 40_000  # 40,000 bytes of body, 240,000 on the wire

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        await peer.until_client_closes()

    async with raw_server(handler) as server:
        discard = 100_000
        answer = await post(client, server.url, keep=3, discard=discard)
    assert (answer.status, answer.body, answer.too_large) == (200, b"xxx", True)


async def test_chunk_framing_without_body_data_is_bounded(client: http1.Client) -> None:
    # A chunk extension that never ends, a few bytes at a time.
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1;a=")
        for _ in range(100):
            await peer.send(b"b" * 1000)
        await peer.until_client_closes()

    async with raw_server(handler) as server:
        failure = await fails(client, server.url)
    assert failure.kind == "invalid_response", failure.message
    assert (failure.status, failure.body) == (200, b"ok")


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",  # not chunked: until close
        b"HTTP/1.0 200 OK\r\n\r\n",
    ],
    ids=["no-framing", "transfer-encoding-not-chunked", "http10"],
)
async def test_close_delimited_body_ends_at_eof(client: http1.Client, head: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head, b"a body ", b"in parts")

    async with raw_server(handler) as server:
        answer = await post(client, server.url)
    assert (answer.status, answer.body, answer.too_large) == (200, b"a body in parts", False)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nConnection: close\r\n\r\npart",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\npart\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, CHUNKED\r\n\r\n4\r\npart\r\n",
    ],
    ids=["length", "length-close", "chunked", "chunked-last"],
)
async def test_framed_body_cut_off_by_eof(client: http1.Client, response: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(response)

    async with raw_server(handler) as server:
        failure = await fails(client, server.url)
    assert failure.kind == "connection_reset", failure.message
    assert (failure.status, failure.body) == (200, b"part")


async def test_bytes_after_a_chunked_answer_in_the_same_write(client: http1.Client) -> None:
    async with raw_server(each(CHUNKED + b"HTTP/1.1 200 OK\r\n")) as server:
        for _ in range(2):
            assert (await post(client, server.url)).body == b"hello world-wide"
    assert server.connections == 2


async def test_http_version_other_than_1x_is_refused(client: http1.Client) -> None:
    failure = await answer_and_hold(with_head(b"", b"HTTP/2.0 200 OK"), client)
    assert failure.kind == "invalid_response", failure.message
    assert "version" in failure.message
