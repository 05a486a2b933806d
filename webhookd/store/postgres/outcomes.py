"""Outcomes on a database several daemons share: fenced, and several per transaction.

Each outcome updates its delivery only `WHERE id = … AND lease_token = …` (and the row is
still `delivering`): a daemon whose claim was lost (its lease ran out, or it was taken for
dead and the delivery reaped and claimed again) cannot overwrite what the next owner
records. The attempt row is inserted only for the outcomes whose update hit, in the same
statement. A stale outcome is dropped, logged once with its delivery id.

Outcomes arriving within `linger_s` of each other (up to `max_batch`) share one
transaction: the delivery updates and attempt inserts are one statement, the endpoints'
health one more, so a commit (the expensive part) is paid per batch. In it, as on SQLite
(webhookd/store/sqlite/batches.py): the latest outcome per endpoint sets last_success_at
or failing_since, a `disable_reason` disables the endpoint and skips its pending
deliveries, and a retry scheduled on an endpoint disabled meanwhile is skipped. Retries
are announced to the other daemons with one notice per batch (wakeups.notify_due).

The batches are written by one task of their own, so an outcome is written even if the
caller awaiting it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from webhookd.store.models import Outcome, StorageError
from webhookd.store.postgres import endpoints as ep_sql
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.claims import lease_token
from webhookd.store.postgres.db import Conn, Database
from webhookd.store.postgres.rows import bytes_from_text, no_nul
from webhookd.timefmt import now_ms

log = logging.getLogger("webhookd.store")

LINGER_S = 0.002
MAX_BATCH = 64

# One statement: the fenced delivery updates, then the attempts of those that hit.
_RECORD = """
WITH v AS (
    SELECT * FROM unnest(%(ids)s::text[], %(tokens)s::bigint[], %(status)s::text[],
                         %(number)s::int[], %(failures)s::int[], %(format_index)s::int[],
                         %(next_at)s::bigint[])
        AS v (id, token, status, number, failures, format_index, next_at)
),
hit AS (
    UPDATE deliveries d SET status = v.status,
           attempt_count = GREATEST(d.attempt_count, v.number), failures = v.failures,
           format_index = v.format_index, next_attempt_at = v.next_at, manual = false,
           resume_at = NULL, slot = NULL, lease_owner = NULL, lease_token = NULL,
           lease_until = NULL, updated_at = %(now)s
    FROM v WHERE d.id = v.id AND d.lease_token = v.token AND d.status = 'delivering'
    RETURNING d.id
)
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, trigger, format,
                      request_headers, status_code, response_headers, response_body,
                      error_kind, error_message)
SELECT a.* FROM unnest(%(ids)s::text[], %(number)s::int[], %(started)s::bigint[],
                       %(duration)s::int[], %(trigger)s::text[], %(format)s::text[],
                       %(request_headers)s::text[], %(status_code)s::int[],
                       %(response_headers)s::text[], %(body)s::bytea[], %(error_kind)s::text[],
                       %(error_message)s::text[])
    AS a (delivery_id, number, started_at, duration_ms, trigger, format, request_headers,
          status_code, response_headers, response_body, error_kind, error_message)
WHERE a.delivery_id IN (SELECT id FROM hit)
RETURNING delivery_id
"""
# Rows of several endpoints are locked in id order, the same in every daemon's batches, so
# two batches touching the same endpoints cannot deadlock.
_LOCK_ENDPOINTS = "SELECT id FROM endpoints WHERE id = ANY(%s) ORDER BY id FOR NO KEY UPDATE"
_HEALTH = """
UPDATE endpoints e SET
    last_success_at = CASE WHEN v.ok THEN %(now)s ELSE e.last_success_at END,
    failing_since = CASE WHEN v.ok THEN NULL ELSE COALESCE(e.failing_since, v.started) END
FROM unnest(%(ids)s::text[], %(ok)s::boolean[], %(started)s::bigint[]) AS v (id, ok, started)
WHERE e.id = v.id
RETURNING e.id, e.last_success_at, e.failing_since
"""
_DISABLE = (
    "UPDATE endpoints SET active = false, disabled_reason = %s, updated_at = %s "
    "WHERE id = %s AND deleted_at IS NULL AND active"
)
# A retry decided just before another attempt disabled the endpoint must not stay pending.
_SKIP_IF_DISABLED = """
UPDATE deliveries SET status = 'skipped', next_attempt_at = NULL, updated_at = %s
WHERE id = ANY(%s) AND status = 'pending'
  AND endpoint_id IN (SELECT id FROM endpoints WHERE NOT active)
