"""The daemons sharing one PostgreSQL database: heartbeats, the reaper, the listing.

Every daemon keeps a row in `daemons` (id, host, pid, version, started_at, heartbeat_at,
in_flight), upserted every `heartbeat_s` with the database's clock, so that daemons on
hosts whose clocks disagree still agree on who is alive. A daemon whose heartbeat is older
than `lease_s` less the reaper's period is taken for dead, so that its claims are pending
again within `lease_s` of its death whenever the reaper runs.

Every daemon also reaps, every few seconds: `delivering` rows whose lease ran out, or
whose owner is dead (or has no row), go back to `pending`, due now, with their slot and
lease cleared; the other daemons are told (one notice), and dead daemons' rows are
deleted. That is the only requeue on PostgreSQL: a daemon starting up requeues nothing
that a live daemon holds (SQLite's requeue_interrupted takes everything back, since one
daemon owns the file). A reaped claim's late outcome is dropped by the fencing token
(webhookd/store/postgres/outcomes.py).

A clean shutdown gives back this daemon's claims (due now, others told) and deletes its
row, in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from webhookd.store.interface import DaemonInfo, Member
from webhookd.store.models import StorageError
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.db import Database
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.store")

# How often each daemon reaps (at most; more often with a short heartbeat).
REAP_EVERY_S = 5.0

_UPSERT = """
INSERT INTO daemons (id, host, pid, version, started_at, heartbeat_at, in_flight)
VALUES (%s, %s, %s, %s, %s, webhookd_now_ms(), %s)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                               in_flight = excluded.in_flight
"""
# Candidates are locked with SKIP LOCKED: a row whose outcome is being written right now is
# left for the next round, and reapers on several daemons do not queue behind each other.
_REAP = """
UPDATE deliveries d SET status = 'pending', next_attempt_at = %(now)s, slot = NULL,
       lease_owner = NULL, lease_token = NULL, lease_until = NULL, updated_at = %(now)s
FROM (
    SELECT x.id FROM deliveries x
    WHERE x.status = 'delivering' AND (
        x.lease_until IS NULL OR x.lease_until < webhookd_now_ms()
        OR NOT EXISTS (
            SELECT 1 FROM daemons m
            WHERE m.id = x.lease_owner AND m.heartbeat_at >= webhookd_now_ms() - %(alive_ms)s
        )
    )
    FOR UPDATE SKIP LOCKED
) r
WHERE d.id = r.id
RETURNING d.endpoint_id
"""
_DELETE_DEAD = "DELETE FROM daemons WHERE heartbeat_at < webhookd_now_ms() - %s RETURNING id"
_RELEASE_MINE = """
UPDATE deliveries SET status = 'pending',
       next_attempt_at = LEAST(COALESCE(next_attempt_at, %(now)s), %(now)s),
       slot = NULL, lease_owner = NULL, lease_token = NULL, lease_until = NULL,
       updated_at = %(now)s
