"""The merged writes of the group commit: every publish, and every attempt outcome, queued
while a transaction runs is written by one call with a few bulk statements."""

from __future__ import annotations

import functools
import itertools
import logging
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from webhookd.ids import new_id
from webhookd.store.models import (
    Claimed,
    Conflict,
    Endpoint,
    Event,
    NewEvent,
    Outcome,
    PublishResult,
)
from webhookd.store.records import repeat_conflict, stored_event
from webhookd.store.sqlite.rows import EVENT_COLS, event_from_row
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.store.sqlite.store import SQLiteStore

log = logging.getLogger("webhookd.store")


# Bulk writes are a few statements for the whole batch, not one step per row: the
# sqlite3 module lets go of the GIL around every step and must take it back afterwards,
# and while the event loop is busy that costs up to a thread switch interval per step
# (the "convoy" effect). Rows travel as one JSON array (`json_each`), or, where a column
# is a BLOB or a row is long, as multi-row VALUES statements of a few fixed sizes
# (cached statements).
_VALUE_CHUNKS = (256, 64, 16, 4, 1)


def json_columns(n: int, names: tuple[str, ...] = ()) -> str:
    """`json_extract(value, '$[i]')` for i < n: the columns of one row of a JSON array of
    arrays walked by json_each, optionally named."""
    return ", ".join(
        f"json_extract(value, '$[{i}]')" + (f" AS {names[i]}" if names else "") for i in range(n)
    )


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, width: int, rows: int) -> str:
    one = "(" + ",".join("?" * width) + ")"
    return f"{head} VALUES {','.join([one] * rows)}"


def insert_rows(
    conn: sqlite3.Connection, head: str, width: int, rows: Sequence[Sequence[Any]]
) -> None:
    """INSERT `rows` (each `width` values) with multi-row VALUES statements."""
    i = 0
    for size in _VALUE_CHUNKS:
        while len(rows) - i >= size:
            chunk = rows[i : i + size]
            conn.execute(_values_sql(head, width, size), [v for row in chunk for v in row])
            i += size


# Inserted with multi-row VALUES, not json_each: SQLite (before JSONB) parses a row's
# JSON text again for every column it extracts. An attempt row carries two header
# documents: 4 us per attempt instead of 11 here, and a delivery row 10 % less CPU.
INSERT_DELIVERIES = (
    "INSERT INTO deliveries(id, event_seq, event_id, event_type, endpoint_id, tenant, "
    "status, next_attempt_at, created_at, updated_at)"
)
INSERT_EVENTS = (
    "INSERT INTO events(seq, id, type, tenant, payload, body_hash, deliver_at, created_at, "
    "channels, traceparent)"
)
INSERT_PLAIN_EVENTS = (
    "INSERT INTO events(seq, id, type, tenant, payload, body_hash, deliver_at, created_at)"
)
# A delivery's row (see _stage) holds its status and due time at these places.
_STATUS, _DUE = 6, 7
INSERT_ATTEMPTS = (
    "INSERT INTO attempts(delivery_id, number, started_at, duration_ms, trigger, format, "
    "request_headers, status_code, response_headers, response_body, error_kind, "
    "error_message)"
)
# Guarded: a delivery cancelled meanwhile (endpoint deleted) keeps its state. The `+`
# keeps the planner on the id index (one lookup per outcome) instead of walking every
# `delivering` row for each outcome.
UPDATE_RECORDED = (
    "UPDATE deliveries SET status=v.status, attempt_count=MAX(attempt_count, v.number), "
    "failures=v.failures, format_index=v.format_index, next_attempt_at=v.next_at, "
    "manual=0, resume_at=NULL, updated_at=? FROM (SELECT "
    + json_columns(6, ("id", "status", "number", "failures", "format_index", "next_at"))
    + " FROM json_each(?)) AS v WHERE deliveries.id=v.id AND +deliveries.status='delivering'"
)
SKIP_IF_DISABLED = (
    "UPDATE deliveries SET status='skipped', next_attempt_at=NULL, updated_at=? "
    "WHERE id IN (SELECT value FROM json_each(?)) AND +status='pending' AND "
    "endpoint_id IN (SELECT id FROM endpoints WHERE active=0)"
)
MARK_DELIVERING = (
    "UPDATE deliveries SET status='delivering', updated_at=? "
    "WHERE id IN (SELECT value FROM json_each(?))"
)


