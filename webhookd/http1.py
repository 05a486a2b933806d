"""A lean HTTP/1.1 client for deliveries: one POST, one bounded response, keep-alive.

Deliveries need very little of a general HTTP client: POST a body that is already
rendered to a URL that is already validated, read one response with hard limits, never
follow a redirect, keep connections open for the next delivery. A general client pays
for everything else on every request (cookie jars, tracing hooks, auto headers, stream
readers, response objects); profiled, that was more than half of the CPU a delivery
cost. This module does only the delivery's part, on asyncio's transport and protocol
layer, and applies the same rules the address guard and the delivery log rely on:

- every new connection goes through the guarded resolver (numeric spellings answered
  and checked locally, resolved names filtered), and connects only to an address that
  passed; a policy change drops the idle connections that an older policy admitted;
- TLS with the system's trust store and host name verification;
- one deadline for the whole request (connect, TLS, send, response);
- response header block at most 64 KiB, each line at most 8190 bytes; a body is kept
  up to ``keep`` bytes and read and discarded up to ``discard`` bytes, past which the
  connection is dropped and the attempt fails as ``response_too_large``;
- Content-Length, chunked and read-until-close bodies; interim 1xx answers skipped.

Failures raise ``Failure`` with the delivery log's error kind and one sentence for the
operator; nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

from yarl import URL

from webhookd.connect import DIRECT, Failure, Route, one_line, open_connection
from webhookd.netguard import AddressPolicy, GuardedResolver

__all__ = ["DIRECT", "Answer", "Client", "Failure", "Route", "Target", "header_block", "target"]

MAX_HEAD_BYTES = 64 * 1024
MAX_LINE_BYTES = 8190
KEEPALIVE_S = 15.0
MAX_IDLE = 256  # kept-alive connections over all origins
SWEEP_S = 0.05  # how often open requests are checked against their deadline

# The header grammar (also used by the API's fast lane): a field name, and a field value
# without control characters but tab.
TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
TEXT = rb"[^\x00-\x08\x0a-\x1f\x7f]*"
_STATUS_RE = re.compile(rb"HTTP/1\.([01]) ([1-5][0-9][0-9])(?: " + TEXT + rb")?")
_LINE = TOKEN + rb":" + TEXT  # one header line: "name: value"
_LINE_RE = re.compile(_LINE)
# Header lines after the status line, joined by LF: "name: value" each, nothing else.
_BLOCK_RE = re.compile(rb"(?:" + _LINE + rb"\n)*" + _LINE)
# Heads already parsed, by their bytes (CRLF turned to LF): whether HTTP/1.1, the status,
# the headers and the framing headers. Only short heads, and emptied when full.
_HEADS: dict[bytes, tuple[bytes, int, dict[str, str], dict[str, str]]] = {}
MAX_CACHED_HEAD = 2048
MAX_CACHED_HEADS = 512
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_CHUNK_SIZE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
# ASCII digits only: str.isdigit and int() also take other Unicode digits, and int() refuses
# more than 4300 digits by raising.
_LENGTH_RE = re.compile(r"[0-9]{1,18}")

PoolKey = tuple[tuple[bool, str, int], Route]

# Parser states.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _DONE = range(8)


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes  # the kept part
    too_large: bool  # the body went past the discard limit and was cut off


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL means for a request, parsed once per URL."""

    key: tuple[bool, str, int]
    host: str  # for resolution and TLS server name: no brackets
    port: int
    tls: bool
    host_header: str
    request_line: bytes
    absolute_line: bytes  # the request line for a forward proxy (plain http only)


@functools.lru_cache(maxsize=4096)
def target(url: str) -> Target:
    try:
        u = URL(url)
        host = u.raw_host
        port = u.port
    except (ValueError, TypeError) as exc:
        raise Failure(
            "invalid_url", f"the endpoint URL is not valid: {one_line(str(exc))}"
        ) from None
    if u.scheme not in ("http", "https") or not host or port is None:
        raise Failure("invalid_url", "the endpoint URL is not an absolute http(s) URL")
    host_header = f"[{host}]" if ":" in host else host
    if u.explicit_port is not None and not u.is_default_port():
        host_header = f"{host_header}:{port}"
    path = u.raw_path_qs or "/"
    tls = u.scheme == "https"
    return Target(
        key=(tls, host, port),
        host=host,
        port=port,
        tls=tls,
        host_header=host_header,
        request_line=f"POST {path} HTTP/1.1\r\n".encode("ascii", "strict"),
        absolute_line=f"POST {u.scheme}://{host_header}{path} HTTP/1.1\r\n".encode(
            "ascii", "strict"
        ),
    )