RETURNING id
"""

HealthListener = Callable[[str, dict[str, Any]], None]


@dataclass
class _Batch:
    outcomes: list[Outcome] = field(default_factory=list)
    futures: list[asyncio.Future[bool]] = field(default_factory=list)


def _record_params(outcomes: Sequence[Outcome], now: int) -> dict[str, Any]:
    attempts = [o.attempt for o in outcomes]
    return {
        "now": now,
        "ids": [o.delivery_id for o in outcomes],
        "tokens": [lease_token(o.lease) for o in outcomes],
        "status": [o.status for o in outcomes],
        "number": [a.number for a in attempts],
        "failures": [o.failures for o in outcomes],
        "format_index": [o.format_index for o in outcomes],
        "next_at": [o.next_attempt_at for o in outcomes],
        "started": [a.started_at for a in attempts],
        "duration": [a.duration_ms for a in attempts],
        "trigger": [a.trigger for a in attempts],
        "format": [a.format for a in attempts],
        "request_headers": [orjson.dumps(a.request_headers).decode() for a in attempts],
        "status_code": [a.status_code for a in attempts],
        "response_headers": [orjson.dumps(a.response_headers).decode() for a in attempts],
        "body": [bytes_from_text(a.response_body) for a in attempts],
        "error_kind": [a.error_kind for a in attempts],
        "error_message": [no_nul(a.error_message) for a in attempts],
    }


async def write_outcomes(
    conn: Conn, outcomes: Sequence[Outcome], member_id: str, now: int
) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """Inside the caller's transaction: record the outcomes whose claim still holds.
    Returns the delivery ids recorded and, per endpoint, the health changes to show in
    this daemon's view once the transaction commits."""
    cur = await conn.execute(_RECORD, _record_params(outcomes, now))
    hit = {r[0] for r in await cur.fetchall()}
    recorded = [o for o in outcomes if o.delivery_id in hit]
    if not recorded:
        return hit, {}
    changes = await _health(conn, recorded, now)
    for endpoint_id, reason in _disables(recorded).items():
        await _disable(conn, endpoint_id, reason, member_id, now)
        changes.setdefault(endpoint_id, {}).update(active=False, disabled_reason=reason)
    retries = [o for o in recorded if o.status == "pending" and o.next_attempt_at is not None]
    if retries:
        cur = await conn.execute(_SKIP_IF_DISABLED, (now, [o.delivery_id for o in retries]))
        skipped = {r[0] for r in await cur.fetchall()}
        await wakeups.notify_due(
            conn,
            member_id,
            [
                (o.endpoint_id, o.next_attempt_at)
                for o in retries
                if o.delivery_id not in skipped and o.next_attempt_at is not None
            ],
        )
    return hit, changes


async def _health(conn: Conn, recorded: Sequence[Outcome], now: int) -> dict[str, dict[str, Any]]:
    latest: dict[str, Outcome] = {}
    for o in recorded:
        latest[o.endpoint_id] = o
    ids = sorted(latest)
    if len(ids) > 1:
        await conn.execute(_LOCK_ENDPOINTS, (ids,))
    cur = await conn.execute(
        _HEALTH,
        {
            "now": now,
            "ids": ids,
            "ok": [latest[e].success for e in ids],
            "started": [latest[e].attempt.started_at for e in ids],
        },
    )
    return {r[0]: {"last_success_at": r[1], "failing_since": r[2]} for r in await cur.fetchall()}


def _disables(recorded: Sequence[Outcome]) -> dict[str, str]:
    out: dict[str, str] = {}
    for o in recorded:
        if o.disable_reason:
            out[o.endpoint_id] = o.disable_reason
    return out


async def _disable(conn: Conn, endpoint_id: str, reason: str, member_id: str, now: int) -> None:
    """Disable the endpoint (if it still exists) and skip its pending deliveries; the other
    daemons hear of it on the endpoints channel."""
    cur = await conn.execute(_DISABLE, (reason, now, endpoint_id))
    if cur.rowcount:
        log.warning(
            "endpoint disabled",
            extra={"event": "endpoint_disabled", "endpoint_id": endpoint_id, "reason": reason},
        )
    await ep_sql.skip_pending(conn, endpoint_id, now)
    await ep_sql.notify_changed(conn, member_id, endpoint_id)


