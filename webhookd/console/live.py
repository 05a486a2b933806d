"""Live updates over Server-Sent Events: one `change` event each time a delivery or an
attempt is added, to every open console page that listens.

One poller per daemon, running only while some page listens, asks the store for its
change marker (two index lookups) every POLL_S and wakes every listener when it moved;
bursts collapse into one event per poll. It sees every daemon's work on a shared
PostgreSQL database, and needs nothing from the dispatcher. A comment line every
KEEPALIVE_S keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from webhookd.api.context import STATE, State
from webhookd.console.pages import Ctx
from webhookd.store.interface import StorageError

log = logging.getLogger("webhookd.console")

POLL_S = 0.5
KEEPALIVE_S = 15.0
RETRY_MS = 3000


class LiveFeed:
    """The poller and its listeners (each an asyncio.Event set on a change)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.listeners: set[asyncio.Event] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.marker: tuple[int, int] | None = None
        # Set once the poller holds a marker to compare with: a page that connected
        # after that sees every later change.
        self.watching = asyncio.Event()

    def listen(self) -> asyncio.Event:
        event = asyncio.Event()
        self.listeners.add(event)
        if self._task is None or self._task.done():
            self.watching.clear()
            self._task = asyncio.create_task(self._poll(), name="webhookd-console-live")
        return event

    def leave(self, event: asyncio.Event) -> None:
        self.listeners.discard(event)

    async def _poll(self) -> None:
        marker: tuple[int, int] | None = None
        while self.listeners and not self.state.stopping:
            now: tuple[int, int] | None
            try:
                now = await self.state.store.change_marker()
            except StorageError:
                now = marker
            if marker is not None and now != marker:
                for event in self.listeners:
                    event.set()
            marker = self.marker = now
            self.watching.set()
            await asyncio.sleep(POLL_S)

    async def close(self) -> None:
        self.closed = True
        for event in self.listeners:
            event.set()
        self.listeners.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


FEED: web.AppKey[LiveFeed] = web.AppKey("webhookd_console_live", LiveFeed)


async def stream(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    feed = request.app[FEED]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    state = request.app[STATE]
    event = feed.listen()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.watching.wait(), KEEPALIVE_S)
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        if feed.marker is not None and request.query.get("m") not in (None, _text(feed.marker)):
            event.set()  # something changed between the page's render and this stream
        while not (state.stopping or feed.closed):
            try:
                await asyncio.wait_for(event.wait(), KEEPALIVE_S)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            event.clear()
            if state.stopping or feed.closed:
                break
            await response.write(b"event: change\ndata: 1\n\n")
    except ConnectionError:
        pass  # the page went away
    finally:
        feed.leave(event)
    return response


def _text(marker: tuple[int, int]) -> str:
    return f"{marker[0]}-{marker[1]}"


async def on_shutdown(app: web.Application) -> None:
    """Before the server waits for open requests: end every stream at once."""
    await app[FEED].close()
