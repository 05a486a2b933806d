"""Group commit: every write goes through one connection and one task, and everything
queued while a transaction runs shares the next one, so the fsync is paid per batch.

Jobs of one kind that can be merged (publishes, attempt outcomes) run as one call over the
whole batch; other jobs run one by one, each inside a SAVEPOINT so that one failing job
rolls back only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from webhookd.store.models import StorageError

log = logging.getLogger("webhookd.store")

JobFn = Callable[[aiosqlite.Connection], Awaitable[Any]]
MergedFn = Callable[[aiosqlite.Connection, list[Any]], Awaitable[list[Any]]]
MAX_BATCH = 1024


@dataclass
class _Job:
    fn: JobFn | None
    item: Any = None
    merge: MergedFn | None = None
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Writer:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhookd-store-writer")

    async def close(self) -> None:
        """Finish every queued job, then stop."""
        if self._task is None:
            return
        await self._queue.put(None)
        await self._task
        self._task = None

    async def run(self, fn: JobFn) -> Any:
        return await self._submit(_Job(fn=fn))

    async def run_merged(self, merge: MergedFn, item: Any) -> Any:
        """Run `merge(conn, items)` once for every item of this kind queued in the batch;
        it returns one result (or exception instance) per item, in order."""
        return await self._submit(_Job(fn=None, item=item, merge=merge))

    async def _submit(self, job: _Job) -> Any:
        if self._task is None:
            raise StorageError("the store is closed")
        await self._queue.put(job)
        # The write completes even if the caller is cancelled: an outcome write is never
        # lost to cancellation.
        return await asyncio.shield(job.future)

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        conn = self._conn
        try:
            await conn.execute("BEGIN IMMEDIATE")
            merged: dict[MergedFn, list[_Job]] = {}
            for job in batch:
                if job.merge is not None:
                    merged.setdefault(job.merge, []).append(job)
            for merge, jobs in merged.items():
                outs = await self._guarded(merge, [j.item for j in jobs])
                if isinstance(outs, BaseException):
                    results.extend((j, None, outs) for j in jobs)
                else:
                    for j, out in zip(jobs, outs, strict=True):
                        err = out if isinstance(out, BaseException) else None
                        results.append((j, None if err else out, err))
            for job in batch:
                if job.fn is not None:
                    fn = job.fn
                    out = await self._guarded(lambda c, _items, fn=fn: fn(c), [])
                    err = out if isinstance(out, BaseException) else None
                    results.append((job, None if err else out, err))
            await conn.commit()
            self.commits += 1
            self.healthy = True
        except (sqlite3.Error, ValueError, OSError) as exc:
            # The transaction as a whole failed (disk full, I/O error): every job fails.
            self.healthy = False
            log.error(
                "store write failed", extra={"event": "store_write_failed", "error": str(exc)}
            )
            with contextlib.suppress(sqlite3.Error, ValueError):
                await conn.rollback()
            failure = StorageError(f"storage cannot write: {exc}")
            results = [(job, None, failure) for job in batch]
        for job, value, err in results:
            if job.future.done():
                continue
            if err is not None:
                job.future.set_exception(err)
            else:
                job.future.set_result(value)

    async def _guarded(self, fn: Any, items: list[Any]) -> Any:
        conn = self._conn
        await conn.execute("SAVEPOINT job")
        try:
            out = await fn(conn, items)
        except sqlite3.OperationalError:
            raise  # disk or lock trouble: fail the whole batch
        except Exception as exc:
            await conn.execute("ROLLBACK TO job")
            await conn.execute("RELEASE job")
            return exc
        await conn.execute("RELEASE job")
        return out
