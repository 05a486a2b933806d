"""A lean HTTP/1.1 client for deliveries: one POST, one bounded response, keep-alive.

Deliveries need very little of a general HTTP client: POST a body that is already
rendered to a URL that is already validated, read one response with hard limits, never
follow a redirect, keep connections open for the next delivery. A general client pays
for everything else on every request (cookie jars, tracing hooks, auto headers, stream
readers, response objects); profiled, that was more than half of the CPU a delivery
cost. This module owns the delivery's part, on asyncio's transport and protocol layer:
the pool of kept-alive connections per (origin, route), one deadline per request, and
the limits on what a response may cost. Connections are opened by webhookd.connect (the
address guard, TLS, proxies).

The response framing is llhttp's (httptools.HttpResponseParser, one parser per
connection, reused for every response on it). What llhttp leaves to us:

- limits: the head, interim (1xx) heads included, within MAX_HEAD_BYTES (fed to the
  parser no further than that); at most MAX_FIELDS fields in a head, and in the trailers;
  a field (name, ": ", value) within MAX_FIELD_BYTES; trailers within MAX_HEAD_BYTES, and
  so are the bytes read without body data among them (chunk framing, a trailer still
  arriving: httptools gathers a field split over many reads by copying it again each
  time); after the head, the bytes on the wire (body, chunk framing, trailers) within
  ``discard`` + MAX_HEAD_BYTES, and the body kept up to ``keep`` bytes and read and
  thrown away up to ``discard``, past which the connection is dropped and the answer
  marked ``too_large``. So reading a response costs time linear in its bytes, and a
  callback never handles more than one socket read (at most 256 KiB), so the deadline
  sweeper gets to run however hostile the answer;
- the end of a close-delimited body: httptools has no finish(), so when the connection
  ends while such a body is being read, the body ends there;
- bare LF line ends in the head: accepted (``lenient_optional_cr_before_lf``), as the
  parser before llhttp did and as RFC 9112 section 2.2 allows a recipient to: refusing
  them would fail every delivery to an endpoint whose small HTTP stack writes LF, and a
  client reading its own connection has no second parser to disagree with. Chunk framing
  stays strict (llhttp offers no leniency for a bare LF after a chunk size);
- obs-fold (a header line continued on the next line): accepted, as RFC 9112 section
  5.2 asks of a user agent, and joined with a single space (llhttp does not say where a
  fold was, so in a head with a fold every run of blanks in a value becomes one space;
  a head without one keeps its values as sent). llhttp accepts obs-fold only with
  ``lenient_headers``, which also lets control characters through in field values: we
  keep those as sent (they are only shown in the delivery log);
- Content-Length together with Transfer-Encoding, or Content-Length repeated, is
  refused by llhttp (``invalid_response``), even when the values agree;
- a connection is reused only after an HTTP/1.1 answer that llhttp says keeps it alive
  and that nothing followed; 101 Switching Protocols is refused.

Failures raise ``Failure`` with the delivery log's error kind and one sentence for the
operator; nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import cast

import httptools
from yarl import URL

from webhookd.connect import DIRECT, Failure, Route, one_line, open_connection
from webhookd.netguard import AddressPolicy, GuardedResolver

__all__ = ["DIRECT", "Answer", "Client", "Failure", "Route", "Target", "header_block", "target"]

MAX_HEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 8190
MAX_FIELDS = 100
_FIELD_ROOM = MAX_FIELD_BYTES - 2  # name and value, without ": "
KEEPALIVE_S = 15.0
MAX_IDLE = 256  # kept-alive connections over all origins
SWEEP_S = 0.05  # how often open requests are checked against their deadline

PoolKey = tuple[tuple[bool, str, int], Route]

# Where the response being read is.
_IDLE, _HEAD, _BODY = range(3)  # _HEAD: until the final (non-1xx) head is complete


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp: the exchange is already decided."""


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
    """One connection, its parser, and the response it is waiting for."""

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self.absolute_form = False  # through a plain-http proxy: absolute URL in the request line
        self.extra_head = b""  # header lines for this connection (a proxy's credentials)
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self.policy: AddressPolicy | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.deadline = 0.0  # loop time; checked by Client._check_deadlines while a request is open
        self.deadline_message = ""
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(
            lenient_headers=True, lenient_optional_cr_before_lf=True
        )
        self._phase = _IDLE
        self._received = 0  # bytes of this exchange's response so far
        self._read_from = 0  # where the read being handled starts in them
        self._head_room = 0  # head bytes the parser may still be fed
        self._wire_limit = 0
        self._dry = 0  # bytes read since the last body data (chunk framing, trailers)
        self._keep = 0
        self._discard = 0
        self._status = 0
        self._headers: dict[str, str] = {}
        self._fields = 0  # in the head or trailers being read
        self._trailer_room = 0
        self._folded = False  # an obs-fold was seen in the head: values get their spaces joined
        self._kept = bytearray()
        self._total = 0  # body bytes, kept or not

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
        if self._phase == _BODY and self._ends_at_close():
            self._finish(False)
        elif self._phase == _HEAD:
            reset = isinstance(exc, ConnectionResetError | BrokenPipeError)
            message = (
                "the connection was reset by the endpoint"
                if reset
                else "the endpoint closed the connection without an answer"
            )
            self._fail("connection_reset", message)
        else:
            self._fail("connection_reset", "the response body was cut off")

    def data_received(self, data: bytes) -> None:
        if self._phase == _IDLE:
            # Nothing was asked: an endpoint talking out of turn cannot be trusted with
            # the next request on this connection.
            self.keep_alive = False
            if self.transport is not None:
                self.transport.abort()
            return
        self._read_from = self._received
        self._received += len(data)
        try:
            if self._phase == _HEAD:
                self._feed_head(data)
            else:
                self._feed_body(data)
        except httptools.HttpParserUpgrade:
            self._invalid("the endpoint switched protocols")
        except httptools.HttpParserError as exc:
            if self._phase == _IDLE:
                # Decided in a callback (an answer, a failure), or bytes past the answer.
                self.keep_alive = False
            else:
                self._invalid(one_line(str(exc)))

    def received_none(self) -> bool:
        return self._received == 0

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost decides what the end means

    # --- feeding the parser -------------------------------------------------------------

    def _feed_head(self, data: bytes) -> None:
        """Feed head bytes (interim heads included) no further than MAX_HEAD_BYTES."""
        if not self._folded and (b"\n " in data or b"\n\t" in data):
            # A rare case found by a C search of the bytes: see on_header. (A fold split
            # across two reads, or a body starting with LF and a space, errs on the side of
            # joining runs of spaces.)
            self._folded = True
        room = self._head_room
        if len(data) <= room:
            self._head_room = room - len(data)
            self._parser.feed_data(data)
            return
        self._head_room = 0
        view = memoryview(data)
        self._parser.feed_data(view[:room])
        if self._phase == _HEAD:
            self._invalid(f"the response head exceeds {MAX_HEAD_BYTES} bytes")
        elif self._phase == _BODY:
            self._feed_body(view[room:])
        else:
            self.keep_alive = False  # bytes past a response without a body

    def _feed_body(self, data: bytes | memoryview) -> None:
        """Feed bytes after the head, held to the wire limit; framing and trailers without
        body data in between are held to MAX_HEAD_BYTES."""
        over = self._received - self._wire_limit
        if over > 0:
            if over < len(data):
                self._parser.feed_data(data[: len(data) - over])
            self.keep_alive = False
            if self._phase == _BODY:
                self._too_large()
            return
        total = self._total
        self._parser.feed_data(data)
        if self._phase != _BODY:
            return
        if self._total != total:
            self._dry = 0
            return
        self._dry += len(data)
        if self._dry > MAX_HEAD_BYTES:
            self._invalid(f"the response trailers exceed {MAX_HEAD_BYTES} bytes")

    # --- parser callbacks (httptools calls them by name) --------------------------------

    def on_message_begin(self) -> None:
        if self._phase != _HEAD:
            raise _Stop  # a second answer after ours: data_received drops the connection
        self._fields = 0
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        size = len(name) + len(value)
        if self._fields > MAX_FIELDS or size > _FIELD_ROOM or self._phase == _BODY:
            self._unusual_field(size)  # raises, or counts a trailer
            return
        key = name.decode("latin-1")  # llhttp admits only token characters in a name
        text = value.rstrip(b" \t").decode("utf-8", "replace")
        if self._folded:
            # llhttp drops the CRLF of a fold and keeps the blanks after it: one space.
            text = " ".join(filter(None, text.replace("\t", " ").split(" ")))
        headers = self._headers
        old = headers.get(key)
        headers[key] = text if old is None else f"{old}, {text}"

    def _unusual_field(self, size: int) -> None:
        """A field past a limit, or a trailer (counted, not kept)."""
        if self._fields > MAX_FIELDS:
            self._stop_invalid(f"more than {MAX_FIELDS} header fields")
        if size > _FIELD_ROOM:
            self._stop_invalid(f"a header field is longer than {MAX_FIELD_BYTES} bytes")
        self._trailer_room -= size + 4  # ": " and CRLF
        if self._trailer_room < 0:
            self._stop_invalid(f"the response trailers exceed {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                self._stop_invalid("the endpoint switched protocols")
            if status < 100:
                self._stop_invalid(f"bad status code {status}")
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            self._stop_invalid(f"HTTP version {version} in the status line")
        self._status = status
        self.keep_alive = version == "1.1" and parser.should_keep_alive()
        self._phase = _BODY
        self._fields = 0
        self._trailer_room = MAX_HEAD_BYTES
        # The head ends in the read being handled; what of that read is head (at most
        # MAX_HEAD_BYTES) is counted as wire after it, so a body may use `discard` in full.
        self._wire_limit = self._read_from + MAX_HEAD_BYTES + self._discard

    def on_body(self, data: bytes) -> None:
        kept = self._kept
        if len(kept) < self._keep:
            kept += data[: self._keep - len(kept)]
        self._total += len(data)
        if self._total > self._discard:
            self._too_large()
            raise _Stop

    def on_message_complete(self) -> None:
        if self._phase == _BODY:
            self._finish(False)

    # --- one exchange -------------------------------------------------------------------

    def start(self, waiter: asyncio.Future[Answer], keep: int, discard: int) -> None:
        self.waiter = waiter
        self._phase = _HEAD
        self._received = 0
        self._read_from = 0
        self._head_room = MAX_HEAD_BYTES
        self._dry = 0
        self._keep = keep
        self._discard = discard
        self._status = 0
        self._headers = {}
        self._folded = False
        self._kept = bytearray()
        self._total = 0

    def _ends_at_close(self) -> bool:
        """Whether the body being read is delimited by the end of the connection: neither
        Content-Length nor a final chunked coding (llhttp decided the same, and keeps it to
        itself)."""
        for name, value in self._headers.items():
            key = name.lower()
            if key == "content-length":
                return False
            if key == "transfer-encoding":
                return value.rpartition(",")[2].strip(" \t").lower() != "chunked"
        return True

    def _finish(self, too_large: bool) -> None:
        self._phase = _IDLE
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(self._status, self._headers, bytes(self._kept), too_large))

    def _too_large(self) -> None:
        # Drop the connection rather than read gigabytes to keep it.
        self.keep_alive = False
        self._finish(True)
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, kind: str, message: str) -> None:
        self._phase = _IDLE
        self.keep_alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            status = self._status or None
            headers = self._headers if status else {}
            waiter.set_exception(Failure(kind, message, status, headers, bytes(self._kept)))
        if self.transport is not None:
            self.transport.abort()

    def _invalid(self, why: str) -> None:
        self._fail("invalid_response", f"the response was not valid HTTP: {why}")

    def _stop_invalid(self, why: str) -> None:
        self._invalid(why)
        raise _Stop

    def timed_out(self, message: str) -> None:
        self._fail("timeout", message)


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
            transport.write(b"".join((line, conn.extra_head, head, b"\r\n", body)))
            answer = await waiter
        except asyncio.CancelledError:
            conn.keep_alive = False
            raise
        finally:
            conn.waiter = None
            self._busy.discard(conn)
            self._release(conn)
        if answer.status == 407 and conn.absolute_form:
            # Only the forward proxy asks for proxy authentication: its failure, not the
            # endpoint's answer.
            raise Failure(
                "proxy",
                "the proxy answered HTTP 407 (proxy authentication required): check the "
                "credentials in the proxy URL",
            )
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
        conn.extra_head = opened.extra_head
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


@functools.lru_cache(maxsize=16)
def _timeout_message(timeout_s: float) -> str:
    return f"no complete response within {timeout_s:g} s (delivery.timeout_s)"


def _factory(conn: _Conn) -> Callable[[], _Conn]:
    return lambda: conn


def header_block(headers: Mapping[str, str]) -> bytes:
    """The header lines as they go on the wire."""
    return "".join([f"{k}: {v}\r\n" for k, v in headers.items()]).encode("utf-8")
