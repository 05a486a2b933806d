"""Retention: purge events, deliveries and attempts older than `retention.days`.

Runs in the background in small batches, each its own short transaction in the writer's
queue, so publishing and delivery are never held up for long. An event is purged only when
none of its deliveries is still pending or in flight: a delivery that is still trying is
never lost to retention.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from webhookd.store.interface import StorageError, Store
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.retention")
BATCH_EVENTS = 200
MAX_INTERVAL_S = 3600.0


class Retention:
    def __init__(self, store: Store, days: Callable[[], float]) -> None:
        self.store = store
        self.days = days  # read on every pass, so a reload applies
        self.purged_total = 0

    def interval_s(self) -> float:
        # Hourly, or more often for a window shorter than four hours.
        return min(MAX_INTERVAL_S, self.days() * 86400 / 4)

    async def purge_once(self) -> int:
        cutoff = now_ms() - int(self.days() * 86400 * 1000)
        total = 0
        while True:
            n = await self.store.purge_before(cutoff, BATCH_EVENTS)
            total += n
            if n < BATCH_EVENTS:
                break
            await asyncio.sleep(0)  # let queued publishes and outcomes go first
        if total:
            self.purged_total += total
            log.info(
                "purged old events",
                extra={"event": "retention_purged", "events": total, "days": self.days()},
            )
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.purge_once()
            except StorageError:
                log.exception("retention pass failed; trying again later")
            await asyncio.sleep(self.interval_s())