def claim_select(parts: Sequence[str]) -> str:
    """Every delivery chosen by the `parts` (one SELECT of ids per endpoint) with its
    event, as one row of JSON; none of a paused endpoint (as committed: the dispatcher's
    view of a pause that just committed may not have caught up yet)."""
    return (
        "SELECT json_group_array(json_array(d.id, d.endpoint_id, d.attempt_count, "
        "d.failures, d.format_index, d.manual, d.resume_at, e.id, e.type, e.tenant, "
        "hex(e.payload), e.deliver_at, e.created_at, e.seq, e.traceparent)) FROM deliveries d "
        "JOIN events e ON e.seq=d.event_seq JOIN endpoints p ON p.id=d.endpoint_id "
        "WHERE p.paused=0 AND d.id IN (" + " UNION ALL ".join(parts) + ")"
    )


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Events without channels or trace context (most) go in without those two columns:
    binding two NULLs per row cost 0.6 us of the 1.8 us an event row takes to insert
    (1,000-row batches, multi-row VALUES, measured side by side)."""
    plain = [r[:8] for r in rows if r[8] is None and r[9] is None]
    if plain:
        insert_rows(conn, INSERT_PLAIN_EVENTS, 8, plain)
    if len(plain) < len(rows):
        insert_rows(conn, INSERT_EVENTS, 10, [r for r in rows if r[8] or r[9]])


def select_in(conn: sqlite3.Connection, sql: str, ids: Collection[str]) -> Iterator[Any]:
    """The rows of `sql`, whose `{marks}` stands for one `?` per id, asked 500 ids at a
    time (SQLite limits the number of parameters of one statement)."""
    id_list = list(ids)
    for i in range(0, len(id_list), 500):
        chunk = id_list[i : i + 500]
        yield from conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)


def publish_merged(
    conn: sqlite3.Connection, items: list[tuple[SQLiteStore, Sequence[NewEvent]]]
) -> list[Any]:
    """All publishes queued in one batch: find existing ids, then two bulk inserts."""
    store = items[0][0]
    now = now_ms()
    existing = _existing_events(conn, items)
    # Events get their row keys here, so that their deliveries can refer to them in the
    # same bulk insert (one writer: nothing else inserts events meanwhile).
    seqs = itertools.count(_last_event_seq(conn) + 1)
    event_rows: list[tuple[Any, ...]] = []
    delivery_rows: list[list[Any]] = []
    outputs: list[Any] = []
    handed: list[Claimed] = []
    try:
        for _, evs in items:
            staged = _stage(store, now, evs, existing, seqs)
            if isinstance(staged, Conflict):
                outputs.append(staged)
                continue
            for result, pending in staged.due:
                result.due = tuple(_hand_over(store, now, result.event, pending, handed))
            existing.update(staged.existing)
            event_rows += staged.event_rows
            delivery_rows += staged.delivery_rows
            outputs.append(staged.results)
    finally:
        # Registered even if this call fails half way: then the savepoint's rollback
        # settles the slots taken so far.
        if handed:
            _after_hand_over(store, handed)
    if event_rows:
        _insert_events(conn, event_rows)
    if delivery_rows:
        insert_rows(conn, INSERT_DELIVERIES, 10, delivery_rows)
    _count_repeats(conn, outputs)
    # After the hand-over (registered above): what the dispatcher must claim itself.
    store.tell_due([d for out in outputs if isinstance(out, list) for r in out for d in r.due])
    return outputs


def _last_event_seq(conn: sqlite3.Connection) -> int:
    """The highest event row key ever handed out (AUTOINCREMENT keeps it past purges)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    return int(row[0]) if row else 0


# Caller-chosen ids are unique per tenant (None is one tenant too), not across tenants.
EventKey = tuple[str | None, str]


