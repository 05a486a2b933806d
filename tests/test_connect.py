"""How the delivery client opens connections (webhookd.connect, driven through
webhookd.http1.Client): Happy Eyeballs over the checked addresses, a forward proxy (CONNECT
for https, absolute form for plain http), and per-endpoint TLS (a private CA, mutual TLS).

Everything is real and on loopback: a listening socket on ::1 whose accept queue is full
(so connects to it hang), aiohttp receivers, and a small forward proxy written here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from tests.conftest import Receiver
from webhookd import http1
from webhookd.connect import DIRECT, Route, open_connection
from webhookd.netguard import AddressPolicy, GuardedResolver

LOOPBACK = ["127.0.0.0/8"]


class TableResolver(AbstractResolver):
    """Answers names from a table of (address, port) and records every lookup; anything
    else is an unknown name, as a real resolver would say."""

    def __init__(self, table: dict[str, list[tuple[str, int]]] | None = None) -> None:
        self.table = table or {}
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.table:
            raise OSError(f"unknown host {host!r}")
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=answer_port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address, answer_port in self.table[host]
        ]

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def client_for(
    allow: list[str],
    inner: AbstractResolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[http1.Client]:
    client = http1.Client(GuardedResolver(AddressPolicy(allow), inner), ssl_context=ssl_context)
    try:
        yield client
    finally:
        await client.close()


async def post(
    client: http1.Client, url: str, route: Route = DIRECT, timeout_s: float = 5
) -> http1.Answer:
    head = http1.header_block({"Host": http1.target(url).host_header, "Content-Length": "2"})
    return await client.post(
        url, head, b"{}", timeout_s=timeout_s, keep=1000, discard=1 << 20, route=route
    )


async def failure(client: http1.Client, url: str, route: Route = DIRECT) -> http1.Failure:
    with pytest.raises(http1.Failure) as info:
        await post(client, url, route)
    return info.value


def port_of(url: str) -> int:
    port = URL(url).port
    assert port is not None
    return port


def closed_port(family: socket.AddressFamily, host: str) -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket(family) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


# --- Happy Eyeballs -------------------------------------------------------------------------


@pytest.fixture
def stalled_v6_port() -> Iterator[int]:
    """A port on ::1 where connects hang: a listener with backlog 0 that never accepts,
    its queue filled by one connection, so the kernel drops further SYNs."""
    listener = socket.socket(socket.AF_INET6)
    try:
        listener.bind(("::1", 0))
    except OSError as exc:
        listener.close()
        pytest.skip(f"no IPv6 loopback address (::1) on this host: {exc}")
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("::1", port), timeout=2)
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.settimeout(0.3)
            try:
                probe.connect(("::1", port))
            except TimeoutError:
                pass  # as wanted: the connect hangs
            else:
                pytest.skip("this kernel completes connects past a full accept queue")
        yield port
    finally:
        filler.close()
        listener.close()


async def test_an_unreachable_ipv6_address_falls_back_to_ipv4_in_a_quarter_second(
    receiver: Receiver, stalled_v6_port: int
) -> None:
    port = port_of(receiver.url)
    inner = TableResolver({"dual.test": [("::1", stalled_v6_port), ("127.0.0.1", port)]})
    async with client_for(["127.0.0.0/8", "::1/128"], inner) as client:
        started = time.monotonic()
        answer = await post(client, f"http://dual.test:{port}/hook", timeout_s=5)
        elapsed = time.monotonic() - started
    assert answer.status == 200
    assert len(receiver.received) == 1
    # ::1 was tried first and given the RFC 8305 delay (250 ms) before IPv4 started;
    # tried one after another, the request would have waited out its 5 s timeout.
    assert 0.2 <= elapsed < 1.0, elapsed


async def test_only_the_addresses_that_passed_the_guard_are_raced(receiver: Receiver) -> None:
    """::1 comes first in the answer but is not allowed here, so it is never connected to."""
    with socket.socket(socket.AF_INET6) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback address (::1) on this host: {exc}")
        listener.listen(8)
        listener.setblocking(False)
        port = port_of(receiver.url)
        table = {"dual.test": [("::1", listener.getsockname()[1]), ("127.0.0.1", port)]}
        async with client_for(LOOPBACK, TableResolver(table)) as client:
            answer = await post(client, f"http://dual.test:{port}/hook")
        assert answer.status == 200
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected to ::1


async def test_every_address_refusing_is_connection_refused() -> None:
    v4 = closed_port(socket.AF_INET, "127.0.0.1")
    table = [("127.0.0.1", v4), ("127.0.0.1", closed_port(socket.AF_INET, "127.0.0.1"))]
    if socket.has_ipv6:
        with contextlib.suppress(OSError):
            table.insert(0, ("::1", closed_port(socket.AF_INET6, "::1")))
    inner = TableResolver({"gone.test": table})
    async with client_for(["127.0.0.0/8", "::1/128"], inner) as client:
        error = await failure(client, f"http://gone.test:{v4}/hook")
    assert error.kind == "connection_refused"


# --- a forward proxy ------------------------------------------------------------------------


@dataclass
class Seen:
    request_line: str
    headers: dict[str, str]


@dataclass
class ForwardProxy:
    """A forward proxy on 127.0.0.1 that resolves the names in `names` to 127.0.0.1 itself:
    CONNECT tunnels, absolute-form plain http, Basic auth when `credentials` are set, and
    scripted misbehaviour (`answer` a fixed status, `hang_up` during CONNECT). Records the
    head of every request it gets."""

    names: set[str] = field(default_factory=set)
    credentials: tuple[str, str] | None = None
    answer: int | None = None
    hang_up: bool = False
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *lines = head.decode("latin-1").split("\r\n")
            headers = dict(h.split(": ", 1) for h in lines if h)
            self.seen.append(Seen(line, {k.lower(): v for k, v in headers.items()}))
            refusal = self._refusal(headers.get("Proxy-Authorization"))
            if self.hang_up or refusal is not None:
                writer.write(refusal or b"")
                return
            method, target, _ = line.split(" ")
            if method == "CONNECT":
                await self._tunnel(target, writer, reader)
            else:
                await self._forward(method, target, lines, reader, writer)
        finally:
            writer.close()

    def _refusal(self, authorization: str | None) -> bytes | None:
        if self.credentials is not None:
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            if authorization != f"Basic {token}":
                return (
                    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                    b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n'
                )
        if self.answer is not None:
            return f"HTTP/1.1 {self.answer} Scripted\r\nContent-Length: 0\r\n\r\n".encode()
        return None

    async def _upstream(self, host: str, port: int) -> tuple[Any, Any]:
        if host not in self.names:
            raise OSError(f"the proxy does not know {host}")
        return await asyncio.open_connection("127.0.0.1", port)

    async def _tunnel(
        self, target: str, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
    ) -> None:
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await self._upstream(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await self._pipe(reader, writer, up_reader, up_writer)

    async def _forward(
        self,
        method: str,
        target: str,
        lines: list[str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        url = URL(target)
        assert url.host is not None and url.port is not None
        up_reader, up_writer = await self._upstream(url.host, url.port)
        kept = [h for h in lines if h and not h.lower().startswith("proxy-authorization:")]
        up_writer.write(f"{method} {url.raw_path_qs} HTTP/1.1\r\n".encode())
        up_writer.write("".join(f"{h}\r\n" for h in kept).encode("latin-1") + b"\r\n")
        await self._pipe(reader, writer, up_reader, up_writer)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        up = asyncio.create_task(copy(reader, up_writer), name="proxy-up")
        self._tasks.add(up)
        try:
            await copy(up_reader, writer)
        finally:
            up.cancel()
            self._tasks.discard(up)
            up_writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    p = await ForwardProxy(names={"receiver.test"}).start()
    yield p
    await p.stop()


@dataclass
class TlsReceiver:
    port: int
    bodies: list[bytes]
    peer_subjects: list[Any]  # the client certificate's subject, None without one


@contextlib.asynccontextmanager
async def tls_receiver(
    cert: trustme.LeafCert, client_ca: trustme.CA | None = None
) -> AsyncIterator[TlsReceiver]:
    """An https receiver on 127.0.0.1; with `client_ca` it requires a client certificate
    issued by it."""
    seen = TlsReceiver(0, [], [])

    async def handle(request: web.Request) -> web.Response:
        seen.bodies.append(await request.read())
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        seen.peer_subjects.append(peer["subject"] if peer else None)
        return web.Response(text="ok")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        client_ca.configure_trust(ctx)
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    seen.port = runner.addresses[0][1]
    try:
        yield seen
    finally:
        await runner.cleanup()


def pem(blob: trustme.Blob) -> str:
    return blob.bytes().decode()


async def test_https_goes_through_a_connect_tunnel_with_proxy_credentials() -> None:
    ca = trustme.CA()
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", "s3cret")).start()
    inner = TableResolver()  # webhookd itself resolves nothing: the proxy does
    try:
        async with (
            tls_receiver(ca.issue_cert("receiver.test")) as rx,
            client_for(LOOPBACK, inner) as client,
        ):
            route = Route(proxy=proxy.url("hooks:s3cret@"), ca=pem(ca.cert_pem))
            answer = await post(client, f"https://receiver.test:{rx.port}/hook", route)
    finally:
        await proxy.stop()
    assert answer.status == 200
    assert rx.bodies == [b"{}"]
    assert inner.asked == []
    [seen] = proxy.seen
    assert seen.request_line == f"CONNECT receiver.test:{rx.port} HTTP/1.1"
    assert seen.headers["host"] == f"receiver.test:{rx.port}"
    assert (
        seen.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"hooks:s3cret").decode()
    )


async def test_the_target_certificate_is_checked_against_its_name_through_the_tunnel(
    proxy: ForwardProxy,
) -> None:
    ca = trustme.CA()
    async with (
        tls_receiver(ca.issue_cert("other.test")) as rx,
        client_for(LOOPBACK) as client,
    ):
        route = Route(proxy=proxy.url(), ca=pem(ca.cert_pem))
        error = await failure(client, f"https://receiver.test:{rx.port}/hook", route)
    assert error.kind == "tls"
    assert rx.bodies == []


async def test_plain_http_goes_to_the_proxy_in_absolute_form(
    proxy: ForwardProxy, receiver: Receiver
) -> None:
    port = port_of(receiver.url)
    async with client_for(LOOPBACK, TableResolver()) as client:
        answer = await post(client, f"http://receiver.test:{port}/hook?a=1", Route(proxy.url()))
    assert answer.status == 200
    [seen] = proxy.seen
    assert seen.request_line == f"POST http://receiver.test:{port}/hook?a=1 HTTP/1.1"
    assert seen.headers["host"] == f"receiver.test:{port}"
    [got] = receiver.received
    assert (got.path, got.body) == ("/hook?a=1", b"{}")


async def test_plain_http_through_a_proxy_carries_its_credentials() -> None:
    """The connection says which header lines the request must add for the proxy."""
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", "s3cret")).start()
    resolver = GuardedResolver(AddressPolicy(LOOPBACK))
    try:
        opened = await open_connection(
            asyncio.Protocol,
            "receiver.test",
            80,
            tls=False,
            route=Route(proxy.url("hooks:s3cret@")),
            resolver=resolver,
        )
        opened.transport.close()
    finally:
        await proxy.stop()
    assert opened.absolute_form
    token = base64.b64encode(b"hooks:s3cret").decode()
    assert opened.extra_head == f"Proxy-Authorization: Basic {token}\r\n".encode()


async def test_the_client_sends_proxy_credentials_for_plain_http(receiver: Receiver) -> None:
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", "s3cret")).start()
    try:
        async with client_for(LOOPBACK) as client:
            url = f"http://receiver.test:{port_of(receiver.url)}/hook"
            answer = await post(client, url, Route(proxy.url("hooks:s3cret@")))
    finally:
        await proxy.stop()
    assert answer.status == 200
    token = base64.b64encode(b"hooks:s3cret").decode()
    assert proxy.seen[0].headers["proxy-authorization"] == f"Basic {token}"
    # The proxy takes its credentials off; the receiver never sees them.
    assert "Proxy-Authorization" not in receiver.received[0].headers


async def test_a_proxy_that_is_down_fails_as_proxy() -> None:
    port = closed_port(socket.AF_INET, "127.0.0.1")
    async with client_for(LOOPBACK) as client:
        route = Route(proxy=f"http://hooks:s3cret@127.0.0.1:{port}")
        error = await failure(client, "https://receiver.test/hook", route)
    assert error.kind == "proxy"
    assert f"127.0.0.1:{port}" in error.message
    assert "refused" in error.message
    assert "s3cret" not in error.message


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ({"credentials": ("hooks", "right")}, "407"),
        ({"answer": 502}, "502"),
        ({"answer": 403}, "403"),
        ({"hang_up": True}, "closed the connection"),
    ],
)
async def test_a_proxy_refusing_connect_fails_as_proxy_with_its_answer(
    setup: dict[str, Any], expect: str
) -> None:
    proxy = await ForwardProxy(names={"receiver.test"}, **setup).start()
    try:
        async with client_for(LOOPBACK) as client:
            route = Route(proxy=proxy.url("hooks:s3cret@"))
            error = await failure(client, "https://receiver.test:8443/hook", route)
    finally:
        await proxy.stop()
    assert error.kind == "proxy"
    assert expect in error.message
    assert f"127.0.0.1:{proxy.port}" in error.message
    assert "s3cret" not in error.message
    assert error.status is None  # the proxy's answer is not the receiver's
    assert proxy.seen[0].request_line == "CONNECT receiver.test:8443 HTTP/1.1"


async def test_a_proxy_on_a_blocked_address_is_refused(proxy: ForwardProxy) -> None:
    async with client_for([]) as client:
        error = await failure(client, "https://receiver.test/hook", Route(proxy.url("u:s3cret@")))
    assert error.kind == "blocked_address"
    assert f"proxy 127.0.0.1:{proxy.port}" in error.message
    assert "s3cret" not in error.message
    assert proxy.seen == []


async def test_an_address_literal_target_is_checked_even_through_a_proxy(
    proxy: ForwardProxy, receiver: Receiver
) -> None:
    """The proxy resolves names, but a literal target is ours to check: a blocked one never
    reaches the proxy, an allowed one goes through it."""
    proxy.names.add("127.0.0.1")
    async with client_for(LOOPBACK) as client:
        for url in ("https://169.254.169.254/latest", "http://[::ffff:10.0.0.1]/hook"):
            error = await failure(client, url, Route(proxy.url()))
            assert error.kind == "blocked_address", url
        assert proxy.seen == []
        answer = await post(client, receiver.url, Route(proxy.url()))
    assert answer.status == 200
    assert [s.request_line for s in proxy.seen] == [f"POST {receiver.url} HTTP/1.1"]


async def test_a_proxy_url_that_is_not_http_fails_without_showing_it() -> None:
    async with client_for(LOOPBACK) as client:
        route = Route(proxy="socks5://hooks:s3cret@127.0.0.1:1080")
        error = await failure(client, "https://receiver.test/hook", route)
    assert error.kind == "proxy"
    assert "s3cret" not in error.message


# --- per-endpoint TLS -----------------------------------------------------------------------


async def test_mutual_tls_presents_the_routes_client_certificate() -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    client_cert = client_ca.issue_cert("hooks.example", common_name="hooks.example")
    route = Route(
        client_cert=pem(client_cert.cert_chain_pems[0]),
        client_key=pem(client_cert.private_key_pem),
        ca=pem(server_ca.cert_pem),
    )
    async with tls_receiver(server_ca.issue_cert("127.0.0.1"), client_ca) as rx:
        async with client_for(LOOPBACK, ssl_context=trusting(server_ca)) as client:
            without = await failure(client, f"https://127.0.0.1:{rx.port}/hook")
        async with client_for(LOOPBACK) as client:
            answer = await post(client, f"https://127.0.0.1:{rx.port}/hook", route)
    assert without.kind in ("tls", "connection_reset"), without.message
    assert answer.status == 200
    assert rx.bodies == [b"{}"]
    [subject] = rx.peer_subjects
    assert (("commonName", "hooks.example"),) in subject


async def test_a_private_ca_is_trusted_for_its_route_only() -> None:
    ca = trustme.CA()
    async with tls_receiver(ca.issue_cert("127.0.0.1")) as rx, client_for(LOOPBACK) as client:
        url = f"https://127.0.0.1:{rx.port}/hook"
        refused = await failure(client, url)
        answer = await post(client, url, Route(ca=pem(ca.cert_pem)))
    assert refused.kind == "tls"
    assert "certificate verify failed" in refused.message
    assert answer.status == 200
    assert rx.bodies == [b"{}"]


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


SECRET_KEY = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    "material",
    [
        {"client_cert": "not a certificate", "client_key": SECRET_KEY},
        {"client_key": SECRET_KEY},
        {"ca": "not a bundle"},
        {"client_cert": "mismatch", "client_key": "mismatch"},  # filled in below
    ],
)
async def test_invalid_tls_material_fails_as_tls_without_showing_the_key(
    material: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if material.get("client_cert") == "mismatch":
        ca = trustme.CA()
        material = {
            "client_cert": pem(ca.issue_cert("a.example").cert_chain_pems[0]),
            "client_key": pem(ca.issue_cert("b.example").private_key_pem),
        }
    # The PEMs are written to a private temporary directory: check it is gone after.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    async with client_for(LOOPBACK) as client:
        error = await failure(client, "https://127.0.0.1:9/hook", Route(**material))
    assert error.kind == "tls"
    assert "could not be loaded" in error.message or "no tls.client_cert" in error.message
    assert "TOPSECRET" not in error.message and "PRIVATE KEY" not in error.message
    assert list(tmp_path.iterdir()) == []


async def test_plain_http_refused_by_the_proxy_for_credentials_fails_as_proxy(
    receiver: Receiver,
) -> None:
    """A 407 on a forwarded plain-http request is the proxy's answer, not the endpoint's."""
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", "right")).start()
    try:
        async with client_for(LOOPBACK) as client:
            url = f"http://receiver.test:{port_of(receiver.url)}/hook"
            with pytest.raises(http1.Failure) as info:
                await post(client, url, Route(proxy.url("hooks:wrong@")))
    finally:
        await proxy.stop()
    assert info.value.kind == "proxy"
    assert "407" in info.value.message and "wrong" not in info.value.message
    assert receiver.received == []
