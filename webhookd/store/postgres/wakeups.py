"""Wake-ups across daemons: which endpoints have due work, heard through LISTEN/NOTIFY.

Senders (inside their transaction, so the notice goes out only if it commits):
- `notify_published`: one notice per publish call or batch: its (endpoint, due ms)
  pairs, the earliest per endpoint, when they fit (the usual publish, to a few
  endpoints: the listeners need no query); else the range of its event seqs, which
  listeners expand with one indexed query on deliveries(event_seq), so the notice stays
  small however many endpoints the events fan out to. (Expanding cost every other daemon
  a query per publish: 0.8 ms of server time each, 2 per publish with three daemons,
  about a third of the server's CPU per delivery in bench/cluster.py.)
- `notify_due`: one notice per outcome batch that scheduled retries, per release, per
  reap: (endpoint, due ms) pairs, the earliest per endpoint; past NOTIFY's payload limit
  (8000 bytes) a "rescan" marker instead.
A NOTIFY takes a database-wide lock at commit, so it is sent once per transaction, never
per row.

`Listener`: one dedicated connection per daemon (LISTEN needs a session of its own; it
cannot come from the pool, nor through a transaction-pooling PgBouncer). It turns notices
from other daemons into (endpoint id, due ms) items for a callback. The connection is
checked with a NOTIFY round trip to itself after `check_s` of silence and re-established
when that fails or the connection drops; notices sent meanwhile are lost, so every
(re)connection is followed by a rescan of every endpoint with pending work. Every
`poll_s` it also asks for what comes due within the next `poll_s` (`due_soon`), a
backstop should a notice ever be missed.

Payloads are JSON: {"from": daemon id, "due": [[e, ms], ...]} | {"from", "seq": [lo, hi]}
| {"from", "rescan": true} | {"from", "ping": n}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
import psycopg

from webhookd.store.models import StorageError
from webhookd.store.postgres.db import Conn, Database
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.store")

WAKE_CHANNEL = "webhookd_wake"
# NOTIFY refuses payloads of 8000 bytes or more; leave room for the JSON around the list.
MAX_NOTICE_BYTES = 7900
CHECK_S = 5.0
PING_TIMEOUT_S = 2.0
POLL_S = 5.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0

# Deliveries of a published range of events, per endpoint: the deliveries_event index.
_EXPAND = """
SELECT endpoint_id, min(next_attempt_at) FROM deliveries
WHERE event_seq BETWEEN %s AND %s AND status = 'pending'
GROUP BY endpoint_id
"""
# Per live endpoint, its earliest pending delivery if due before a time: one probe of the
# deliveries_due partial index (endpoint_id, next_attempt_at) per endpoint, so the cost
# follows the number of endpoints, not the backlog. (The match is `>= x AND <= x`, and
# ORDER BY names endpoint_id: see _PER_ENDPOINT in claims.py.)
_DUE_SOON = """
SELECT e.id, m.due FROM endpoints e CROSS JOIN LATERAL (
    SELECT d.next_attempt_at AS due FROM deliveries d
    WHERE d.endpoint_id >= e.id AND d.endpoint_id <= e.id AND d.status = 'pending'
    ORDER BY d.endpoint_id, d.next_attempt_at LIMIT 1
) m
WHERE e.active AND e.deleted_at IS NULL AND m.due < %s
"""

DueItems = list[tuple[str, int]]


def _earliest(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for endpoint_id, at in items:
        if endpoint_id not in out or at < out[endpoint_id]:
            out[endpoint_id] = at
    return out


def published_notice(
    member_id: str, event_seqs: Iterable[int], due: Iterable[tuple[str, int]] = ()
) -> str | None:
    """The notice of a publish whose events have these seqs and whose deliveries are due
    at these (endpoint, ms): the pairs when they fit, else the seq range; None if there
    are no events."""
    seqs = list(event_seqs)
    if not seqs:
        return None
    earliest = _earliest(due)
    if earliest:
        text = orjson.dumps({"from": member_id, "due": list(earliest.items())}).decode()
        if len(text.encode()) <= MAX_NOTICE_BYTES:
            return text
    return orjson.dumps({"from": member_id, "seq": [min(seqs), max(seqs)]}).decode()


def due_notice(member_id: str, items: Iterable[tuple[str, int]]) -> str | None:
    """The notice of these (endpoint, due ms) pairs, the earliest per endpoint; a rescan
    marker when they do not fit; None if there are none."""
    earliest = _earliest(items)
    if not earliest:
        return None
    text = orjson.dumps({"from": member_id, "due": list(earliest.items())}).decode()
    if len(text.encode()) > MAX_NOTICE_BYTES:
        text = orjson.dumps({"from": member_id, "rescan": True}).decode()
    return text


async def notify_published(
    conn: Conn, member_id: str, event_seqs: Iterable[int], due: Iterable[tuple[str, int]] = ()
) -> None:
    """In the publish transaction: tell the other daemons once it commits."""
    payload = published_notice(member_id, event_seqs, due)
    if payload is not None:
        await conn.execute("SELECT pg_notify(%s, %s)", (WAKE_CHANNEL, payload))


async def notify_due(conn: Conn, member_id: str, items: Iterable[tuple[str, int]]) -> None:
    """In the transaction that made these deliveries pending: tell the other daemons."""
    payload = due_notice(member_id, items)
    if payload is not None:
        await conn.execute("SELECT pg_notify(%s, %s)", (WAKE_CHANNEL, payload))


async def due_soon(conn: Conn, horizon_ms: int | None, now: int | None = None) -> DueItems:
    """The live endpoints with pending work due before now + horizon_ms (None: any time),
    with their earliest due time."""
    before = 2**62 if horizon_ms is None else (now_ms() if now is None else now) + horizon_ms
    cur = await conn.execute(_DUE_SOON, (before,))
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def expand_published(conn: Conn, seq_lo: int, seq_hi: int) -> DueItems:
    cur = await conn.execute(_EXPAND, (seq_lo, seq_hi))
    return [(r[0], r[1]) for r in await cur.fetchall() if r[1] is not None]


class _ListenLost(Exception):
    """The LISTEN connection did not hear its own ping in time."""


class Listener:
    """This daemon's LISTEN connection (see the module docstring).

    `on_due` gets the (endpoint id, due ms) items other daemons announced, or that a rescan
    or the backstop poll found; it runs on the event loop and must not block or raise.
    `channels` maps further channels to LISTEN on (another module's notices) to async
    handlers of their payloads. `on_connected` runs after every (re)connection."""

    def __init__(
        self,
        db: Database,
        member_id: str,
        on_due: Callable[[DueItems], None],
        *,
        channels: Mapping[str, Callable[[str], Awaitable[None]]] | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        check_s: float = CHECK_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
        poll_s: float | None = POLL_S,
    ) -> None:
        self.db = db
        self.member_id = member_id
        self.on_due = on_due
        self.channels = dict(channels or {})
        self.on_connected = on_connected
        self.check_s = check_s
        self.ping_timeout_s = ping_timeout_s
        self.poll_s = poll_s
        self.connected = asyncio.Event()
        self.connections = 0  # sessions established, the first included
        self.pings = 0  # round trips that came back
        self.backend_pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="webhookd-pg-listen")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    async def _run(self) -> None:
        delay_s = RECONNECT_FIRST_S
        failing = False  # within an outage: one warning for all of it
        while True:
            try:
                await self._session()
            except (StorageError, psycopg.Error, _ListenLost, OSError) as exc:
                if self.connected.is_set() or not failing:
                    log.warning(
                        "the notification connection is down; reconnecting",
                        extra={"event": "pg_listen_lost", "error": str(exc).strip()[:200]},
                    )
                failing = True
            if self.connected.is_set():
                delay_s = RECONNECT_FIRST_S
            self.connected.clear()
            self.backend_pid = None
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RECONNECT_MAX_S)

    async def _session(self) -> None:
        conn = await self.db.connect()
        async with conn:
            for channel in (WAKE_CHANNEL, *self.channels):
                await conn.execute(f'LISTEN "{channel}"')
            self.backend_pid = conn.info.backend_pid
            self.connections += 1
            # Whatever was announced while not listening is lost: look at everything.
            self._tell(await due_soon(conn, None))
            if self.on_connected is not None:
                await self.on_connected()
            self.connected.set()
            await self._listen(conn)

    async def _listen(self, conn: Conn) -> None:
        check_at = time.monotonic() + self.check_s
        poll_at = None if self.poll_s is None else time.monotonic() + self.poll_s
        while True:
            wait_s = check_at - time.monotonic()
            if poll_at is not None:
                wait_s = min(wait_s, poll_at - time.monotonic())
            notices = await self._receive(conn, max(wait_s, 0.0))
            now = time.monotonic()
            if notices:
                await self._handle(conn, notices)
                check_at = now + self.check_s  # it hears: no need to ask
            elif now >= check_at:
                await self._ping(conn)
                check_at = time.monotonic() + self.check_s
            if poll_at is not None and self.poll_s is not None and now >= poll_at:
                self._tell(await due_soon(conn, int(self.poll_s * 1000)))
                poll_at = now + self.poll_s

    @staticmethod
    async def _receive(conn: Conn, timeout_s: float) -> list[psycopg.Notify]:
        """The notices that arrive within `timeout_s` (those received while the connection
        ran a query first); returns as soon as there are some."""
        return [n async for n in conn.notifies(timeout=timeout_s, stop_after=1)]

    async def _ping(self, conn: Conn) -> None:
        """A NOTIFY to itself must come back: the session is alive and still listening."""
        token = self.pings + 1
        payload = orjson.dumps({"from": self.member_id, "ping": token}).decode()
        await conn.execute("SELECT pg_notify(%s, %s)", (WAKE_CHANNEL, payload))
        deadline = time.monotonic() + self.ping_timeout_s
        while (left := deadline - time.monotonic()) > 0:
            notices = await self._receive(conn, left)
            if await self._handle(conn, notices, ping=token):
                self.pings = token
                return
        raise _ListenLost(f"no answer to a NOTIFY within {self.ping_timeout_s:g} s")

    async def _handle(
        self, conn: Conn, notices: Sequence[psycopg.Notify], ping: int | None = None
    ) -> bool:
        """Act on notices; True if among them is this daemon's ping `ping`."""
        items: DueItems = []
        pinged = False
        for n in notices:
            if n.channel != WAKE_CHANNEL:
                handler = self.channels.get(n.channel)
                if handler is not None:
                    await handler(n.payload)
                continue
            doc = _parse(n.payload)
            if doc is None:
                continue
            if doc.get("from") == self.member_id:
                pinged = pinged or (ping is not None and doc.get("ping") == ping)
                continue  # this daemon's own notice: it knows already
            items += await self._items(conn, doc)
        self._tell(items)
        return pinged

    async def _items(self, conn: Conn, doc: dict[str, Any]) -> DueItems:
        try:
            if "seq" in doc:
                lo, hi = doc["seq"]
                return await expand_published(conn, int(lo), int(hi))
            if "due" in doc:
                return [(str(e), int(at)) for e, at in doc["due"]]
        except (TypeError, ValueError):
            log.warning("unreadable wake-up notice", extra={"event": "pg_notice_bad"})
            return []
        if doc.get("rescan"):
            return await due_soon(conn, None)
        return []

    def _tell(self, items: DueItems) -> None:
        if items:
            self.on_due(items)


def _parse(payload: str) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        log.warning("unreadable wake-up notice", extra={"event": "pg_notice_bad"})
        return None
    return doc
