"""Publishing on PostgreSQL: one call's events and their deliveries in one transaction.

A few statements however large the batch: the caller-chosen ids looked up at once, row
keys for the new events taken from their sequence in one round trip (so deliveries can
refer to them), then the events and the deliveries each streamed with COPY. The
transaction ends with one notice to the other daemons (wakeups.notify_published: the
endpoints and due times of the new deliveries, or the range of the new events' seqs),
per call and never per row (a NOTIFY takes a database-wide lock at commit).

Idempotency holds across daemons through the unique index on (id, tenant): a repeat that
races the original on another daemon fails on it, and the call is run again, when it
finds the original and answers as a repeat (200, or a Conflict for another body).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from webhookd.ids import new_id
from webhookd.store.models import Endpoint, Event, NewEvent, PublishResult
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.db import Conn
from webhookd.store.postgres.rows import EVENT_COLS, event_from_row
from webhookd.store.records import repeat_conflict, stored_event

EVENTS_ID_INDEX = "events_id"

FanOut = Callable[[NewEvent, int], Iterable[Endpoint]]  # (event, its created_at)
EventKey = tuple[str | None, str]  # (tenant, id): ids are unique per tenant
_Existing = dict[EventKey, tuple[Event, bytes | None]]

_COPY_EVENTS = (
    "COPY events (seq, id, type, tenant, payload, body_hash, deliver_at, created_at, channels, "
    "traceparent) FROM STDIN"
)
_COPY_DELIVERIES = (
    "COPY deliveries (id, event_seq, event_id, event_type, endpoint_id, tenant, status, "
    "next_attempt_at, created_at, updated_at) FROM STDIN"
)


@dataclass(slots=True)
class _Staged:
    results: list[PublishResult] = field(default_factory=list)
    event_rows: list[tuple[Any, ...]] = field(default_factory=list)
    delivery_rows: list[tuple[Any, ...]] = field(default_factory=list)
    repeats: list[int] = field(default_factory=list)  # indexes of idempotent repeats


async def publish(
    conn: Conn, events: Sequence[NewEvent], fan_out: FanOut, member_id: str, now: int
) -> list[PublishResult]:
    """Inside the caller's transaction: stage, write and announce one publish call.
    Raises Conflict (nothing of the call is stored once the caller rolls back)."""
    existing = await _existing_events(conn, events)
    fresh = sum(1 for ev in events if (ev.tenant, ev.id) not in existing)
    seqs = await _event_seqs(conn, fresh)
    staged = _stage(events, existing, seqs, fan_out, now)
    async with conn.cursor() as cur:
        if staged.event_rows:
            async with cur.copy(_COPY_EVENTS) as copy:
                for row in staged.event_rows:
                    await copy.write_row(row)
        if staged.delivery_rows:
            async with cur.copy(_COPY_DELIVERIES) as copy:
                for row in staged.delivery_rows:
                    await copy.write_row(row)
    await _count_repeats(conn, staged)
    announced = [r for r in staged.results if r.due]
    await wakeups.notify_published(
        conn, member_id, [r.event.seq for r in announced], [d for r in announced for d in r.due]
    )
    return staged.results


async def _existing_events(conn: Conn, events: Sequence[NewEvent]) -> _Existing:
    """The stored events (with their body hashes) whose (tenant, id) the callers chose."""
    wanted = {(ev.tenant, ev.id) for ev in events if ev.body_hash is not None}
    if not wanted:
        return {}
    cur = await conn.execute(
        f"SELECT {EVENT_COLS}, body_hash FROM events WHERE id = ANY(%s)",
        (sorted({event_id for _, event_id in wanted}),),
    )
    existing: _Existing = {}
    for r in await cur.fetchall():
        # Other tenants' events with the same id are not this caller's business.
        if (r[2], r[0]) in wanted:
            existing[r[2], r[0]] = (event_from_row(r), None if r[10] is None else bytes(r[10]))
    return existing


async def _event_seqs(conn: Conn, n: int) -> list[int]:
    if n == 0:
        return []
    cur = await conn.execute(
        "SELECT nextval(pg_get_serial_sequence('events', 'seq')) FROM generate_series(1, %s)",
        (n,),
    )
    return [int(r[0]) for r in await cur.fetchall()]


def _stage(
    events: Sequence[NewEvent], existing: _Existing, seqs: list[int], fan_out: FanOut, now: int
) -> _Staged:
    staged = _Staged()
    mine: _Existing = {}
    seq_iter = iter(seqs)
    for index, ev in enumerate(events):
        key = (ev.tenant, ev.id)
        prior = existing.get(key) or mine.get(key)
        if prior is not None:
            if prior[1] != ev.body_hash:
                raise repeat_conflict(prior[0], ev.id, index, len(events) > 1)
            staged.repeats.append(index)
            staged.results.append(PublishResult(event=prior[0], deliveries=-1, created=False))
            continue
        seq = next(seq_iter)
        event, event_row = stored_event(ev, seq, now)
        mine[key] = (event, ev.body_hash)
        staged.event_rows.append(event_row)
        staged.results.append(_fan_out_rows(staged, event, ev, fan_out, now))
    return staged


def _fan_out_rows(
    staged: _Staged, event: Event, ev: NewEvent, fan_out: FanOut, now: int
) -> PublishResult:
    ids: list[str] = []
    due: list[tuple[str, int]] = []
    for ep in fan_out(ev, now):
        delivery_id = new_id("dlv")
        ids.append(delivery_id)
        at: int | None = None
        status = "skipped"
        if ep.active:
            at = max(now + int(ep.delay_s * 1000), ev.deliver_at or 0)
            status = "pending"
            due.append((ep.id, at))
        staged.delivery_rows.append(
            (delivery_id, event.seq, ev.id, ev.type, ep.id, ev.tenant, status, at, now, now)
        )
    return PublishResult(
        event=event, deliveries=len(ids), created=True, delivery_ids=tuple(ids), due=tuple(due)
    )


async def _count_repeats(conn: Conn, staged: _Staged) -> None:
    """Idempotent repeats report the delivery count of the original event."""
    if not staged.repeats:
        return
    seqs = sorted({staged.results[i].event.seq for i in staged.repeats})
    cur = await conn.execute(
        "SELECT event_seq, count(*) FROM deliveries WHERE event_seq = ANY(%s) GROUP BY event_seq",
        (seqs,),
    )
    counts = {int(r[0]): int(r[1]) for r in await cur.fetchall()}
    for i in staged.repeats:
        event = staged.results[i].event
        staged.results[i] = PublishResult(
            event=event, deliveries=counts.get(event.seq, 0), created=False
        )
