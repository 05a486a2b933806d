"""Opening a delivery connection: the address guard, then TCP (and TLS) to an address that
passed it, directly or through a forward proxy, with the endpoint's own TLS material.

``open_connection`` is the only way the delivery client (webhookd.http1) gets a transport.
Whatever the route, the address connected to is one the guarded resolver returned for this
connection, so a name cannot be re-resolved to something else between check and connect.

Failures raise ``Failure`` with the delivery log's error kind and one sentence for the
operator; nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from webhookd.netguard import BlockedAddress, GuardedResolver


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
    different client certificates or proxies never share a connection. PEM texts are
    kept out of repr (they hold private keys)."""

    proxy: str | None = None  # http://[user:pass@]host:port
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
    (tests pass one trusting their own CA)."""
    loop = asyncio.get_running_loop()
    try:
        results = await resolver.resolve(host, port, socket.AF_UNSPEC)
    except BlockedAddress as exc:
        raise Failure("blocked_address", str(exc)) from None
    except OSError as exc:
        raise Failure(
            "dns", f"the host name could not be resolved: {one_line(str(exc))}"
        ) from None
    context = ssl_context or _default_ssl()
    first_error: Failure | None = None
    for result in results:
        try:
            # uvloop may call connection_made only after this returns.
            transport, _ = await loop.create_connection(
                protocol_factory,
                host=result["host"],
                port=result["port"],
                family=result["family"],
                ssl=context if tls else None,
                server_hostname=host if tls else None,
            )
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            first_error = first_error or connect_failure(exc)
            continue
        return Opened(transport)
    raise first_error or Failure("dns", f"no addresses found for {host!r}")


def connect_failure(exc: BaseException) -> Failure:
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Failure("tls", f"TLS handshake failed: {one_line(str(exc))}")
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return Failure("connection_refused", "the endpoint refused the connection")
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return Failure("connection_reset", "the connection was reset by the endpoint")
    return Failure("connection_error", f"could not connect: {one_line(str(exc))}")
