"""The fast lane: single publishes answered without aiohttp's per-request machinery, every
other request handed to aiohttp unchanged.

Publishing one event is the API's hot path, and aiohttp's server code (request and
response objects, stream reader, router, middleware, writer) was more than half of the
event loop's CPU per publish. Each connection therefore starts here, and a request is
taken here only when everything about it is plain: exactly `POST /v1/events HTTP/1.1`, a
well-formed head of at most 8 KiB, a Content-Length within the publish limit, no header
that changes how the body is read or the connection is kept (Transfer-Encoding,
Content-Encoding, Expect, Upgrade, a Connection other than keep-alive), the right API
key when keys are configured, and a body that passes every check of `publish`.

Anything else (another route or method, HTTP/1.0, a head or body it does not take, a
missing or wrong key, invalid JSON, a failed check) hands the connection, starting with
the bytes of that request, to aiohttp for the rest of its life. So every error is
answered by the same code as before, and the fast lane answers only what `publish` would
have answered with success (202 or 200), or a store failure (503), in the same form:
status line, Content-Type, Content-Length, Date and Server.

Requests pipelined on one connection are answered in order, one at a time. Reading stops
while one is being stored and more than MAX_BUFFER bytes are waiting, and while the
client does not read its answers.
"""

from __future__ import annotations

import asyncio
import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from webhookd import jsonio
from webhookd.api import find_key
from webhookd.api.context import ANY_TENANT, State
from webhookd.api.errors import ApiError, api_error, error_body, internal_error
from webhookd.api.events import ENVELOPE_SLACK, commit_one, valid_event
from webhookd.http1 import TEXT, TOKEN

REQUEST_LINE = b"POST /v1/events HTTP/1.1\r\n"
MAX_HEAD = 8192
MAX_BUFFER = 1 << 20
# A connection is closed when it has been this long without an answer and without a new
# request beginning (aiohttp's keepalive_timeout, for the connections it never sees); so
# is one whose request takes this long to arrive.
KEEPALIVE_S = 75.0
SWEEP_S = 10.0

# The header lines after the request line: "name: value" each, CRLF between them.
_HEADERS_RE = re.compile(rb"(?:" + TOKEN + rb":" + TEXT + rb"\r\n)+")
_LENGTH_RE = re.compile(rb"[0-9]{1,18}")
# Headers that change how a body is read or a connection is kept: aiohttp's business.
_REFUSED = frozenset({"transfer-encoding", "content-encoding", "expect", "upgrade"})
_SINGLE = frozenset({"content-length", "authorization", "idempotency-key", "connection"})
_SERVER = SERVER_SOFTWARE.encode()