WHERE status = 'delivering' AND lease_owner = %(me)s
RETURNING endpoint_id, next_attempt_at
"""
_LIVE = """
SELECT id, host, pid, version, started_at, heartbeat_at, in_flight FROM daemons
WHERE heartbeat_at >= webhookd_now_ms() - %s
ORDER BY started_at, id
"""

DueCallback = Callable[[list[tuple[str, int]]], None]


class Cluster:
    """This daemon's membership: its row, its heartbeat and reaper task, its departure.

    `in_flight` counts this daemon's open requests (for its row and the listing);
    `on_reaped` hears the (endpoint id, due ms) of deliveries the reaper made pending."""

    def __init__(
        self,
        db: Database,
        member: Member,
        *,
        lease_s: float,
        heartbeat_s: float,
        in_flight: Callable[[], int] = lambda: 0,
        on_reaped: DueCallback | None = None,
    ) -> None:
        self.db = db
        self.member = member
        self.in_flight = in_flight
        self.on_reaped = on_reaped
        self.reaped = 0  # deliveries this daemon's reaper gave back, for tests and metrics
        self._task: asyncio.Task[None] | None = None
        self._timing = asyncio.Event()  # set by configure(): the loop's times changed
        self.configure(lease_s, heartbeat_s)

    def configure(self, lease_s: float, heartbeat_s: float) -> None:
        """Set (or, on a reload, change) the lease and the heartbeat period; a running
        heartbeat loop takes them for its next beat and reap."""
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.reap_every_s = min(REAP_EVERY_S, heartbeat_s)
        # A daemon silent for longer is dead (see the module docstring).
        self.alive_ms = int((lease_s - self.reap_every_s) * 1000)
        self._timing.set()

    async def beat(self) -> None:
        """Upsert this daemon's row with the database's clock (a daemon taken for dead
        while it was stalled comes back with its next beat)."""
        m = self.member
        async with self.db.connection() as conn:
            await conn.execute(
                _UPSERT, (m.id, m.host, m.pid, m.version, m.started_at, self.in_flight())
            )

    async def reap(self) -> int:
        """Give back claims whose lease ran out or whose owner is dead, and forget dead
        daemons; returns how many deliveries became pending."""
        now = now_ms()
        async with self.db.transaction() as conn:
            cur = await conn.execute(_REAP, {"now": now, "alive_ms": self.alive_ms})
            rows = await cur.fetchall()
            await wakeups.notify_due(conn, self.member.id, [(r[0], now) for r in rows])
            cur = await conn.execute(_DELETE_DEAD, (self.alive_ms,))
            gone = [r[0] for r in await cur.fetchall()]
        if rows:
            self.reaped += len(rows)
            log.warning(
                "deliveries of a daemon that stopped answering (or whose claims ran out) "
                "are pending again",
                extra={"event": "claims_reaped", "count": len(rows), "daemons": gone},
            )
            if self.on_reaped is not None:
                self.on_reaped([(r[0], now) for r in rows])
        return len(rows)

    async def start(self) -> None:
        """Join (the row exists before this daemon claims anything), then keep it fresh
        and reap in a task of its own."""
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="webhookd-pg-heartbeat"
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        next_reap = loop.time()
        while True:
            self._timing.clear()
            with contextlib.suppress(TimeoutError):
                wait_s = max(min(next_beat, next_reap) - loop.time(), 0.0)
                await asyncio.wait_for(self._timing.wait(), wait_s)
            if self._timing.is_set():
                # A reload changed the periods: the next beat and reap follow the new ones.
                next_beat = min(next_beat, loop.time() + self.heartbeat_s)
                next_reap = min(next_reap, loop.time() + self.reap_every_s)
                continue
            try:
                if loop.time() >= next_beat:
                    next_beat = loop.time() + self.heartbeat_s
                    await self.beat()
                if loop.time() >= next_reap:
                    next_reap = loop.time() + self.reap_every_s
                    await self.reap()
            except StorageError as exc:
                log.warning(
                    "heartbeat or reaper failed; trying again",
                    extra={"event": "heartbeat_failed", "error": str(exc)},
                )

    async def stop(self) -> None:
        """Stop the heartbeat and reaper (the row stays: see leave)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def leave(self) -> list[tuple[str, int]]:
        """A clean shutdown: stop, give back this daemon's remaining claims (due now, the
        other daemons told) and delete its row, in one transaction. Returns the (endpoint,
        due ms) of the deliveries given back."""
        await self.stop()
        now = now_ms()
        async with self.db.transaction() as conn:
            cur = await conn.execute(_RELEASE_MINE, {"now": now, "me": self.member.id})
            given = [(r[0], r[1]) for r in await cur.fetchall()]
            await wakeups.notify_due(conn, self.member.id, given)
            await conn.execute("DELETE FROM daemons WHERE id = %s", (self.member.id,))
        return given

    async def daemons(self) -> list[DaemonInfo]:
        """The daemons alive now (by the reaper's measure), oldest first; this daemon's
        in_flight is its live count."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_LIVE, (self.alive_ms,))
            rows = await cur.fetchall()
        me = self.member.id
        return [
            DaemonInfo(
                Member(r[0], r[1], r[2], r[3], r[4]),
                r[5],
                self.in_flight() if r[0] == me else r[6],
            )
            for r in rows
        ]