class _Conn(asyncio.Protocol):
    """One connection and the parser of the response it is waiting for."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.absolute_form = False  # through a plain-http proxy: absolute URL in the request line
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.policy: AddressPolicy | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.deadline = 0.0  # loop time; checked by Client._check_deadlines while a request is open
        self.deadline_message = ""
        self._buf = bytearray()
        self._scanned = 0  # where the search for the end of the head or trailers resumes
        self._state = _DONE
        self._received = 0
        self._keep = 0
        self._discard = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._kept = bytearray()
        self._total = 0
        self._remaining = 0
        self.keep_alive = False

    # --- protocol callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.keep_alive = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._state == _UNTIL_CLOSE:
            self._finish(False)
            return
        if self._state == _HEAD and not self._status:
            reset = isinstance(exc, ConnectionResetError | BrokenPipeError)
            message = (
                "the connection was reset by the endpoint"
                if reset
                else "the endpoint closed the connection without an answer"
            )
            self._fail("connection_reset", message)
            return
        self._fail("connection_reset", "the response body was cut off")

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self._state == _DONE:
            # Nothing was asked: an endpoint talking out of turn cannot be trusted with
            # the next request on this connection.
            self.keep_alive = False
            if self.transport is not None:
                self.transport.abort()
            return
        self._received += len(data)
        if (self._state == _LENGTH or self._state == _UNTIL_CLOSE) and not self._buf:
            self._parse_body(data)
        else:
            self._buf += data
            self._parse()

    def received_none(self) -> bool:
        return self._received == 0

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost decides what the end means

    # --- one exchange -------------------------------------------------------------------

    def start(self, waiter: asyncio.Future[Answer], keep: int, discard: int) -> None:
        self.waiter = waiter
        self._state = _HEAD
        self._received = 0
        self._keep = keep
        self._discard = discard
        self._status = 0
        self._headers = {}
        self._kept = bytearray()
        self._total = 0
        self._buf.clear()
        self._scanned = 0

    def _finish(self, too_large: bool) -> None:
        self._state = _DONE
        waiter = self.waiter
        if self._buf:
            self.keep_alive = False  # bytes beyond the response: do not reuse
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, self._headers, bytes(self._kept), too_large))

    def _fail(self, kind: str, message: str) -> None:
        self._state = _DONE
        self.keep_alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(
                Failure(kind, message, self._status or None, self._headers, bytes(self._kept))
            )
        if self.transport is not None:
            self.transport.abort()

    def timed_out(self, message: str) -> None:
        self._fail("timeout", message)

    # --- parsing ------------------------------------------------------------------------

    def _parse(self) -> None:
        while self._state != _DONE:
            if self._state == _HEAD:
                if not self._parse_head():
                    return
            elif self._state in (_LENGTH, _UNTIL_CLOSE, _CHUNK_DATA):
                if not self._buf:
                    return
                data = bytes(self._buf)
                self._buf.clear()
                self._parse_body(data)
            elif self._state == _CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif self._state == _CHUNK_END:
                buf = self._buf
                if buf.startswith(b"\n"):
                    del buf[:1]
                elif buf.startswith(b"\r\n"):
                    del buf[:2]
                elif buf == b"\r" or not buf:
                    return
                else:
                    self._invalid("a chunk is not followed by CRLF")
                    return
                self._state = _CHUNK_SIZE
            elif self._state == _TRAILERS and not self._parse_trailers():
                return

    def _invalid(self, why: str) -> None:
        self._fail("invalid_response", f"the response was not valid HTTP: {why}")

    def _parse_head(self) -> bool:
        buf = self._buf
        # Search only what is new (and the 3 bytes before it), or a head dripped a byte at a
        # time costs quadratic time.
        start = max(self._scanned - 3, 0)
        end = buf.find(b"\r\n\r\n", start)
        lf_end = buf.find(b"\n\n", start)
        if lf_end >= 0 and (end < 0 or lf_end < end):
            end, skip = lf_end, 2
            if end > 0 and buf[end - 1] == 0x0D:  # CRLF, then a bare LF: the CR goes too
                end, skip = end - 1, 3
        else:
            skip = 4
        if end < 0:
            self._scanned = len(buf)
            if len(buf) > MAX_HEAD_BYTES:
                self._invalid(f"the response headers exceed {MAX_HEAD_BYTES} bytes")
            return False
        if end > MAX_HEAD_BYTES:
            self._invalid(f"the response headers exceed {MAX_HEAD_BYTES} bytes")
            return False
        head = bytes(buf[:end])
        del buf[: end + skip]
        self._scanned = 0
        # One pass of C code validates the whole block; a line-by-line loop with a regex
        # per line cost twice as much per response.
        if b"\r" in head:
            head = head.replace(b"\r\n", b"\n")  # a stray CR is left, and refused below
        cached = _HEADS.get(head)
        if cached is not None:
            # The same head as an earlier answer (an endpoint answers alike, except for its
            # Date header once a second): already validated and split.
            return self._head_parsed(cached[0], cached[1], dict(cached[2]), cached[3])
        nl = head.find(b"\n")
        first = head if nl < 0 else head[:nl]
        m = _STATUS_RE.fullmatch(first)
        if m is None:
            self._invalid(f"bad status line {first[:60]!r}")
            return False
        status = int(m[2])
        headers: dict[str, str] = {}
        lower: dict[str, str] = {}  # the framing headers only
        if nl >= 0:
            if _BLOCK_RE.fullmatch(head, nl + 1) is None:
                self._invalid(_bad_line(head[nl + 1 :]))
                return False
            block = head[nl + 1 :]
            # Bytes, not decoded characters (fewer when a value is UTF-8).
            if len(block) > MAX_LINE_BYTES and max(map(len, block.split(b"\n"))) > MAX_LINE_BYTES:
                self._invalid(f"a header line is longer than {MAX_LINE_BYTES} bytes")
                return False
            lines = block.decode("utf-8", "replace").split("\n")
            for line in lines:
                name, _, value = line.partition(":")
                value = value.strip(" \t")
                if name in headers:
                    headers[name] = f"{headers[name]}, {value}"
                else:
                    headers[name] = value
                key = name.lower()
                if key in _FRAMING:
                    lower[key] = f"{lower[key]}, {value}" if key in lower else value
        if len(head) <= MAX_CACHED_HEAD:
            if len(_HEADS) >= MAX_CACHED_HEADS:
                _HEADS.clear()
            _HEADS[head] = (m[1], status, headers, lower)
            headers = dict(headers)
        return self._head_parsed(m[1], status, headers, lower)

    def _head_parsed(
        self, minor: bytes, status: int, headers: dict[str, str], lower: dict[str, str]
    ) -> bool:
        """Act on a valid head: `lower` holds the framing headers by lower-case name."""
        if status < 200:
            if status == 101:
                self._invalid("the endpoint switched protocols")
                return False
            return True  # interim answer (100 Continue, 103 Early Hints): the real one follows
        self._status = status
        self._headers = headers
        connection = lower.get("connection", "").lower()
        self.keep_alive = minor == b"1" and "close" not in connection
        if status in (204, 304):
            self._finish(False)
            return True
        te = lower.get("transfer-encoding")
        cl = lower.get("content-length")
        if te is not None:
            if te.rsplit(",", 1)[-1].strip().lower() == "chunked":
                self._state = _CHUNK_SIZE
                if cl is not None:
                    self.keep_alive = False  # both framings: finish this one, then close
            else:
                self._state = _UNTIL_CLOSE
                self.keep_alive = False
        elif cl is not None:
            if cl.isascii() and cl.isdigit() and len(cl) <= 18:
                self._remaining = int(cl)  # the usual case, without building a set
            else:
                values = {v.strip() for v in cl.split(",")}
                if len(values) != 1 or not _LENGTH_RE.fullmatch(next(iter(values))):
                    self._invalid(f"bad Content-Length {cl[:40]!r}")
                    return False
                self._remaining = int(next(iter(values)))
            self._state = _LENGTH
            if self._remaining == 0:
                self._finish(False)
        else:
            self._state = _UNTIL_CLOSE
            self.keep_alive = False
        return True

    def _parse_body(self, data: bytes) -> None:
        state = self._state
        rest = b""
        if state in (_LENGTH, _CHUNK_DATA):
            if len(data) > self._remaining:
                rest = data[self._remaining :]
                data = data[: self._remaining]
            self._remaining -= len(data)
        if data and not self._take(data):
            return
        if state == _LENGTH:
            if self._remaining == 0:
                if rest:
                    self._buf += rest
                self._finish(False)
        elif state == _CHUNK_DATA and self._remaining == 0:
            self._state = _CHUNK_END
            if rest:
                self._buf += rest  # the loop in _parse goes on with it

    def _take(self, data: bytes) -> bool:
        """Keep the first bytes, count the rest; False once past the discard limit."""
        if len(self._kept) < self._keep:
            self._kept += data[: self._keep - len(self._kept)]
        self._total += len(data)
        if self._total > self._discard:
            # Drop the connection rather than read gigabytes to keep it.
            self.keep_alive = False
            self._finish(True)
            if self.transport is not None:
                self.transport.abort()
            return False
        return True

    def _parse_chunk_size(self) -> bool:
        buf = self._buf
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > 1024:
                self._invalid("a chunk size line is too long")
            return False
        line = bytes(buf[:nl]).rstrip(b"\r")
        del buf[: nl + 1]
        m = _CHUNK_SIZE_RE.fullmatch(line)
        if m is None:
            self._invalid(f"bad chunk size {line[:40]!r}")
            return False
        size = int(m[1], 16)
        if size == 0:
            self._state = _TRAILERS
            return True
        self._remaining = size
        self._state = _CHUNK_DATA
        return True

    def _parse_trailers(self) -> bool:
        # The trailer lines stay in _buf until the empty line, so that all of them together
        # are held to MAX_HEAD_BYTES; _scanned is where the current line starts.
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scanned)
            if nl < 0 or nl >= MAX_HEAD_BYTES:
                if len(buf) > MAX_HEAD_BYTES:
                    self._invalid(f"the response trailers exceed {MAX_HEAD_BYTES} bytes")
                return False
            empty = not buf[self._scanned : nl].rstrip(b"\r")
            self._scanned = nl + 1
            if empty:
                del buf[: nl + 1]
                self._finish(False)
                return True


class Client:
    """Keep-alive connections per (scheme, host, port), guarded on connect."""

    def __init__(
        self,
        resolver: GuardedResolver,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self._resolver = resolver
        self._ssl = ssl_context
        # Idle connections over all origins are capped, so that deliveries to thousands of
        # endpoints do not keep thousands of sockets (and file descriptors) open.
        self._max_idle = max_idle
        self._idle_count = 0
        self._idle: dict[PoolKey, list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._last_sweep = time.monotonic()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def policy(self) -> AddressPolicy:
        return self._resolver.policy

    @policy.setter
    def policy(self, policy: AddressPolicy) -> None:
        """Swap the address policy: new connections are checked against it, and idle
        connections opened under the old one are closed. Requests already running end
        normally, and their connections are not kept."""
        self._resolver.policy = policy
        for conns in self._idle.values():
            for conn in conns:
                self._close(conn)
        self._idle.clear()
        self._idle_count = 0

    async def post(
        self,
        url: str,
        head: bytes,
        body: bytes,
        *,
        timeout_s: float,
        keep: int,
        discard: int,
        route: Route = DIRECT,
    ) -> Answer:
        """POST `body` with the header block `head`: the lines after the request line, each
        ending in CRLF, Content-Length included, without the empty line that ends it.
        `route` says how to reach the URL (proxy, TLS material)."""
        if self._closed:
            raise Failure("connection_error", "the client is shut down")
        t = target(url)
        loop = self._loop
        if loop is None:
            # Kept: asking asyncio costs a getpid() system call per call on Python 3.11.
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        message = _timeout_message(timeout_s)
        key = (t.key, route)
        conn = self._take_idle(key)
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = await self._connect(t, route, key, deadline, message)
            try:
                return await self._exchange(conn, t, head, body, deadline, message, keep, discard)
            except Failure as exc:
                # A kept-alive connection the endpoint closed just before our request
                # arrived: nothing was answered, so try once more on a new connection.
                if not (reused and exc.kind == "connection_reset" and conn.received_none()):
                    raise
                conn, reused = None, False
        raise AssertionError("unreachable")

    async def _exchange(
        self,
        conn: _Conn,
        t: Target,
        head: bytes,
        body: bytes,
        deadline: float,
        message: str,
        keep: int,
        discard: int,
    ) -> Answer:
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.start(waiter, keep, discard)
        transport = conn.transport
        assert transport is not None
        conn.deadline = deadline
        conn.deadline_message = message
        self._busy.add(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_S, self._check_deadlines)
        try:
            line = t.absolute_line if conn.absolute_form else t.request_line
            transport.write(b"".join((line, head, b"\r\n", body)))
            answer = await waiter
        except asyncio.CancelledError:
            conn.keep_alive = False
            raise
        finally:
            conn.waiter = None
            self._busy.discard(conn)
            self._release(conn)
        return answer

    def _check_deadlines(self) -> None:
        """Fail the open requests whose deadline has passed. One periodic check for all
        of them costs less than a timer per request (a timer is created and cancelled
        for every delivery, and nearly all of them never fire)."""
        self._sweeper = None
        if not self._busy or self._loop is None:
            return
        now = self._loop.time()
        for conn in [c for c in self._busy if c.deadline <= now]:
            conn.timed_out(conn.deadline_message)
        if self._busy and not self._closed:
            self._sweeper = self._loop.call_later(SWEEP_S, self._check_deadlines)

    def _take_idle(self, key: PoolKey) -> _Conn | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        now = time.monotonic()
        policy = self._resolver.policy
        while conns:
            conn = conns.pop()
            self._idle_count -= 1
            t = conn.transport
            if (
                not conn.lost
                and t is not None
                and not t.is_closing()
                and now - conn.idle_since < KEEPALIVE_S
                and conn.policy is policy
            ):
                return conn
            self._close(conn)
        return None

    def _release(self, conn: _Conn) -> None:
        t = conn.transport
        now = time.monotonic()
        if (
            conn.keep_alive
            and not conn.lost
            and not self._closed
            and t is not None
            and not t.is_closing()
            and conn.policy is self._resolver.policy
            and self._idle_count < self._max_idle
        ):
            conn.idle_since = now
            self._idle.setdefault(conn.key, []).append(conn)
            self._idle_count += 1
        else:
            self._close(conn)
        if now - self._last_sweep > 5.0:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        for key, conns in list(self._idle.items()):
            keep = [c for c in conns if not c.lost and now - c.idle_since < KEEPALIVE_S]
            for c in conns:
                if c not in keep:
                    self._close(c)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        self._idle_count = sum(len(conns) for conns in self._idle.values())

    @staticmethod
    def _close(conn: _Conn) -> None:
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.close()

    async def _connect(
        self, t: Target, route: Route, key: PoolKey, deadline: float, message: str
    ) -> _Conn:
        conn = _Conn(key)
        conn.policy = self._resolver.policy
        try:
            async with asyncio.timeout_at(deadline):
                opened = await open_connection(
                    _factory(conn),
                    t.host,
                    t.port,
                    tls=t.tls,
                    route=route,
                    resolver=self._resolver,
                    ssl_context=self._ssl,
                )
        except TimeoutError:
            raise Failure("timeout", message) from None
        conn.transport = opened.transport
        conn.absolute_form = opened.absolute_form
        return conn

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                self._close(conn)
        self._idle.clear()
        self._idle_count = 0
        for conn in list(self._busy):
            if conn.transport is not None:
                conn.transport.abort()


def _bad_line(block: bytes) -> str:
    """Which header line broke the rules (only computed for the error message)."""
    for line in block.split(b"\n"):
        if _LINE_RE.fullmatch(line) is None:
            return f"bad header line {line[:60]!r}"
    return "bad header block"


@functools.lru_cache(maxsize=16)
def _timeout_message(timeout_s: float) -> str:
    return f"no complete response within {timeout_s:g} s (delivery.timeout_s)"


def _factory(conn: _Conn) -> Callable[[], _Conn]:
    return lambda: conn


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header lines as they go on the wire."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode("utf-8")
