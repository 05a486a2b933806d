"""Payload erasure on SQLite: one event's payload now (DELETE /v1/events/{id}/payload), and
retention's sweep of old payloads (retention.payload_days), with the checkpoint that takes
the erased bytes out of the write-ahead log.

An erased event keeps its row: the payload becomes an empty blob (the column is NOT NULL),
`payload_erased_at` is set and the body hash (a digest of the payload, kept for idempotent
publishing) is cleared. Where else the bytes were, and what removes them:
- the freed space of the row's page and the payload's overflow pages: the write connection
  runs with `PRAGMA secure_delete=ON` (store.py), so SQLite overwrites them with zeros;
- the WAL, which holds the page images of the insert (and of every later change) until a
  checkpoint copies them into the database and, even then, keeps the old frames in the
  file until they are overwritten: a TRUNCATE checkpoint (Checkpoints) copies everything
  in and cuts the file to zero bytes.
No other table holds a payload or a request body: attempts keep the request headers and
the response, not the body sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from webhookd.store.models import AmbiguousId, Event, NotFound, PayloadSweep
from webhookd.store.sqlite.rows import EVENT_COLS, event_from_row

log = logging.getLogger("webhookd.store")

# Cancelled with the payload: the deliveries that could still send it.
_CANCEL = (
    "UPDATE deliveries SET status='cancelled', next_attempt_at=NULL, manual=0, updated_at=? "
    "WHERE event_seq=? AND status IN ('pending','delivering') RETURNING endpoint_id, id"
)
# Only rows not erased yet: a second erasure keeps the first one's time.
_ERASE = (
    "UPDATE events SET payload=x'', body_hash=NULL, payload_erased_at=? "
    "WHERE seq IN (SELECT value FROM json_each(?)) AND payload_erased_at IS NULL"
)
# Retention's walk: by (created_at, seq) through events_created (whose entries end with the
# rowid, seq), from where the previous batch stopped, so erased rows are walked once per
# pass and not once per batch.
_SWEEP = (
    "SELECT e.seq, e.created_at, EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq=e.seq "
    "AND d.status IN ('pending','delivering')) FROM events e "
    "WHERE e.created_at >= ? AND (e.created_at > ? OR e.seq > ?) AND e.created_at < ? "
    "AND e.payload_erased_at IS NULL ORDER BY e.created_at, e.seq LIMIT ?"
)
# Recover and the console's bulk retry leave out deliveries of erased events (a condition
# on `deliveries`, one primary-key probe of the event per candidate row).
PAYLOAD_KEPT = (
    "NOT EXISTS (SELECT 1 FROM events e WHERE e.seq=deliveries.event_seq "
    "AND e.payload_erased_at IS NOT NULL)"
)
# Whether recover's window held deliveries it left out for that reason.
ERASED_IN_WINDOW = (
    "SELECT 1 FROM deliveries WHERE endpoint_id=? AND status IN ('failed','skipped') "
    "AND created_at>=? AND created_at<? AND NOT " + PAYLOAD_KEPT + " LIMIT 1"
)
# A checkpoint that found readers or a writer in the way is tried again this often.
CHECKPOINT_TRIES = 3

Cancelled = list[tuple[str, str]]


def erase_event(
    conn: sqlite3.Connection, event_id: str, tenant: Any, now: int
) -> tuple[Event, Cancelled]:
    """In the writer's transaction: erase one event's payload and cancel its unfinished
    deliveries; the event as it is now, and the (endpoint id, delivery id) cancelled."""
    sql = f"SELECT {EVENT_COLS} FROM events WHERE id=?"
    args: list[Any] = [event_id]
    if tenant is not ...:
        sql += " AND tenant IS ?"
        args.append(tenant)
    rows = conn.execute(sql, args).fetchall()
    if not rows:
        raise NotFound(f"no event with id {event_id}")
    if len(rows) > 1:
        raise AmbiguousId(event_id, [r[2] for r in rows])
    seq = rows[0][-1]
    conn.execute(_ERASE, (now, f"[{int(seq)}]"))
    cancelled = [(r[0], r[1]) for r in conn.execute(_CANCEL, (now, seq)).fetchall()]
    row = conn.execute(f"SELECT {EVENT_COLS} FROM events WHERE seq=?", (seq,)).fetchone()
    return event_from_row(row), cancelled


def sweep(
    conn: sqlite3.Connection, cutoff: int, after: tuple[int, int], limit: int, now: int
) -> PayloadSweep:
    """In the writer's transaction: one batch of retention's payload erasure."""
    at, seq = after
    rows = conn.execute(_SWEEP, (at, at, seq, cutoff, limit)).fetchall()
    erasable = [r[0] for r in rows if not r[2]]
    erased = conn.execute(_ERASE, (now, str(erasable))).rowcount if erasable else 0
    held = next(((r[1], r[0]) for r in rows if r[2]), None)
    last = (rows[-1][1], rows[-1][0]) if rows else None
    return PayloadSweep(erased=erased, scanned=len(rows), last=last, held=held)


class Checkpoints:
    """TRUNCATE checkpoints of one database, shared: a caller whose change committed
    before a checkpoint started is served by it, so a burst of erasures costs one or two
    checkpoints, not one each. Run on a connection of their own in a worker thread: the
    writer's connection is always inside its group-commit transactions."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._lock = asyncio.Lock()
        self._asked = 0  # requests so far
        self._served = 0  # requests made before the last checkpoint that completed

    async def run(self) -> bool:
        """Copy the WAL into the database and cut it to zero bytes; False (logged) if
        readers or a writer kept it from completing after a few tries."""
        self._asked += 1
        mine = self._asked
        async with self._lock:
            if self._served >= mine:
                return True
            covers = self._asked
            done = await asyncio.to_thread(self._checkpoint)
            if done:
                self._served = covers
            return done

    def _checkpoint(self) -> bool:
        conn = self._connect()
        try:
            for _ in range(CHECKPOINT_TRIES):
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return True
        except sqlite3.Error as exc:
            log.warning(
                "checkpoint after erasing payloads failed",
                extra={"event": "erase_checkpoint_failed", "error": str(exc)},
            )
            return False
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        log.warning(
            "checkpoint after erasing payloads could not complete; the next one removes "
            "the erased bytes from the WAL",
            extra={"event": "erase_checkpoint_busy"},
        )
        return False