class Outcomes:
    """The group-commit writer of one daemon's outcomes (see the module docstring).

    `on_health(endpoint_id, changes)` is called after each commit with the endpoint fields
    the batch changed (last_success_at, failing_since, active, disabled_reason), for this
    daemon's view of its endpoints."""

    def __init__(
        self,
        db: Database,
        member_id: str,
        *,
        on_health: HealthListener | None = None,
        linger_s: float = LINGER_S,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.db = db
        self.member_id = member_id
        self.on_health = on_health
        self.linger_s = linger_s
        self.max_batch = max_batch
        self.transactions = 0  # committed batches, for tests and metrics
        self.stale = 0  # outcomes dropped because their claim was lost
        self._queue = _Batch()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="webhookd-pg-outcomes"
        )

    async def close(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def record(self, outcome: Outcome) -> bool:
        """Queue the outcome and wait for its batch to commit: True if it was recorded,
        False if its claim had been lost (it was dropped). Raises StorageError if the
        database cannot write now (nothing of it was stored)."""
        if self._task is None:
            raise StorageError("the outcome writer is not running")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # Its caller may be gone (cancelled) when it settles: nothing to report then.
        future.add_done_callback(_consume)
        self._queue.outcomes.append(outcome)
        self._queue.futures.append(future)
        self._idle.clear()
        self._arrived.set()
        if len(self._queue.outcomes) >= self.max_batch:
            self._full.set()
        return await asyncio.shield(future)

    async def _run(self) -> None:
        batch = _Batch()
        try:
            while True:
                await self._arrived.wait()
                if len(self._queue.outcomes) < self.max_batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), self.linger_s)
                batch = self._take()
                await self._write(batch)
                if not self._queue.outcomes:
                    self._idle.set()
        finally:
            # Stopped with outcomes unwritten (the loop is going away): their callers hear
            # that storage did not take them, rather than wait forever.
            gone = StorageError("the outcome writer stopped")
            _settle(batch.futures + self._queue.futures, gone)

    def _take(self) -> _Batch:
        q = self._queue
        batch = _Batch(q.outcomes[: self.max_batch], q.futures[: self.max_batch])
        self._queue = _Batch(q.outcomes[self.max_batch :], q.futures[self.max_batch :])
        if not self._queue.outcomes:
            self._arrived.clear()
        if len(self._queue.outcomes) < self.max_batch:
            self._full.clear()
        return batch

    async def _write(self, batch: _Batch) -> None:
        """Commit the batch and settle its futures; never raises. A failure other than
        storage's (one outcome the database refuses) is retried one outcome at a time, so
        that it fails alone."""
        try:
            hit = await self._commit(batch.outcomes)
        except StorageError as exc:
            _settle(batch.futures, exc)
            return
        except Exception as exc:
            if len(batch.outcomes) == 1:
                _settle(batch.futures, exc)
                return
            for o, f in zip(batch.outcomes, batch.futures, strict=True):
                await self._write(_Batch([o], [f]))
            return
        for o, f in zip(batch.outcomes, batch.futures, strict=True):
            if not f.done():
                f.set_result(o.delivery_id in hit)

    async def _commit(self, outcomes: list[Outcome]) -> set[str]:
        now = now_ms()
        async with self.db.transaction() as conn:
            hit, changes = await write_outcomes(conn, outcomes, self.member_id, now)
        self.transactions += 1
        for o in outcomes:
            if o.delivery_id not in hit:
                self.stale += 1
                log.warning(
                    "an outcome arrived after its claim was lost (lease ended or reaped); "
                    "it is dropped, the delivery's new owner records its own",
                    extra={
                        "event": "outcome_stale",
                        "delivery_id": o.delivery_id,
                        "endpoint_id": o.endpoint_id,
                    },
                )
        if self.on_health is not None:
            for endpoint_id, fields in changes.items():
                self.on_health(endpoint_id, fields)
        return hit


def _consume(future: asyncio.Future[bool]) -> None:
    if not future.cancelled():
        future.exception()


def _settle(futures: Sequence[asyncio.Future[bool]], exc: BaseException) -> None:
    for f in futures:
        if not f.done():
            f.set_exception(exc)
