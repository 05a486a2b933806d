"""Opening a delivery connection: the address guard, then TCP (and TLS) to an address that
passed it, directly or through a forward proxy, with the endpoint's own TLS material.

``open_connection`` is the only way the delivery client (webhookd.http1) gets a transport.
Whatever the route, the address connected to is one the guarded resolver returned for this
connection, so a name cannot be re-resolved to something else between check and connect.

- Direct: the target's checked addresses are raced with Happy Eyeballs (RFC 8305, by
  aiohappyeyeballs, as aiohttp does), so an unreachable IPv6 address costs 250 ms, not the
  whole request timeout, when an IPv4 one answers.
- Through a proxy (``http://[user:pass@]host:port``): the proxy's addresses pass the guard
  and are raced the same way; the proxy resolves the target's name. https goes through a
  ``CONNECT`` tunnel with TLS to the target end to end; plain http is sent to the proxy in
  absolute form, with ``Opened.extra_head`` carrying its credentials.
- TLS: the endpoint's CA bundle replaces the system trust store, and its client certificate
  and key make the connection mutual TLS. One SSLContext per distinct set of material, cached.

Failures raise ``Failure`` with the delivery log's error kind and one sentence for the
operator; nothing here touches the database or logs. Proxy passwords and private keys never
appear in a message.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohappyeyeballs
import httptools
from aiohttp import encode_basic_auth
from aiohttp.abc import ResolveResult
from yarl import URL

from webhookd.netguard import BlockedAddress, GuardedResolver, parse_host_address

# RFC 8305's recommended Connection Attempt Delay, as aiohttp uses it.
HAPPY_EYEBALLS_DELAY_S = 0.25
# A proxy's answer to CONNECT is a status line and a few headers; more is not a proxy.
MAX_PROXY_ANSWER = 16 * 1024
TLS_CONTEXT_CACHE = 128  # distinct endpoint TLS configurations kept built


class Failure(Exception):
    """The attempt failed: `kind` is the delivery log's error kind, `message` one sentence.

    `status`, `headers` and `body` hold whatever part of the response had arrived."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.headers = headers or {}
        self.body = body


@dataclass(frozen=True, slots=True)
class Route:
    """How an endpoint is reached, beyond its URL: a forward proxy and TLS material.

    Hashable: the client pools connections per (URL origin, route), so requests with
    different client certificates or proxies never share a connection. The proxy URL (it
    may hold a password) and the PEM texts (private keys) are kept out of repr."""

    proxy: str | None = field(default=None, repr=False)  # http://[user:pass@]host:port
    client_cert: str | None = field(default=None, repr=False)  # PEM
    client_key: str | None = field(default=None, repr=False)  # PEM
    ca: str | None = field(default=None, repr=False)  # PEM bundle trusted instead of the system's


DIRECT = Route()


@dataclass(slots=True)
class Opened:
    transport: asyncio.Transport
    # True when the request goes to a plain-http forward proxy, so its request line
    # must carry the absolute URL.
    absolute_form: bool = False
    # Header lines, each ending in CRLF, to send right after the request line on this
    # connection (the proxy's Proxy-Authorization for plain http through a proxy).
    extra_head: bytes = b""


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]


_DEFAULT_SSL: ssl.SSLContext | None = None


def _default_ssl() -> ssl.SSLContext:
    global _DEFAULT_SSL
    if _DEFAULT_SSL is None:
        _DEFAULT_SSL = ssl.create_default_context()
    return _DEFAULT_SSL


async def open_connection(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    tls: bool,
    route: Route,
    resolver: GuardedResolver,
    ssl_context: ssl.SSLContext | None = None,
) -> Opened:
    """Connect to (host, port) by `route`. The caller bounds the time (asyncio.timeout_at).

    `ssl_context` replaces the default trust store when the route brings no TLS material
    (tests pass one trusting their own CA); a route's own `ca` or client certificate
    builds a context of its own instead."""
    context = tls_context(route, ssl_context) if tls else None
    if route.proxy is not None:
        return await _open_via_proxy(
            protocol_factory, host, port, proxy_of(route.proxy), resolver, context
        )
    try:
        results = await resolver.resolve(host, port, socket.AF_UNSPEC)
    except BlockedAddress as exc:
        raise Failure("blocked_address", str(exc)) from None
    except OSError as exc:
        raise Failure("dns", f"the host name could not be resolved: {one_line(str(exc))}") from None
    try:
        sock = await happy_eyeballs(results)
    except (OSError, RuntimeError) as exc:
        raise connect_failure(exc) from None
    transport = await _start(protocol_factory, sock, context, host)
    return Opened(transport)


