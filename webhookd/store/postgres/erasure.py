"""Payload erasure on PostgreSQL: one event's payload now (DELETE /v1/events/{id}/payload),
retention's sweep of old payloads (retention.payload_days), and the notice that tells the
other daemons which of their claimed deliveries were cancelled with it.

An erased event keeps its row: the payload becomes an empty bytea (the column is NOT NULL),
`payload_erased_at` is set and the body hash (a digest of the payload, kept for idempotent
publishing) is cleared. What that does to the bytes (docs/operating.md): the UPDATE writes
a new row version; the old one, payload included (inline, or in the table's TOAST
relation when large), stays in the heap until VACUUM makes its space reusable, and its
bytes stay in the data files until that space is written over (VACUUM does not zero it;
VACUUM FULL rewrites the table without it). The WAL and base backups keep what they kept.
No other table holds a payload or a request body: attempts keep the request headers and
the response, not the body sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from webhookd.store.models import AmbiguousId, Event, NotFound, PayloadSweep
from webhookd.store.postgres.db import Conn
from webhookd.store.postgres.rows import EVENT_COLS, event_from_row

# Payload: {"from": daemon id, "d": [[endpoint id, delivery id], ...]}.
CANCELLED_CHANNEL = "webhookd_cancelled"
# NOTIFY refuses payloads of 8000 bytes or more.
_NOTICE_ITEMS = 100

# FOR NO KEY UPDATE: the lock an UPDATE of non-key columns takes, so it does not wait for
# the KEY SHARE locks of deliveries being inserted for the event (there are none for an
# old event, but a publish may be repeating it).
_FIND = f"SELECT {EVENT_COLS} FROM events WHERE id = %s"
_ERASE = (
    "UPDATE events SET payload = ''::bytea, body_hash = NULL, payload_erased_at = %s "
    "WHERE seq = ANY(%s) AND payload_erased_at IS NULL"
)
_CANCEL = (
    "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, manual = false, "
    "lease_owner = NULL, lease_token = NULL, lease_until = NULL, slot = NULL, "
    "updated_at = %s WHERE event_seq = %s AND status IN ('pending', 'delivering') "
    "RETURNING endpoint_id, id"
)
# Retention's walk: by (created_at, seq) from where the previous batch stopped (see the
# SQLite store's), rows another daemon is erasing or purging skipped, not waited for.
_SWEEP = """
SELECT e.seq, e.created_at, EXISTS (
    SELECT 1 FROM deliveries d
    WHERE d.event_seq = e.seq AND d.status IN ('pending', 'delivering'))
FROM events e
WHERE e.created_at >= %(at)s AND (e.created_at > %(at)s OR e.seq > %(seq)s)
  AND e.created_at < %(cutoff)s AND e.payload_erased_at IS NULL
ORDER BY e.created_at, e.seq LIMIT %(limit)s
FOR NO KEY UPDATE OF e SKIP LOCKED
"""
# Recover and the console's bulk retry leave out deliveries of erased events.
PAYLOAD_KEPT = (
    "NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = deliveries.event_seq "
    "AND e.payload_erased_at IS NOT NULL)"
)
ERASED_IN_WINDOW = (
    "SELECT 1 FROM deliveries WHERE endpoint_id = %s AND status IN ('failed', 'skipped') "
    "AND created_at >= %s AND created_at < %s AND NOT " + PAYLOAD_KEPT + " LIMIT 1"
)

Cancelled = list[tuple[str, str]]


async def erase_event(
    conn: Conn, member_id: str, event_id: str, tenant: Any, now: int
) -> tuple[Event, Cancelled]:
    """In the caller's transaction: erase one event's payload, cancel its unfinished
    deliveries (whoever holds their claims) and tell the other daemons which."""
    sql, args = _FIND, [event_id]
    if tenant is not ...:
        sql += " AND tenant IS NOT DISTINCT FROM %s"
        args.append(tenant)
    cur = await conn.execute(sql + " FOR NO KEY UPDATE", args)
    rows = await cur.fetchall()
    if not rows:
        raise NotFound(f"no event with id {event_id}")
    if len(rows) > 1:
        raise AmbiguousId(event_id, [r[2] for r in rows])
    seq = rows[0][-1]
    await conn.execute(_ERASE, (now, [seq]))
    cur = await conn.execute(_CANCEL, (now, seq))
    cancelled = [(r[0], r[1]) for r in await cur.fetchall()]
    await notify_cancelled(conn, member_id, cancelled)
    cur = await conn.execute(f"SELECT {EVENT_COLS} FROM events WHERE seq = %s", (seq,))
    row = await cur.fetchone()
    assert row is not None  # locked above: it cannot have gone
    return event_from_row(row), cancelled


async def sweep(
    conn: Conn, cutoff: int, after: tuple[int, int], limit: int, now: int
) -> PayloadSweep:
    """In the caller's transaction: one batch of retention's payload erasure."""
    at, seq = after
    cur = await conn.execute(_SWEEP, {"at": at, "seq": seq, "cutoff": cutoff, "limit": limit})
    rows = await cur.fetchall()
    erasable = [r[0] for r in rows if not r[2]]
    erased = 0
    if erasable:
        erased = (await conn.execute(_ERASE, (now, erasable))).rowcount
    held = next(((r[1], r[0]) for r in rows if r[2]), None)
    last = (rows[-1][1], rows[-1][0]) if rows else None
    return PayloadSweep(erased=erased, scanned=len(rows), last=last, held=held)


async def notify_cancelled(conn: Conn, member_id: str, items: Sequence[tuple[str, str]]) -> None:
    for i in range(0, len(items), _NOTICE_ITEMS):
        doc = {"from": member_id, "d": items[i : i + _NOTICE_ITEMS]}
        await conn.execute(
            "SELECT pg_notify(%s, %s)", (CANCELLED_CHANNEL, orjson.dumps(doc).decode())
        )


def parse_cancelled(payload: str, member_id: str) -> Cancelled:
    """Another daemon's notice: the (endpoint id, delivery id) it cancelled; [] for this
    daemon's own (it told its dispatcher already) or an unreadable one."""
    try:
        doc = orjson.loads(payload)
        if doc.get("from") == member_id:
            return []
        return [(str(e), str(d)) for e, d in doc["d"]]
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return []
