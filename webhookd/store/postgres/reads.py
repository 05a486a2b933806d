"""The API's reads on PostgreSQL: pages of endpoints, events and deliveries, one event or
delivery with what belongs to it. They go to the database (not a daemon's view), so any
daemon answers with what is committed. Pages and cursors are SQLite's: newest first by
`seq`, the cursor the last row's seq (webhookd/store/codec.py)."""

from __future__ import annotations

from typing import Any

from webhookd.store.codec import decode_cursor, encode_cursor
from webhookd.store.models import AmbiguousId, Attempt, Delivery, Event, NotFound, Page
from webhookd.store.postgres.db import Conn
from webhookd.store.postgres.rows import (
    ATTEMPT_COLS,
    DELIVERY_COLS,
    ENDPOINT_COLS,
    EVENT_COLS,
    attempt_from_row,
    delivery_from_row,
    endpoint_from_row,
    event_from_row,
)


class Filters:
    """A WHERE clause and its arguments, built one condition at a time."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *args: Any) -> None:
        self.where.append(condition)
        self.args.extend(args)

    def tenant(self, tenant: Any) -> None:
        """`...`: any tenant; None: rows without one."""
        if tenant is not ...:
            self.add("tenant IS NOT DISTINCT FROM %s", tenant)

    def window(self, since: int | None, until: int | None) -> None:
        if since is not None:
            self.add("created_at >= %s", since)
        if until is not None:
            self.add("created_at < %s", until)


async def page(
    conn: Conn, table: str, cols: str, f: Filters, cursor: str | None, limit: int
) -> tuple[list[Any], str | None]:
    where, args = list(f.where), list(f.args)
    if cursor:
        where.append("seq < %s")
        args.append(decode_cursor(cursor))
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    cur = await conn.execute(
        f"SELECT {cols} FROM {table} {clause} ORDER BY seq DESC LIMIT %s", (*args, limit + 1)
    )
    rows = list(await cur.fetchall())
    nxt = None
    if len(rows) > limit:
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1][-1])
    return rows, nxt


async def list_endpoints(
    conn: Conn, tenant: Any, active: bool | None, cursor: str | None, limit: int
) -> Page:
    f = Filters()
    f.add("deleted_at IS NULL")
    f.tenant(tenant)
    if active is not None:
        f.add("active = %s", active)
    rows, nxt = await page(conn, "endpoints", ENDPOINT_COLS, f, cursor, limit)
    return Page([endpoint_from_row(r) for r in rows], nxt)


async def list_events(
    conn: Conn,
    event_type: str | None,
    tenant: Any,
    since: int | None,
    until: int | None,
    cursor: str | None,
    limit: int,
) -> Page:
    f = Filters()
    if event_type is not None:
        f.add("type = %s", event_type)
    f.tenant(tenant)
    f.window(since, until)
    rows, nxt = await page(conn, "events", EVENT_COLS, f, cursor, limit)
    return Page([event_from_row(r) for r in rows], nxt)


async def get_event(conn: Conn, event_id: str, tenant: Any) -> tuple[Event, list[Delivery]]:
    f = Filters()
    f.add("id = %s", event_id)
    f.tenant(tenant)
    cur = await conn.execute(
        f"SELECT {EVENT_COLS} FROM events WHERE {' AND '.join(f.where)}", f.args
    )
    rows = list(await cur.fetchall())
    if not rows:
        raise NotFound(f"no event with id {event_id}")
    if len(rows) > 1:
        raise AmbiguousId(event_id, [r[2] for r in rows])
    event = event_from_row(rows[0])
    cur = await conn.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries WHERE event_seq = %s ORDER BY seq",
        (event.seq,),
    )
    return event, [delivery_from_row(r) for r in await cur.fetchall()]


async def list_deliveries(
    conn: Conn, filters: dict[str, Any], cursor: str | None, limit: int
) -> Page:
    """`filters`: endpoint_id, event_id, event_type, status, tenant, since, until."""
    f = Filters()
    for col in ("endpoint_id", "event_type", "status"):
        if filters.get(col) is not None:
            f.add(f"{col} = %s", filters[col])
    if filters.get("event_id") is not None:
        # Through the events' id index: the deliveries of every event with this id, of
        # every tenant unless `tenant` narrows it (a delivery has its event's tenant).
        f.add("event_seq IN (SELECT seq FROM events WHERE id = %s)", filters["event_id"])
    f.tenant(filters.get("tenant", ...))
    f.window(filters.get("since"), filters.get("until"))
    rows, nxt = await page(conn, "deliveries", DELIVERY_COLS, f, cursor, limit)
    return Page([delivery_from_row(r) for r in rows], nxt)


async def get_delivery(conn: Conn, delivery_id: str) -> tuple[Delivery, list[Attempt]]:
    cur = await conn.execute(
        f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id = %s", (delivery_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no delivery with id {delivery_id}")
    cur = await conn.execute(
        f"SELECT {ATTEMPT_COLS} FROM attempts WHERE delivery_id = %s ORDER BY number, seq",
        (delivery_id,),
    )
    return delivery_from_row(row), [attempt_from_row(r) for r in await cur.fetchall()]


async def backlog(conn: Conn, endpoint_ids: list[str], now: int) -> tuple[int, int | None]:
    cur = await conn.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'")
    row = await cur.fetchone()
    pending = int(row[0]) if row else 0
    # Per endpoint through the claim index: O(endpoints), not O(backlog).
    cur = await conn.execute(
        "SELECT min(d.next) FROM unnest(%s::text[]) AS e(id) CROSS JOIN LATERAL "
        "(SELECT min(next_attempt_at) AS next FROM deliveries "
        "WHERE endpoint_id = e.id AND status = 'pending') d WHERE d.next <= %s",
        (endpoint_ids, now),
    )
    row = await cur.fetchone()
    oldest = row[0] if row else None
    return pending, (now - oldest) if oldest is not None else None


async def next_due(conn: Conn, endpoint_ids: list[str]) -> dict[str, int | None]:
    cur = await conn.execute(
        "SELECT e.id, (SELECT min(next_attempt_at) FROM deliveries "
        "WHERE endpoint_id = e.id AND status = 'pending') FROM unnest(%s::text[]) AS e(id)",
        (endpoint_ids,),
    )
    return {r[0]: r[1] for r in await cur.fetchall()}