async def happy_eyeballs(results: Sequence[ResolveResult]) -> socket.socket:
    """A socket connected to one of exactly these (already checked) addresses, racing them
    RFC 8305 style: the next one starts when the previous has not answered in 250 ms."""
    addr_infos: list[aiohappyeyeballs.AddrInfoType] = []
    for result in results:
        address = result["host"]
        if ":" in address:
            addr_infos.append(
                (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, result["port"], 0, 0))
            )  # fmt: skip
        else:
            addr_infos.append(
                (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (address, result["port"]))
            )  # fmt: skip
    if not addr_infos:
        raise OSError("no addresses to connect to")
    return await aiohappyeyeballs.start_connection(
        addr_infos, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S, interleave=1
    )


async def _start(
    protocol_factory: Callable[[], asyncio.Protocol],
    sock: socket.socket,
    context: ssl.SSLContext | None,
    server_hostname: str,
) -> asyncio.Transport:
    """The transport over a connected socket, after the TLS handshake when `context`."""
    loop = asyncio.get_running_loop()
    try:
        # uvloop may call connection_made only after this returns.
        transport, _ = await loop.create_connection(
            protocol_factory,
            sock=sock,
            ssl=context,
            server_hostname=server_hostname if context is not None else None,
        )
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError | ssl.CertificateError | RuntimeError):
            raise connect_failure(exc) from None
        raise
    return transport


def connect_failure(exc: BaseException) -> Failure:
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Failure("tls", f"TLS handshake failed: {one_line(str(exc))}")
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return Failure("connection_refused", "the endpoint refused the connection")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Failure("connection_reset", "the connection was reset by the endpoint")
    return Failure("connection_error", f"could not connect: {one_line(str(exc))}")


# --- forward proxy ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str  # no brackets
    port: int
    name: str  # host:port as the operator reads it; never the credentials
    authorization: str | None = field(default=None, repr=False)  # "Basic …"


@functools.lru_cache(maxsize=256)
def proxy_of(text: str) -> Proxy:
    """The proxy a route names. A bad URL is a `proxy` failure whose message leaves the
    URL out, since it may hold a password."""
    try:
        url = URL(text)
        host, port = url.raw_host, url.port
    except (ValueError, TypeError):
        host, port, url = None, None, None
    if url is None or url.scheme != "http" or not host or port is None:
        raise Failure("proxy", "the proxy setting is not an http://host:port URL")
    name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    authorization = None
    if url.user is not None:
        try:
            authorization = encode_basic_auth(url.user, url.password or "")
        except ValueError:
            raise Failure("proxy", f"the user name for the proxy {name} is not valid") from None
    return Proxy(host, port, name, authorization)


async def _open_via_proxy(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    proxy: Proxy,
    resolver: GuardedResolver,
    context: ssl.SSLContext | None,
) -> Opened:
    # The proxy resolves the target's name, but an address literal is ours to refuse.
    literal = parse_host_address(host)
    if literal is not None:
        try:
            resolver.policy.check(host, literal)
        except BlockedAddress as exc:
            raise Failure("blocked_address", str(exc)) from None
    sock = await _connect_proxy(proxy, resolver)
    if context is None:
        transport = await _start(protocol_factory, sock, None, host)
        extra = f"Proxy-Authorization: {proxy.authorization}\r\n" if proxy.authorization else ""
        return Opened(transport, absolute_form=True, extra_head=extra.encode("ascii"))
    try:
        await _tunnel(sock, proxy, host, port)
    except BaseException:
        sock.close()
        raise
    return Opened(await _start(protocol_factory, sock, context, host))