class FastLane:
    """Protocol factory for the API's listening sockets; `handoff` makes aiohttp's
    protocol for a connection this lane gives up."""

    def __init__(
        self,
        state: State,
        handoff: web.Server,
        *,
        keepalive_s: float = KEEPALIVE_S,
        sweep_s: float = SWEEP_S,
    ) -> None:
        self.state = state
        self.handoff = handoff
        self.keepalive_s = keepalive_s
        self.sweep_s = sweep_s
        self.connections: set[_Connection] = set()
        self.closing = False
        self.published = 0  # answered here
        self.handed_off = 0  # connections given to aiohttp
        self._date_s = -1
        self._date = b""
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> asyncio.Protocol:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)
        return _Connection(self)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_s:
            self._date_s = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    def _sweep(self) -> None:
        self._sweeper = None
        if self.closing or not self.connections:
            return
        idle_before = time.monotonic() - self.keepalive_s
        for conn in list(self.connections):
            if not conn.busy and conn.idle_since < idle_before:
                conn.close()
        self._sweeper = asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)

    async def shutdown(self, grace_s: float) -> None:
        """Close idle connections now and the others once their answer is written (for
        at most `grace_s` seconds); call after the listening sockets are closed."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        storing = [c.task for c in self.connections if c.task is not None]
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        if storing:
            await asyncio.wait(storing, timeout=grace_s)
        for conn in list(self.connections):
            conn.close()


class _Connection(asyncio.Protocol):
    def __init__(self, lane: FastLane) -> None:
        self.lane = lane
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.idle_since = time.monotonic()
        self.handler: Any = None  # aiohttp's RequestHandler, once handed off
        self._eof = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self.task: asyncio.Task[None] | None = None  # storing a publish, then answering

    @property
    def busy(self) -> bool:
        """A publish of this connection is being stored."""
        return self.task is not None

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)
        self.lane.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.data_received(data)
            return
        if self.buf:
            self.buf += data
        else:
            self.buf = data
            self.idle_since = time.monotonic()  # a request begins
        if self.busy or self._write_paused:
            if len(self.buf) > MAX_BUFFER and not self._read_paused:
                self._read_paused = True
                assert self.transport is not None
                self.transport.pause_reading()
            return
        self._next()

    def eof_received(self) -> bool | None:
        if self.handler is not None:
            return bool(self.handler.eof_received())
        self._eof = True
        if self.busy or (self._write_paused and self.buf):
            return True  # half-open until the answers are written
        self.close()  # what is left is an incomplete request
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.lane.connections.discard(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.handler is not None:
            self.handler.resume_writing()
        elif not self.busy:
            self._next()
            if self._eof and not self.busy and self.handler is None:
                self.close()

    # --- requests -----------------------------------------------------------------

    def close(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.close()

    def _next(self) -> None:
        """Take the next buffered request if it is a plain publish; hand the connection
        to aiohttp if it is something else; wait if it is not all here yet."""
        buf = self.buf
        if not buf:
            self._read_more()
            return
        if not buf.startswith(REQUEST_LINE):
            if len(buf) >= len(REQUEST_LINE) or not REQUEST_LINE.startswith(buf):
                self._hand_off()
            else:
                self._read_more()
            return
        end = buf.find(b"\r\n\r\n", 0, MAX_HEAD)
        if end < 0:
            if len(buf) >= MAX_HEAD or buf.count(b"\n") != buf.count(b"\r\n"):
                self._hand_off()
            else:
                self._read_more()
            return
        try:
            taken = self._plain(buf, end)
        except Exception:
            taken = None  # whatever it is, aiohttp answers it
        if taken is None:
            self._hand_off()
            return
        start, length, authorization, id_header = taken
        if len(buf) < start + length:
            self._read_more()  # the rest of the body is on its way
            return
        raw = buf[start : start + length]
        try:
            ev = self._event(raw, authorization, id_header)
        except Exception:
            ev = None
        if ev is None:
            self._hand_off()
            return
        self.buf = buf[start + length :]
        self.task = asyncio.get_running_loop().create_task(self._publish(ev))

    def _read_more(self) -> None:
        """The next request is not all here: make sure the transport is reading (it may
        have been paused while a publish was stored and more than MAX_BUFFER waited)."""
        if self._read_paused:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()

    def _plain(self, buf: bytes, end: int) -> tuple[int, int, str, str | None] | None:
        """(where the body starts, its length, the Authorization and Idempotency-Key
        values) if the head is one the fast lane takes, else None."""
        block = buf[len(REQUEST_LINE) : end + 2]
        # TEXT has no CR or LF, so a bare LF anywhere in the head fails this as well.
        if not _HEADERS_RE.fullmatch(block):
            return None
        seen: dict[str, bytes] = {}
        for line in block[:-2].split(b"\r\n"):
            name_b, _, value = line.partition(b":")
            name = name_b.decode("ascii").lower()
            if name in _REFUSED or (name in _SINGLE and name in seen):
                return None
            seen[name] = value.strip(b" \t")
        connection = seen.get("connection")
        if connection is not None and connection.lower() != b"keep-alive":
            return None
        length_b = seen.get("content-length")
        if length_b is None or not _LENGTH_RE.fullmatch(length_b):
            return None
        length = int(length_b)
        limit = self.lane.state.config.limits.max_payload_bytes + ENVELOPE_SLACK
        if length == 0 or length > limit:
            return None
        authorization = seen.get("authorization", b"").decode("utf-8", "surrogateescape")
        key = seen.get("idempotency-key")
        id_header = None if key is None else key.decode("utf-8", "surrogateescape")
        return end + 4, length, authorization, id_header

    def _event(self, raw: bytes, authorization: str, id_header: str | None) -> Any:
        st = self.lane.state
        limited: Any = ANY_TENANT
        if st.config.api_keys:
            try:
                key = find_key(st.config, authorization)
            except ApiError:
                return None
            if key.tenant is not None:
                limited = key.tenant
        try:
            body = jsonio.loads(raw)
        except jsonio.JSONError:
            return None
        return valid_event(body, st, limited, id_header)

    async def _publish(self, ev: Any) -> None:
        try:
            try:
                status, answer = await commit_one(self.lane.state, ev)
                self._answer(status, orjson.dumps(answer), None)
            except Exception as exc:
                err = api_error(exc) or internal_error("/v1/events")
                self._answer(err.status, orjson.dumps(error_body(err)), err.headers)
            else:
                self.lane.published += 1
        finally:
            self.task = None
            self.idle_since = time.monotonic()
        if self._lost:
            return
        if self.lane.closing:
            self.close()
            return
        if self._read_paused and len(self.buf) <= MAX_BUFFER:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if not self._write_paused:
            self._next()
        if self._eof and not self.busy and self.handler is None:
            self.close()

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None) -> None:
        if self._lost or self.transport is None:
            return
        extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) if headers else b""
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Date: %s\r\nServer: %s\r\n%s\r\n%s"
            % (
                status,
                HTTPStatus(status).phrase.encode(),
                len(body),
                self.lane.date(),
                _SERVER,
                extra,
                body,
            )
        )

    def _hand_off(self) -> None:
        """From now on aiohttp serves this connection, starting with what is buffered."""
        assert self.transport is not None
        lane = self.lane
        lane.connections.discard(self)
        if lane.closing:
            self.close()
            return
        lane.handed_off += 1
        handler = lane.handoff()
        self.handler = handler
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()
        handler.connection_made(self.transport)
        if self._write_paused:
            handler.pause_writing()
        buf, self.buf = self.buf, b""
        if buf:
            handler.data_received(buf)
