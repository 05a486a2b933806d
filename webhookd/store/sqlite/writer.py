"""Group commit: every write goes through one connection, owned by one thread, and
everything queued while a transaction runs shares the next one, so the fsync is paid per
batch and not per publish or per attempt.

A batch crosses to the database thread once: the jobs are plain functions of a sqlite3
connection, run back to back in that thread inside one transaction. (Going back and forth
to the event loop for every statement would make a batch wait for the loop once per
statement, which is what limits throughput when the loop is busy delivering.)

Jobs of one kind that can be merged (publishes, attempt outcomes) run as one call over the
whole batch; other jobs run one by one, each inside a SAVEPOINT so that one failing job
rolls back only itself. A job may ask for a callback to run on the event loop once its
transaction has committed (`after_commit`), for in-memory caches that must only change
when the database has, and for one to run instead if its work was rolled back.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from webhookd.store.models import StorageError

log = logging.getLogger("webhookd.store")

JobFn = Callable[[sqlite3.Connection], Any]
MergedFn = Callable[[sqlite3.Connection, list[Any]], list[Any]]
MAX_BATCH = 1024
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass
class _Job:
    fn: JobFn | None
    future: asyncio.Future[Any]
    item: Any = None
    merge: MergedFn | None = None


class Writer:
    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhookd-db")
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Callbacks asked for by the jobs of the running transaction: (on commit, on
        # rollback), and the rollback callbacks of jobs already rolled back to a savepoint.
        self._after: list[tuple[Callable[[], None], Callable[[], None] | None]] = []
        self._undone: list[Callable[[], None]] = []
        self._thread: threading.Thread | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self.healthy = True
        self.commits = 0
        self.batched = 0
        # Seconds the database thread spent in transactions, and in COMMIT alone (mostly
        # the fsync): how busy the one writer is, for /metrics.
        self.busy_s = 0.0
        self.commit_s = 0.0
        # How long each COMMIT took, counted per bucket of COMMIT_BUCKETS (the last count
        # is everything slower): a disk whose fsync stalls shows here first.
        self.commit_counts = [0] * (len(COMMIT_BUCKETS) + 1)

    async def start(self, setup: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Open the connection in the database thread, run `setup` (migrations) there."""

        def open_conn() -> None:
            self._conn = self._connect()
            self._thread = threading.current_thread()
            if setup is not None:
                setup(self._conn)

        await asyncio.get_running_loop().run_in_executor(self._executor, open_conn)
        self._task = asyncio.create_task(self._run(), name="webhookd-store-writer")

    async def close(self) -> None:
        """Finish every queued job, then close the connection and the thread."""
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None

        def close_conn() -> None:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, close_conn)
        self._executor.shutdown(wait=True)

    async def run(self, fn: JobFn) -> Any:
        return await self._submit(_Job(fn=fn, future=self._loop().create_future()))

    def _loop(self) -> asyncio.AbstractEventLoop:
        # Kept from start(): asking asyncio for the running loop on every job costs a
        # getpid() system call on Python 3.11.
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        return self._event_loop

    async def run_merged(self, merge: MergedFn, item: Any) -> Any:
        """Run `merge(conn, items)` once for every item of this kind queued in the batch;
        it returns one result (or exception instance) per item, in order."""
        return await self._submit(
            _Job(fn=None, future=self._loop().create_future(), item=item, merge=merge)
        )

    def after_commit(
        self, callback: Callable[[], None], on_rollback: Callable[[], None] | None = None
    ) -> None:
        """From inside a job: run `callback` on the event loop once this batch commits, or
        `on_rollback` if this job's work is rolled back instead."""
        # The transaction's callback lists belong to the database thread.
        assert threading.current_thread() is self._thread, "after_commit outside a job"
        self._after.append((callback, on_rollback))

    async def _submit(self, job: _Job) -> Any:
        if self._task is None:
            raise StorageError("the store is closed")
        self._queue.put_nowait(job)
        # The write completes even if the caller is cancelled: a queued job runs whatever
        # its future says (a cancelled one is only not answered), so an outcome write is
        # never lost to cancellation.
        return await job.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            # One turn of the event loop lets every task that is ready to write (a burst
            # of publishes, a wave of finished attempts) join this transaction.
            await asyncio.sleep(0)
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            self.batched += len(batch)
            results, after = await loop.run_in_executor(self._executor, self._commit, batch)
            for callback in after:
                try:
                    callback()
                except Exception:
                    log.exception("after-transaction callback failed")
            for job, value, err in results:
                if job.future.done():
                    continue
                if err is not None:
                    job.future.set_exception(err)
                else:
                    job.future.set_result(value)

    def _commit(
        self, batch: list[_Job]
    ) -> tuple[list[tuple[_Job, Any, BaseException | None]], list[Callable[[], None]]]:
        """Runs in the database thread: the whole batch as one transaction."""
        conn = self._conn
        assert conn is not None
        self._after = []
        self._undone = []
        started = time.perf_counter()
        try:
            return self._transaction(conn, batch)
        finally:
            self.busy_s += time.perf_counter() - started

    def _transaction(
        self, conn: sqlite3.Connection, batch: list[_Job]
    ) -> tuple[list[tuple[_Job, Any, BaseException | None]], list[Callable[[], None]]]:
        results: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            merged: dict[MergedFn, list[_Job]] = {}
            for job in batch:
                if job.merge is not None:
                    merged.setdefault(job.merge, []).append(job)
            for merge, jobs in merged.items():
                items = [j.item for j in jobs]

                def run_merged(
                    c: sqlite3.Connection, m: MergedFn = merge, i: list[Any] = items
                ) -> Any:
                    return m(c, i)

                outs = self._guarded(conn, run_merged)
                if isinstance(outs, BaseException):
                    results.extend((j, None, outs) for j in jobs)
                else:
                    for j, out in zip(jobs, outs, strict=True):
                        err = out if isinstance(out, BaseException) else None
                        results.append((j, None if err else out, err))
            for job in batch:
                if job.fn is not None:
                    out = self._guarded(conn, job.fn)
                    err = out if isinstance(out, BaseException) else None
                    results.append((job, None if err else out, err))
            committing = time.perf_counter()
            conn.execute("COMMIT")
            took = time.perf_counter() - committing
            self.commit_s += took
            self.commit_counts[bisect.bisect_left(COMMIT_BUCKETS, took)] += 1
            self.commits += 1
            self.healthy = True
            return results, [done for done, _ in self._after] + self._undone
        except (sqlite3.Error, ValueError, OSError) as exc:
            # The transaction as a whole failed (disk full, I/O error, locked): every job
            # fails and nothing of it happened.
            self.healthy = False
            log.error(
                "store write failed", extra={"event": "store_write_failed", "error": str(exc)}
            )
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StorageError(f"storage cannot write: {exc}")
            undone = [undo for _, undo in self._after if undo is not None] + self._undone
            return [(job, None, failure) for job in batch], undone

    def _guarded(self, conn: sqlite3.Connection, fn: JobFn) -> Any:
        mark = len(self._after)
        conn.execute("SAVEPOINT job")
        try:
            out = fn(conn)
        except sqlite3.OperationalError:
            raise  # disk or lock trouble: fail the whole batch
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            self._undone += [undo for _, undo in self._after[mark:] if undo is not None]
            del self._after[mark:]
            return exc
        conn.execute("RELEASE job")
        return out