async def _connect_proxy(proxy: Proxy, resolver: GuardedResolver) -> socket.socket:
    try:
        results = await resolver.resolve(proxy.host, proxy.port, socket.AF_UNSPEC)
    except BlockedAddress as exc:
        raise Failure("blocked_address", f"the proxy {proxy.name} is not allowed: {exc}") from None
    except OSError as exc:
        raise Failure(
            "proxy", f"the proxy {proxy.name} could not be resolved: {one_line(str(exc))}"
        ) from None
    try:
        return await happy_eyeballs(results)
    except (OSError, RuntimeError) as exc:
        reason = connect_failure(exc).message.replace("the endpoint", "it")
        raise Failure("proxy", f"could not connect to the proxy {proxy.name}: {reason}") from None


class _ProxyAnswer:
    """httptools callbacks: whether the head is complete, and whether anything followed it."""

    def __init__(self) -> None:
        self.complete = False
        self.trailing = False

    def on_headers_complete(self) -> None:
        self.complete = True

    def on_body(self, body: bytes) -> None:
        self.trailing = True


async def _tunnel(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    """CONNECT host:port on the raw socket; returns once the proxy answered 2xx."""
    loop = asyncio.get_running_loop()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    answer = _ProxyAnswer()
    parser = httptools.HttpResponseParser(answer)
    received = 0
    try:
        await loop.sock_sendall(sock, request)
        while not answer.complete:
            data = await loop.sock_recv(sock, 4096)
            if not data:
                raise Failure(
                    "proxy", f"the proxy {proxy.name} closed the connection during CONNECT"
                )
            received += len(data)
            if received > MAX_PROXY_ANSWER:
                raise Failure(
                    "proxy", f"the proxy {proxy.name} sent an oversized answer to CONNECT"
                )
            parser.feed_data(data)
    except httptools.HttpParserError as exc:
        raise Failure(
            "proxy",
            f"the proxy {proxy.name} sent a malformed answer to CONNECT: {one_line(str(exc))}",
        ) from None
    except OSError as exc:
        raise Failure(
            "proxy",
            f"the connection to the proxy {proxy.name} failed during CONNECT: {one_line(str(exc))}",
        ) from None
    status = parser.get_status_code()
    if not 200 <= status < 300:
        raise Failure("proxy", f"the proxy {proxy.name} answered {status} to CONNECT {authority}")
    if answer.trailing:
        # Bytes after a 2xx head would be taken for the target's TLS handshake.
        raise Failure("proxy", f"the proxy {proxy.name} sent data after its answer to CONNECT")


# --- TLS material ---------------------------------------------------------------------------


def tls_context(route: Route, fallback: ssl.SSLContext | None) -> ssl.SSLContext:
    """The SSLContext for a connection by `route`: its own when it brings TLS material,
    else `fallback` or the system default."""
    if route.ca is None and route.client_cert is None and route.client_key is None:
        return fallback or _default_ssl()
    return _route_context(route.ca, route.client_cert, route.client_key)


@functools.lru_cache(maxsize=TLS_CONTEXT_CACHE)
def _route_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """Built once per distinct material: loading a CA bundle and a key costs milliseconds,
    and a context is safe to share between connections."""
    try:
        context = (
            ssl.create_default_context(cadata=ca)
            if ca is not None
            else ssl.create_default_context()
        )
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise Failure(
            "tls", f"the endpoint's CA bundle (tls.ca) could not be loaded: {_reason(exc)}"
        ) from None
    if key is not None and cert is None:
        raise Failure("tls", "the endpoint's tls.client_key has no tls.client_cert to go with it")
    if cert is not None:
        _load_client_cert(context, cert, key)
    return context


def _load_client_cert(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    """load_cert_chain reads only files: the PEMs go to a private directory (0700, files
    0600) that is removed as soon as they are loaded."""
    directory = tempfile.mkdtemp(prefix="webhookd-tls-")
    try:
        cert_path = _write_private(directory, "cert.pem", cert)
        key_path = _write_private(directory, "key.pem", key) if key is not None else None
        # An encrypted key would make OpenSSL prompt on the terminal without a callback;
        # with an empty password it fails instead.
        context.load_cert_chain(cert_path, key_path, password=lambda: b"")
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise Failure(
            "tls",
            "the endpoint's client certificate and key (tls.client_cert, tls.client_key) "
            f"could not be loaded: {_reason(exc)}",
        ) from None
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_private(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _reason(exc: BaseException) -> str:
    """OpenSSL's reason code ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_OR_CRL_FOUND"); never
    the PEM text, which may hold a private key."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, ssl.SSLError):
        return "not valid PEM"
    return type(exc).__name__
