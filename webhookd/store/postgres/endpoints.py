"""The endpoint and event-type writes on PostgreSQL, each a function of a connection
inside the caller's transaction. Every change ends with one `pg_notify` on
ENDPOINTS_CHANNEL, so that the other daemons sharing the database update their view."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import psycopg

from webhookd.config import EventTypeDecl
from webhookd.ids import new_id
from webhookd.store.models import ERASED_RETRY, Conflict, Endpoint, EventType, NotFound
from webhookd.store.postgres import erasure
from webhookd.store.postgres.db import Conn
from webhookd.store.postgres.rows import (
    ENDPOINT_COLS,
    EVENT_TYPE_COLS,
    endpoint_columns,
    endpoint_from_row,
    event_type_from_row,
)
from webhookd.store.records import check_changeable, declared_rows, event_type_row

# Payload: "<daemon id> <endpoint id>", or "<daemon id> " for the event-type catalog.
ENDPOINTS_CHANNEL = "webhookd_endpoints"


async def notify_changed(conn: Conn, member_id: str, endpoint_id: str = "") -> None:
    """Tell the other daemons, once this transaction commits, that an endpoint (or, with
    no id, the event-type catalog) changed."""
    await conn.execute(
        "SELECT pg_notify(%s, %s)", (ENDPOINTS_CHANNEL, f"{member_id} {endpoint_id}")
    )


async def fetch_endpoint(conn: Conn, endpoint_id: str, *, lock: bool = False) -> Endpoint:
    sql = f"SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = %s AND deleted_at IS NULL"
    cur = await conn.execute(sql + (" FOR UPDATE" if lock else ""), (endpoint_id,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no endpoint with id {endpoint_id}")
    return endpoint_from_row(row)


async def find_endpoints(conn: Conn, endpoint_ids: list[str]) -> dict[str, Endpoint]:
    """The endpoints with these ids that exist (not deleted)."""
    cur = await conn.execute(
        f"SELECT {ENDPOINT_COLS} FROM endpoints WHERE id = ANY(%s) AND deleted_at IS NULL",
        (endpoint_ids,),
    )
    return {r[0]: endpoint_from_row(r) for r in await cur.fetchall()}


async def load_endpoints(conn: Conn) -> dict[str, Endpoint]:
    cur = await conn.execute(f"SELECT {ENDPOINT_COLS} FROM endpoints WHERE deleted_at IS NULL")
    return {r[0]: endpoint_from_row(r) for r in await cur.fetchall()}


async def load_event_types(conn: Conn) -> dict[str, EventType]:
    cur = await conn.execute(f"SELECT {EVENT_TYPE_COLS} FROM event_types")
    return {r[0]: event_type_from_row(r) for r in await cur.fetchall()}


async def sync_event_types(conn: Conn, declared: Iterable[EventTypeDecl], now: int) -> None:
    rows = declared_rows(declared, now)
    # Daemons may start with different config files; the last one to start wins, as a
    # reload does. One lock so that two starting together do not interleave.
    await conn.execute("LOCK TABLE event_types IN SHARE ROW EXCLUSIVE MODE")
    await conn.execute("UPDATE event_types SET source = 'api' WHERE source = 'config'")
    async with conn.cursor() as cur:
        await cur.executemany(
            f"INSERT INTO event_types ({EVENT_TYPE_COLS}) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "description = excluded.description, source = excluded.source, "
            "schema = excluded.schema, example = excluded.example",
            rows,
        )


async def create_event_type(conn: Conn, et: EventType) -> None:
    cur = await conn.execute(
        f"INSERT INTO event_types ({EVENT_TYPE_COLS}) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
        event_type_row(et),
    )
    if cur.rowcount == 0:
        raise Conflict(f"event type {et.name} already exists")


async def update_event_type(conn: Conn, et: EventType) -> EventType:
    """Write an API-created type's description, schema and example; NotFound, or
    Conflict for a built-in or a config type."""
    _, description, _, _, schema, example = event_type_row(et)
    cur = await conn.execute(
        "UPDATE event_types SET description = %s, schema = %s, example = %s "
        f"WHERE name = %s AND source = 'api' RETURNING {EVENT_TYPE_COLS}",
        (description, schema, example, et.name),
    )
    row = await cur.fetchone()
    if row is not None:
        return event_type_from_row(row)
    cur = await conn.execute("SELECT source FROM event_types WHERE name = %s", (et.name,))
    found = await cur.fetchone()
    if found is None:
        raise NotFound(f"no event type named {et.name}")
    check_changeable(et.name, found[0], "changed")
    raise Conflict(f"{et.name} cannot be changed")  # (not reached: only api types can)


async def delete_event_type(conn: Conn, name: str) -> None:
    cur = await conn.execute(
        "DELETE FROM event_types WHERE name = %s AND source = 'api' RETURNING name", (name,)
    )
    if await cur.fetchone() is not None:
        return
    cur = await conn.execute("SELECT source FROM event_types WHERE name = %s", (name,))
    row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no event type named {name}")
    if row[0] == "builtin":
        raise Conflict(f"{name} is built into webhookd and cannot be deleted")
    raise Conflict(f"{name} is declared in the config file; remove it there and reload")


async def create_endpoint(conn: Conn, fields: Mapping[str, Any], now: int) -> Endpoint:
    cols = endpoint_columns(fields)
    cols.update(id=new_id("ep"), created_at=now, updated_at=now)
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    cur = await conn.execute(
        f"INSERT INTO endpoints ({names}) VALUES ({marks}) RETURNING {ENDPOINT_COLS}",
        tuple(cols.values()),
    )
    row = await cur.fetchone()
    assert row is not None
    return endpoint_from_row(row)


async def update_endpoint(
    conn: Conn, endpoint_id: str, changes: Mapping[str, Any], now: int
) -> Endpoint:
    cols = endpoint_columns(changes)
    cols["updated_at"] = now
    before = await fetch_endpoint(conn, endpoint_id, lock=True)
    sets = ", ".join(f"{k} = %s" for k in cols)
    cur = await conn.execute(
        f"UPDATE endpoints SET {sets} WHERE id = %s AND deleted_at IS NULL "
        f"RETURNING {ENDPOINT_COLS}",
        (*cols.values(), endpoint_id),
    )
    row = await cur.fetchone()
    assert row is not None
    if before.active and cols.get("active") is False:
        await skip_pending(conn, endpoint_id, now)
    return endpoint_from_row(row)


async def skip_pending(conn: Conn, endpoint_id: str, now: int) -> None:
    await conn.execute(
        "UPDATE deliveries SET status = 'skipped', next_attempt_at = NULL, manual = false, "
        "updated_at = %s WHERE endpoint_id = %s AND status = 'pending'",
        (now, endpoint_id),
    )


async def delete_endpoint(conn: Conn, endpoint_id: str, now: int) -> None:
    cur = await conn.execute(
        "UPDATE endpoints SET deleted_at = %s, active = false, updated_at = %s "
        "WHERE id = %s AND deleted_at IS NULL",
        (now, now, endpoint_id),
    )
    if cur.rowcount == 0:
        raise NotFound(f"no endpoint with id {endpoint_id}")
    await conn.execute(
        "UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL, manual = false, "
        "lease_owner = NULL, lease_token = NULL, lease_until = NULL, slot = NULL, "
        "updated_at = %s WHERE endpoint_id = %s AND status IN ('pending', 'delivering')",
        (now, endpoint_id),
    )


async def rotate_secret(
    conn: Conn,
    endpoint_id: str,
    new_secret: str,
    grace_s: float,
    now: int,
    *,
    signature: Mapping[str, str] | None = None,
) -> Endpoint:
    ep = await fetch_endpoint(conn, endpoint_id, lock=True)
    keep = [
        {"secret": p.secret, "expires_at": p.expires_at}
        for p in ep.previous_secrets
        if p.expires_at > now
    ]
    if grace_s > 0:
        keep.insert(0, {"secret": ep.secret, "expires_at": now + int(grace_s * 1000)})
    cur = await conn.execute(
        "UPDATE endpoints SET secret = %s, previous_secrets = %s, "
        "signature = COALESCE(%s, signature), updated_at = %s "
        f"WHERE id = %s RETURNING {ENDPOINT_COLS}",
        (
            new_secret,
            orjson.dumps(keep).decode(),
            None if signature is None else orjson.dumps(signature).decode(),
            now,
            endpoint_id,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return endpoint_from_row(row)


async def recover(conn: Conn, endpoint_id: str, since: int, until: int | None, now: int) -> int:
    window = (endpoint_id, since, until if until is not None else 2**62)
    cur = await conn.execute(
        "UPDATE deliveries SET status = 'pending', next_attempt_at = %s, failures = 0, "
        "format_index = 0, manual = false, resume_at = NULL, updated_at = %s "
        "WHERE endpoint_id = %s AND status IN ('failed', 'skipped') AND created_at >= %s "
        f"AND created_at < %s AND {erasure.PAYLOAD_KEPT}",
        (now, now, *window),
    )
    if cur.rowcount == 0:
        erased = await conn.execute(erasure.ERASED_IN_WINDOW, window)
        if await erased.fetchone() is not None:
            raise Conflict(ERASED_RETRY)  # all it found were of erased events
    return cur.rowcount


async def endpoint_stats(conn: Conn, endpoint_id: str, since_24h: int) -> dict[str, Any]:
    counts: dict[str, int] = {}
    cur = await conn.execute(
        "SELECT status, count(*) FROM deliveries WHERE endpoint_id = %s GROUP BY status",
        (endpoint_id,),
    )
    for status, n in await cur.fetchall():
        counts[status] = int(n)
    cur = await conn.execute(
        "SELECT count(*) FILTER (WHERE status = 'delivered'), "
        "count(*) FILTER (WHERE status IN ('delivered', 'failed')) "
        "FROM deliveries WHERE endpoint_id = %s AND created_at >= %s",
        (endpoint_id, since_24h),
    )
    row = await cur.fetchone()
    delivered, finished = (int(row[0]), int(row[1])) if row else (0, 0)
    return {"counts": counts, "success_rate_24h": delivered / finished if finished else None}


def is_unique_violation(exc: BaseException, index: str) -> bool:
    """Whether `exc` is the unique violation of this index (and not of another)."""
    return isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name == index
