"""What the other daemons sharing the database did, heard through LISTEN.

One dedicated connection per daemon (LISTEN needs a session of its own; it cannot share
the pool). Two channels:
- webhookd_endpoints: an endpoint (or the event-type catalog) changed; this daemon's
  view reloads it and tells its subscriber.
- webhookd_due: another daemon committed deliveries that are due; the subscriber hears
  which endpoints (or, when the list did not fit, looks at every endpoint).
Notifications sent while the connection is down are lost, so every (re)connection
reloads the whole view and has every endpoint looked at again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import orjson
import psycopg

from webhookd.store.models import StorageError
from webhookd.store.postgres.endpoints import ENDPOINTS_CHANNEL
from webhookd.store.postgres.publish import DUE_CHANNEL

if TYPE_CHECKING:
    from webhookd.store.postgres.store import PostgresStore

log = logging.getLogger("webhookd.store")
# How long the connection may stay silent before it is checked with a round trip.
CHECK_AFTER_S = 15.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


class Notices:
    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhookd-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay_s = RECONNECT_FIRST_S
        while True:
            try:
                await self._listen()
            except (StorageError, psycopg.Error) as exc:
                log.warning(
                    "lost the notification connection; reconnecting",
                    extra={"event": "pg_listen_lost", "error": str(exc).strip()[:200]},
                )
            except Exception:
                # A bug must not end this daemon's view of the others for good.
                log.exception("notification handling failed", extra={"event": "pg_listen_bug"})
            if self.connected.is_set():
                delay_s = RECONNECT_FIRST_S  # it worked until now: try again soon
            self.connected.clear()
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    async def _listen(self) -> None:
        conn = await self.store.db.connect()
        async with conn:
            await conn.execute(f"LISTEN {ENDPOINTS_CHANNEL}")
            await conn.execute(f"LISTEN {DUE_CHANNEL}")
            # Whatever was sent while not listening is lost: look again at everything.
            await self.store.reload_view()
            await self.store.rescan_due()
            self.connected.set()
            while True:
                async for n in conn.notifies(timeout=CHECK_AFTER_S):
                    await self._handle(n.channel, n.payload)
                await conn.execute("SELECT 1")

    async def _handle(self, channel: str, payload: str) -> None:
        sender, _, body = payload.partition(" ")
        if sender == self.store.member.id:
            return  # this daemon's own change: its view and subscriber know already
        if channel == ENDPOINTS_CHANNEL:
            if body:
                await self.store.reload_view(body)
            else:
                await self.store.reload_catalog()
        elif channel == DUE_CHANNEL:
            if not body:
                await self.store.rescan_due()
                return
            try:
                items = [(str(e), int(at)) for e, at in orjson.loads(body)]
            except (ValueError, TypeError):
                log.warning("unreadable due notice", extra={"event": "pg_notice_bad"})
                return
            self.store.tell_due(items)