def _existing_events(
    conn: sqlite3.Connection, items: list[tuple[SQLiteStore, Sequence[NewEvent]]]
) -> dict[EventKey, tuple[Event, bytes | None]]:
    """The stored events (with their body hashes) whose (tenant, id) the callers chose."""
    wanted = {(ev.tenant, ev.id) for _, evs in items for ev in evs if ev.body_hash is not None}
    existing: dict[EventKey, tuple[Event, bytes | None]] = {}
    for r in select_in(
        conn,
        f"SELECT {EVENT_COLS}, body_hash FROM events WHERE id IN ({{marks}})",
        {event_id for _, event_id in wanted},
    ):
        # Other tenants' events with the same id are not this caller's business.
        if (r[2], r[0]) in wanted:
            existing[r[2], r[0]] = (event_from_row(r), r[10])
    return existing


def _count_repeats(conn: sqlite3.Connection, outputs: list[Any]) -> None:
    """Idempotent repeats (staged with deliveries=-1) report the delivery count of the
    original event."""
    counts: dict[int, int] = {}
    for out in outputs:
        if not isinstance(out, list):
            continue
        for i, res in enumerate(out):
            if res.deliveries != -1:
                continue
            seq = res.event.seq
            if seq not in counts:
                row = conn.execute(
                    "SELECT COUNT(*) FROM deliveries WHERE event_seq=?", (seq,)
                ).fetchone()
                counts[seq] = int(row[0]) if row else 0
            out[i] = PublishResult(event=res.event, deliveries=counts[seq], created=False)


@dataclass(slots=True)
class _Staged:
    """One publish call's events and deliveries, ready to insert."""

    results: list[PublishResult] = field(default_factory=list)
    event_rows: list[tuple[Any, ...]] = field(default_factory=list)
    delivery_rows: list[list[Any]] = field(default_factory=list)
    # Per new event: its result, and (endpoint, due, row) of each pending delivery.
    due: list[tuple[PublishResult, list[tuple[Endpoint, int, list[Any]]]]] = field(
        default_factory=list
    )
    existing: dict[EventKey, tuple[Event, bytes | None]] = field(default_factory=dict)


def _stage(
    store: SQLiteStore,
    now: int,
    evs: Sequence[NewEvent],
    existing: dict[EventKey, tuple[Event, bytes | None]],
    seqs: Iterator[int],
) -> _Staged | Conflict:
    """The rows of one publish call, or the Conflict that refuses all of it."""
    staged = _Staged()
    for index, ev in enumerate(evs):
        key = (ev.tenant, ev.id)
        prior = existing.get(key) or staged.existing.get(key)
        if prior is not None:
            if prior[1] != ev.body_hash:
                return repeat_conflict(prior[0], ev.id, index, len(evs) > 1)
            staged.results.append(PublishResult(event=prior[0], deliveries=-1, created=False))
            continue
        seq = next(seqs)
        event, event_row = stored_event(ev, seq, now)
        staged.existing[key] = (event, ev.body_hash)
        staged.event_rows.append(event_row)
        ids: list[str] = []
        pending: list[tuple[Endpoint, int, list[Any]]] = []
        for ep in store.fan_out(ev, now):
            delivery_id = new_id("dlv")
            ids.append(delivery_id)
            due = max(now + int(ep.delay_s * 1000), ev.deliver_at or 0)
            row = [delivery_id, seq, ev.id, ev.type, ep.id, ev.tenant, "skipped", None, now, now]
            if ep.active:
                row[_STATUS], row[_DUE] = "pending", due
                pending.append((ep, due, row))
            staged.delivery_rows.append(row)
        result = PublishResult(
            event=event, deliveries=len(ids), created=True, delivery_ids=tuple(ids)
        )
        staged.results.append(result)
        staged.due.append((result, pending))
    return staged


def _hand_over(
    store: SQLiteStore,
    now: int,
    event: Event,
    pending: list[tuple[Endpoint, int, list[Any]]],
    handed: list[Claimed],
) -> Iterator[tuple[str, int]]:
    """Mark the deliveries of `pending` that the dispatcher has room for as `delivering`
    (into `handed`); yield (endpoint id, due) of the others, for the dispatcher to claim."""
    offers = store.offers
    for ep, due, row in pending:
        if (
            due <= now
            and not (ep.ordered or ep.rate_limit_per_s or ep.paused)
            and offers.take(ep.id)
        ):
            row[_STATUS] = "delivering"
            handed.append(Claimed(row[0], ep.id, event, 0, 0, 0, False, None, False))
        else:
            yield ep.id, due


