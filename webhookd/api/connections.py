"""The API's connections: how many may be open, and how long a request may take to arrive.

aiohttp serves every API request; what it does not have (3.14) is a limit on open
connections or a deadline for a request's head and body: its `keepalive_timeout` closes
only a connection that waits for a request head, so a client that sends a body slowly,
or nothing after its head, holds a descriptor for as long as it likes. 320 unfinished
heads once exhausted a 300-descriptor limit, after which deliveries failed with "Too many
open files".

So each accepted connection gets a thin `asyncio.Protocol` (the documented interface)
wrapped around the protocol aiohttp's server makes for it, and `middleware` tells it
where each request stands:

- past `limits.max_connections`, a new connection is closed at once without reading
  (counted, and logged at most once a minute);
- a connection that has opened, or begun a request after an answer, has
  `limits.request_read_timeout_s` for that request's head and whole body to arrive; a
  trickle of bytes does not extend it; past it the connection is dropped;
- while a handler works on a request whose body has arrived, no deadline applies;
- after an answer, an idle connection is closed after `limits.keepalive_s` (aiohttp's
  `keepalive_timeout` does the same with the value the daemon started with; this one
  follows reloads);
- a client that shuts its sending side after a request still gets its answer, and then
  the connection is closed.

The body is not read here: handlers read it themselves with per-route limits (see
`webhookd.api.validate.read_json`), so the deadline checks when it fires whether the
body has arrived (`StreamReader.is_eof()`, documented).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import cast

from aiohttp import web

from webhookd.api.context import State
from webhookd.api.errors import Handler

log = logging.getLogger("webhookd.api")

REFUSED_LOG_INTERVAL_S = 60.0


class Phase(enum.Enum):
    OPENED = "opened"  # no byte yet: the read deadline runs from the connection's start
    READING = "reading"  # a request has begun: the read deadline runs
    HANDLING = "handling"  # its head and body are here: no deadline
    IDLE = "idle"  # answered: the keep-alive deadline runs


class Connections:
    """Every open API connection, and the limits in force (read from the live config, so
    a reload applies to the next deadline armed)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.open: dict[asyncio.BaseTransport, Connection] = {}
        self.refused_total = 0
        self.dropped_total = 0
        self._refused_unlogged = 0
        self._refused_logged_at = -REFUSED_LOG_INTERVAL_S

    def factory(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], Connection]:
        """A protocol factory for a listening socket: each connection it accepts wraps
        one protocol of `make_protocol` (aiohttp's `web.Server`)."""
        return lambda: Connection(self, make_protocol)

    def find(self, request: web.BaseRequest) -> Connection | None:
        transport = request.transport
        return None if transport is None else self.open.get(transport)

    def admit(self, conn: Connection, transport: asyncio.BaseTransport) -> bool:
        if len(self.open) >= self.state.config.limits.max_connections:
            self._refused()
            return False
        self.open[transport] = conn
        return True

    def _refused(self) -> None:
        self.refused_total += 1
        self._refused_unlogged += 1
        now = time.monotonic()
        if now - self._refused_logged_at < REFUSED_LOG_INTERVAL_S:
            return
        self._refused_logged_at = now
        log.warning(
            "API connections refused: limits.max_connections reached",
            extra={
                "event": "api_connections_refused",
                "refused": self._refused_unlogged,
                "max_connections": self.state.config.limits.max_connections,
            },
        )
        self._refused_unlogged = 0

    def close_all(self) -> None:
        """Drop whatever is still open (after aiohttp's own shutdown)."""
        for transport in list(self.open):
            transport.abort()  # type: ignore[attr-defined]


