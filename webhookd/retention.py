"""Retention: purge events, deliveries and attempts older than `retention.days`, and erase
the payloads of events older than `retention.payload_days` (the rest of the log is kept).

Runs in the background in small batches, each its own short transaction in the writer's
queue, so publishing and delivery are never held up for long. An event is purged, or its
payload erased, only when none of its deliveries is still pending or in flight: a
delivery that is still trying is never lost to retention.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from webhookd.store.interface import StorageError, Store
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.retention")
BATCH_EVENTS = 200
# The share of the time a pass may spend in its batches: after a batch that took t, it
# rests t * (1 - BUSY_SHARE) / BUSY_SHARE. Without rests, purging 1,000,000 events on
# PostgreSQL (bench/pg_retention.py) took 33 s but its write-ahead log slowed every
# publish's commit: publish p99 6.8 -> 40 ms, max 141 ms, and a commit waited up to 90 ms
# for the NOTIFY queue lock that another commit held through its WAL flush.
BUSY_SHARE = 0.5
MAX_INTERVAL_S = 3600.0


class Retention:
    def __init__(
        self,
        store: Store,
        days: Callable[[], float],
        *,
        payload_days: Callable[[], float] | None = None,
        busy_share: float = BUSY_SHARE,
    ) -> None:
        self.store = store
        self.days = days  # read on every pass, so a reload applies
        self.purged_total = 0
        # Payload erasure (None or >= days: the purge is all there is); see erase_once.
        self.payload_days = payload_days
        self.erased_total = 0
        self._resume = (0, 0)  # where the next payload sweep starts: (created_at, seq)
        self.busy_share = busy_share
        self.busy_s = 0.0  # time spent in batches that were followed by another
        self.rested_s = 0.0  # time spent resting between them

    async def _rest(self, started: float) -> None:
        """Between two batches: let queued publishes and outcomes go first, and rest in
        proportion to the batch just made (see BUSY_SHARE)."""
        loop = asyncio.get_running_loop()
        took = loop.time() - started
        self.busy_s += took
        resting = loop.time()
        await asyncio.sleep(took * (1 - self.busy_share) / self.busy_share)
        self.rested_s += loop.time() - resting

    def interval_s(self) -> float:
        # Hourly, or more often for a window shorter than four hours.
        shortest = min(self.days(), self.payload_days() if self.payload_days else math.inf)
        return min(MAX_INTERVAL_S, shortest * 86400 / 4)

    async def purge_once(self) -> int:
        cutoff = now_ms() - int(self.days() * 86400 * 1000)
        total = 0
        while True:
            started = asyncio.get_running_loop().time()
            n = await self.store.purge_before(cutoff, BATCH_EVENTS)
            total += n
            if n < BATCH_EVENTS:
                break
            await self._rest(started)
        if total:
            self.purged_total += total
            log.info(
                "purged old events",
                extra={"event": "retention_purged", "events": total, "days": self.days()},
            )
        return total

    async def erase_once(self) -> int:
        """Erase the payloads of events older than payload_days, oldest first, in batches.
        The sweep goes on from where the previous pass stopped (every payload before it
        is erased, but for events kept for their unfinished deliveries: it goes on from
        the first of those), so a long erased past is not read again at every pass."""
        if self.payload_days is None or self.payload_days() >= self.days():
            return 0
        cutoff = now_ms() - int(self.payload_days() * 86400 * 1000)
        at, total, held = self._resume, 0, None
        while True:
            started = asyncio.get_running_loop().time()
            sweep = await self.store.erase_old_payloads(cutoff, at, BATCH_EVENTS)
            total += sweep.erased
            held = held or sweep.held
            at = sweep.last or at
            if sweep.scanned < BATCH_EVENTS:
                break
            await self._rest(started)
        self._resume = (held[0], held[1] - 1) if held else at
        if total:
            self.erased_total += total
            log.info(
                "erased old payloads",
                extra={
                    "event": "retention_payloads_erased",
                    "events": total,
                    "payload_days": self.payload_days(),
                },
            )
        return total

    async def run(self) -> None:
        while True:
            for step in (self.purge_once, self.erase_once):
                try:
                    await step()
                except StorageError:
                    log.exception("retention pass failed; trying again later")
            await asyncio.sleep(self.interval_s())