def _after_hand_over(store: SQLiteStore, handed: list[Claimed]) -> None:
    counts: dict[str, int] = {}
    for c in handed:
        counts[c.endpoint_id] = counts.get(c.endpoint_id, 0) + 1
    offers = store.offers

    def committed() -> None:
        offers.settle(counts)
        receiver = offers.receiver
        if receiver is not None:
            receiver(handed)
        # Else the dispatcher stopped meanwhile: the deliveries stay `delivering` and are
        # requeued at the next start, as after a crash.

    store.after_commit(committed, on_rollback=lambda: offers.settle(counts))


def record_merged(conn: sqlite3.Connection, items: list[tuple[SQLiteStore, Outcome]]) -> list[Any]:
    """All attempt outcomes queued in one batch, written with a few bulk statements."""
    store = items[0][0]
    now = now_ms()
    attempts = []
    updates = []
    for _, o in items:
        a = o.attempt
        attempts.append(
            (
                o.delivery_id,
                a.number,
                a.started_at,
                a.duration_ms,
                a.trigger,
                a.format,
                orjson.dumps(a.request_headers).decode(),
                a.status_code,
                orjson.dumps(a.response_headers).decode(),
                a.response_body,
                a.error_kind,
                a.error_message,
            )
        )
        updates.append(
            (o.delivery_id, o.status, a.number, o.failures, o.format_index, o.next_attempt_at)
        )
    insert_rows(conn, INSERT_ATTEMPTS, 12, attempts)
    conn.execute(UPDATE_RECORDED, (now, orjson.dumps(updates)))
    endpoint_health(conn, store, [o for _, o in items], now)
    # An outcome decided just before another attempt disabled the endpoint must not leave
    # a delivery pending on a disabled endpoint.
    rescheduled = [o.delivery_id for _, o in items if o.status == "pending"]
    if rescheduled:
        conn.execute(SKIP_IF_DISABLED, (now, orjson.dumps(rescheduled)))
    return [None] * len(items)


def skip_pending(conn: sqlite3.Connection, endpoint_id: str, now: int) -> None:
    """The endpoint's pending deliveries become `skipped` (it was disabled)."""
    conn.execute(
        "UPDATE deliveries SET status='skipped', next_attempt_at=NULL, manual=0, "
        "updated_at=? WHERE endpoint_id=? AND status='pending'",
        (now, endpoint_id),
    )


def _refresh_later(store: SQLiteStore, endpoint_id: str, **changes: Any) -> None:
    """The endpoint cache changes on the event loop, once the transaction has committed."""
    store.after_commit(functools.partial(store.refresh_endpoint_health, endpoint_id, **changes))


def endpoint_health(
    conn: sqlite3.Connection, store: SQLiteStore, outcomes: list[Outcome], now: int
) -> None:
    latest: dict[str, Outcome] = {}
    disable: dict[str, str] = {}
    for o in outcomes:
        latest[o.endpoint_id] = o
        if o.disable_reason:
            disable[o.endpoint_id] = o.disable_reason
    for endpoint_id, o in latest.items():
        if o.success:
            conn.execute(
                "UPDATE endpoints SET last_success_at=?, failing_since=NULL WHERE id=?",
                (now, endpoint_id),
            )
            _refresh_later(store, endpoint_id, last_success_at=now, failing_since=None)
        else:
            conn.execute(
                "UPDATE endpoints SET failing_since=COALESCE(failing_since, ?) WHERE id=?",
                (o.attempt.started_at, endpoint_id),
            )
            ep = store.endpoint(endpoint_id)
            if ep is not None and ep.failing_since is None:
                _refresh_later(store, endpoint_id, failing_since=o.attempt.started_at)
    for endpoint_id, reason in disable.items():
        cur = conn.execute(
            "UPDATE endpoints SET active=0, disabled_reason=?, updated_at=? "
            "WHERE id=? AND deleted_at IS NULL AND active=1",
            (reason, now, endpoint_id),
        )
        if cur.rowcount:
            log.warning(
                "endpoint disabled",
                extra={"event": "endpoint_disabled", "endpoint_id": endpoint_id, "reason": reason},
            )
        skip_pending(conn, endpoint_id, now)
        _refresh_later(store, endpoint_id, active=False, disabled_reason=reason)