class Connection(asyncio.Protocol):
    """One API connection: admits it, keeps its deadline, delegates to aiohttp's protocol."""

    def __init__(self, owner: Connections, make_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.owner = owner
        self.make_protocol = make_protocol
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.phase = Phase.OPENED
        self.request: web.BaseRequest | None = None  # the one being read or handled
        self.more = False  # bytes arrived while a request was handled (pipelining)
        self.eof = False  # the client shut its sending side
        self.deadline: float | None = None  # loop time; None: none runs
        # One handle, never more than the read timeout ahead of when it was set: a new
        # deadline (at least that far ahead) then rarely needs a new handle, so a
        # request costs no timer of its own (aiohttp's keep-alive timer works alike).
        self._timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol, delegated to aiohttp's protocol -------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)
        if not self.owner.admit(self, transport):
            transport.close()
            return
        self.inner = self.make_protocol()
        self.inner.connection_made(transport)
        self._arm(self.owner.state.config.limits.request_read_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            return
        if self.phase is Phase.IDLE:
            self._read_from_now()
        elif self.phase is Phase.OPENED:
            self.phase = Phase.READING  # the deadline keeps running from the open
        elif self.phase is Phase.HANDLING:
            self.more = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            return None
        self.inner.eof_received()
        if self.phase in (Phase.OPENED, Phase.IDLE):
            return None  # nothing asked: the transport closes
        # Half-closed after (part of) a request: keep the sending side open for the
        # answer; `middleware` closes the connection after it.
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.request = None
        if self.inner is None:
            return
        self.owner.open.pop(cast(asyncio.BaseTransport, self.transport), None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # --- where the current request stands (called by `middleware`) -----------------

    def request_started(self, request: web.BaseRequest) -> None:
        """Its head has arrived. The read deadline keeps running until its body has too."""
        self.request = request
        if self.phase is not Phase.READING:
            self._read_from_now()
        if request.content.is_eof():
            self._handling()

    def answer_ready(self, body_complete: bool) -> bool:
        """The handler has its answer; True when the connection is to close after it."""
        self.request = None
        if not body_complete:
            # The read deadline still runs: aiohttp discards the unread rest of the body
            # before it closes the connection, within it.
            return True
        return self.eof and not self.more

    def answered(self) -> None:
        """The answer is written: what comes next is idle time, or the next request."""
        if self.phase is not Phase.HANDLING:
            return  # closing, its body unread
        if self.more:
            self.more = False
            self._read_from_now()
        elif self.eof:
            # Nothing more can come; the shut side may have arrived while writing.
            self._disarm()
            if self.transport is not None:
                self.transport.close()
        else:
            self.phase = Phase.IDLE
            self._arm(self.owner.state.config.limits.keepalive_s)

    # --- the deadline -----------------------------------------------------------------

    def _handling(self) -> None:
        self.phase = Phase.HANDLING
        self.more = False
        self._disarm()

    def _read_from_now(self) -> None:
        self.phase = Phase.READING
        self._arm(self.owner.state.config.limits.request_read_timeout_s)

    def _arm(self, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.deadline = deadline = now + delay_s
        timer = self._timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(self._next_check(now), self._check)

    def _disarm(self) -> None:
        self.deadline = None  # the handle, if any, finds nothing to do

    def _next_check(self, now: float) -> float:
        assert self.deadline is not None
        return min(self.deadline, now + self.owner.state.config.limits.request_read_timeout_s)

    def _check(self) -> None:
        self._timer = None
        if self.deadline is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now < self.deadline:
            self._timer = loop.call_at(self._next_check(now), self._check)
            return
        self.deadline = None
        self._expired()

    def _expired(self) -> None:
        request = self.request
        if self.phase is Phase.READING and request is not None and request.content.is_eof():
            self._handling()  # the body arrived in time; its handler is still working
            return
        if self.phase is Phase.HANDLING or self.transport is None:
            return
        if self.phase is not Phase.IDLE:
            self.owner.dropped_total += 1
        self.transport.abort()


CONNECTIONS: web.AppKey[Connections] = web.AppKey("webhookd_connections", Connections)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the request's connection where it stands, and writes the answer here so that
    the connection is idle only once it is written."""
    conn = request.app[CONNECTIONS].find(request)
    if conn is None:  # served without the wrapper (an app in a test)
        return await handler(request)
    conn.request_started(request)
    try:
        response = await handler(request)
    except BaseException:
        conn.answer_ready(request.content.is_eof())
        conn.answered()  # aiohttp writes the answer to an exception itself
        raise
    if conn.answer_ready(request.content.is_eof()):
        response.force_close()
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left; aiohttp sees it when it finishes the response
    conn.answered()
    return response
