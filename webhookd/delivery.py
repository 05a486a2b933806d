"""One HTTP attempt: POST a body, read at most a bounded response, classify what happened.

`send` never raises for network or protocol errors; it returns a Response whose
`error_kind` says what went wrong. No database here.
"""

from __future__ import annotations

import errno
import functools
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from webhookd import __version__
from webhookd.netguard import find_blocked

USER_AGENT = f"webhookd/{__version__}"
# Past what is kept for the log, a response body is read and thrown away up to this many
# bytes; beyond it the attempt fails as response_too_large, so a hostile endpoint cannot
# keep a worker busy streaming gigabytes.
DISCARD_LIMIT_BYTES = 1 << 20


@dataclass(frozen=True)
class Response:
    status_code: int | None
    headers: dict[str, str]
    body: str
    error_kind: str | None
    error_message: str | None
    duration_ms: int
    request_headers: dict[str, str]

    @property
    def ok(self) -> bool:
        return (
            self.error_kind is None
            and self.status_code is not None
            and (200 <= self.status_code < 300)
        )

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lower:
                return value
        return None


@functools.lru_cache(maxsize=4096)
def host_header(url: str) -> str:
    """The Host header aiohttp sends for this URL (parsed once per URL, not per request)."""
    u = URL(url)
    host = u.raw_host or ""
    if ":" in host:
        host = f"[{host}]"
    if u.explicit_port is not None and not u.is_default_port():
        host = f"{host}:{u.port}"
    return host


@functools.lru_cache(maxsize=64)
def _timeout(total_s: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total_s)


def sent_headers(url: str, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """The full header set as it goes on the wire (what the delivery log shows)."""
    out = {"Host": host_header(url)}
    out.update(headers)
    out["Content-Length"] = str(len(body))
    return out


async def send(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float,
    max_response_bytes: int,
) -> Response:
    started = time.monotonic()
    wire_headers = sent_headers(url, headers, body)

    def done(
        status: int | None,
        resp_headers: dict[str, str],
        text: str,
        kind: str | None,
        message: str | None,
    ) -> Response:
        return Response(
            status_code=status,
            headers=resp_headers,
            body=text,
            error_kind=kind,
            error_message=message,
            duration_ms=int((time.monotonic() - started) * 1000),
            request_headers=wire_headers,
        )

    status: int | None = None
    resp_headers: dict[str, str] = {}
    kept = b""
    try:
        async with session.post(
            url,
            data=body,
            headers=dict(headers),
            allow_redirects=False,
            timeout=_timeout(timeout_s),
            skip_auto_headers=("Accept", "Accept-Encoding"),
        ) as resp:
            status = resp.status
            resp_headers = _flatten(resp.headers)
            kept, too_large = await _read_bounded(resp, max_response_bytes)
            text = kept.decode("utf-8", errors="replace")
            if too_large:
                return done(
                    status,
                    resp_headers,
                    text,
                    "response_too_large",
                    f"the response body exceeded {DISCARD_LIMIT_BYTES} bytes; the endpoint "
                    "should answer with a short body",
                )
    except TimeoutError:
        return done(
            status,
            resp_headers,
            kept.decode("utf-8", errors="replace"),
            "timeout",
            f"no complete response within {timeout_s:g} s (delivery.timeout_s)",
        )
    except aiohttp.ClientError as exc:
        kind, why = classify_error(exc)
        return done(status, resp_headers, "", kind, why)
    except (OSError, ValueError) as exc:  # e.g. an invalid URL reaching the socket layer
        return done(status, resp_headers, "", "connection_error", _one_line(str(exc)))
    if 300 <= status < 400:
        location = resp_headers.get("Location") or resp_headers.get("location") or "?"
        return done(
            status,
            resp_headers,
            text,
            "redirect",
            f"the endpoint redirected ({status} to {location[:200]}); redirects are not "
            "followed, so set the endpoint URL to the final address",
        )
    message = None
    if not 200 <= status < 300:
        message = f"the endpoint answered HTTP {status}"
    return done(status, resp_headers, text, None, message)


async def _read_bounded(resp: aiohttp.ClientResponse, keep: int) -> tuple[bytes, bool]:
    kept = bytearray()
    total = 0
    while True:
        chunk = await resp.content.readany()
        if not chunk:
            return bytes(kept), False
        total += len(chunk)
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
        if total > max(DISCARD_LIMIT_BYTES, keep):
            resp.close()  # drop the connection rather than drain the rest
            return bytes(kept), True


def _flatten(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, value in headers.items():
        key = str(k)  # multidict keys are a str subclass; store plain str
        out[key] = f"{out[key]}, {value}" if key in out else str(value)
    return out


def classify_error(exc: BaseException) -> tuple[str, str]:
    """(error_kind, one sentence for the operator) for a client-side failure."""
    blocked = find_blocked(exc)
    if blocked is not None:
        return "blocked_address", str(blocked)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return "tls", f"TLS handshake failed: {_one_line(str(exc))}"
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if dns_error is not None and isinstance(exc, dns_error):
        return "dns", f"the host name could not be resolved: {_one_line(str(exc))}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ssl.SSLError):
            return "tls", f"TLS handshake failed: {_one_line(str(os_error))}"
        if isinstance(os_error, ConnectionRefusedError) or os_error.errno == errno.ECONNREFUSED:
            return "connection_refused", "the endpoint refused the connection"
        if "Name or service not known" in str(exc) or "nodename" in str(exc):
            return "dns", f"the host name could not be resolved: {_one_line(str(exc))}"
        return "connection_error", f"could not connect: {_one_line(str(exc))}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection_reset", "the endpoint closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientOSError):
        if exc.errno in (errno.ECONNRESET, errno.EPIPE):
            return "connection_reset", "the connection was reset by the endpoint"
        return "connection_error", f"connection failed: {_one_line(str(exc))}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection_reset", "the response body was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "invalid_response", f"the response was not valid HTTP: {_one_line(exc.message)}"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid_url", f"the endpoint URL is not valid: {_one_line(str(exc))}"
    return "connection_error", _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
