"""The console's queries on PostgreSQL (see webhookd/store/console.py for what they
answer): the delivery log's bounded pages, counts and bulk requeue, the chart of
attempts, the live-update marker, the console's signing key and portal revocations.

A mixin of PostgresStore; every read goes to the database, so any daemon answers with
what is committed. The indexes they walk are migration 2 (webhookd/store/postgres/
schema.py)."""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from webhookd.store.codec import decode_cursor, encode_cursor
from webhookd.store.console import (
    CHART_MAX_ROWS,
    SCAN_BUDGET,
    SEQ_SLACK,
    Chart,
    DeliveryQuery,
    EndpointHealth,
    chart_from_rows,
    class_bounds,
)
from webhookd.store.models import Page
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.erasure import PAYLOAD_KEPT
from webhookd.store.postgres.rows import DELIVERY_COLS, delivery_from_row
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.store.interface import Member
    from webhookd.store.postgres.db import Database

KEY_NAME = "console_key"


class Conditions:
    """A WHERE clause and its arguments, built one condition at a time."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *args: Any) -> None:
        self.where.append(condition)
        self.args.extend(args)

    def sql(self) -> str:
        return " AND ".join(self.where) if self.where else "true"


def walk_conditions(q: DeliveryQuery, c: Conditions) -> None:
    """The condition of the one index a page walks (DeliveryQuery.index)."""
    index = q.index()
    if index == "endpoint_id":
        c.add("endpoint_id = %s", q.endpoint_id)
    elif index == "status":
        c.add("status = %s", q.statuses[0])
    elif index == "event_type":
        c.add("event_type = %s", q.event_type)
    elif index == "tenant":
        if q.tenant is None:
            c.add("tenant IS NULL")
        else:
            c.add("tenant = %s", q.tenant)


def residual_conditions(q: DeliveryQuery, c: Conditions, table: str = "deliveries") -> None:
    """Every filter but the walked index's, checked row by row."""
    index = q.index()
    if q.endpoint_id is not None and index != "endpoint_id":
        c.add("endpoint_id = %s", q.endpoint_id)
    if q.statuses and index != "status":
        c.add("status = ANY(%s)", list(q.statuses))
    if q.event_type is not None and index != "event_type":
        c.add("event_type = %s", q.event_type)
    if q.tenant is not ... and index != "tenant":
        c.add("tenant IS NOT DISTINCT FROM %s", q.tenant)
    if q.since is not None:
        c.add("created_at >= %s", q.since)
    if q.until is not None:
        c.add("created_at < %s", q.until)
    if q.status_class is not None:
        bounds = class_bounds(q.status_class)
        answer = "a.status_code IS NULL" if bounds is None else "a.status_code BETWEEN %s AND %s"
        c.add(
            f"EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = {table}.id "
            f"AND a.number = {table}.attempt_count AND {answer})",
            *(bounds or ()),
        )


class ConsoleQueries:
    """The console's part of PostgresStore."""

    if TYPE_CHECKING:
        db: Database
        member: Member

        def tell_due(self, items: Iterable[tuple[str, int]]) -> None: ...

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def _seq_bounds(self, q: DeliveryQuery) -> tuple[int, int] | None:
        """The seq range a time window lies in (widened by SEQ_SLACK); None: empty."""
        lo, hi = 0, 2**62
        if q.since is not None:
            row = await self._one(
                "SELECT seq FROM deliveries WHERE created_at >= %s ORDER BY created_at, seq "
                "LIMIT 1",
                (q.since,),
            )
            if row is None:
                return None
            lo = row[0] - SEQ_SLACK
        if q.until is not None:
            row = await self._one(
                "SELECT seq FROM deliveries WHERE created_at < %s "
                "ORDER BY created_at DESC, seq DESC LIMIT 1",
                (q.until,),
            )
            if row is None:
                return None
            hi = row[0] + SEQ_SLACK
        return lo, hi

    async def console_deliveries(
        self, query: DeliveryQuery, *, cursor: str | None, limit: int
    ) -> Page:
        bounds = await self._seq_bounds(query)
        if bounds is None:
            return Page([], None)
        walk = Conditions()
        walk_conditions(query, walk)
        walk.add("seq BETWEEN %s AND %s", *bounds)
        if cursor:
            walk.add("seq < %s", decode_cursor(cursor))
        rest = Conditions()
        residual_conditions(query, rest, "w")
        sql = (
            f"SELECT {DELIVERY_COLS} FROM (SELECT * FROM deliveries WHERE {walk.sql()} "
            f"ORDER BY seq DESC LIMIT %s) AS w WHERE {rest.sql()} ORDER BY seq DESC LIMIT %s"
        )
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, (*walk.args, SCAN_BUDGET, *rest.args, limit + 1))
            rows = list(await cur.fetchall())
            if len(rows) > limit:
                rows = rows[:limit]
                return Page([delivery_from_row(r) for r in rows], encode_cursor(rows[-1][-1]))
            cur = await conn.execute(
                f"SELECT count(*), min(seq) FROM (SELECT seq FROM deliveries WHERE "
                f"{walk.sql()} ORDER BY seq DESC LIMIT %s) AS w",
                (*walk.args, SCAN_BUDGET),
            )
            walked = await cur.fetchone()
        assert walked is not None
        nxt = encode_cursor(walked[1]) if walked[0] >= SCAN_BUDGET and walked[1] > 1 else None
        return Page([delivery_from_row(r) for r in rows], nxt)

    async def endpoint_health(
        self, endpoint_ids: Sequence[str], since: int
    ) -> dict[str, EndpointHealth]:
        # Pending: through the claim index (pending rows only). The window: through the
        # endpoint's (endpoint_id, seq) index from the first seq of the window.
        bounds = await self._seq_bounds(DeliveryQuery(since=since))
        lo = bounds[0] if bounds is not None else 2**62
        ids = list(endpoint_ids)
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT endpoint_id, count(*) FROM deliveries "
                "WHERE endpoint_id = ANY(%s) AND status = 'pending' GROUP BY endpoint_id",
                (ids,),
            )
            pending = {r[0]: int(r[1]) for r in await cur.fetchall()}
            cur = await conn.execute(
                "SELECT endpoint_id, count(*) FILTER (WHERE status = 'delivered'), "
                "count(*) FILTER (WHERE status IN ('delivered', 'failed')) FROM deliveries "
                "WHERE endpoint_id = ANY(%s) AND seq >= %s AND created_at >= %s "
                "GROUP BY endpoint_id",
                (ids, lo, since),
            )
            window = {r[0]: (int(r[1]), int(r[2])) for r in await cur.fetchall()}
        return {e: EndpointHealth(pending.get(e, 0), *window.get(e, (0, 0))) for e in endpoint_ids}

    async def count_deliveries(self, query: DeliveryQuery) -> int:
        c = Conditions()
        walk_conditions(query, c)
        residual_conditions(query, c)
        row = await self._one(f"SELECT count(*) FROM deliveries WHERE {c.sql()}", c.args)
        return int(row[0])

    async def requeue_deliveries(self, query: DeliveryQuery) -> int:
        c = Conditions()
        walk_conditions(query, c)
        residual_conditions(query, c)
        c.add("status IN ('failed', 'skipped')")
        c.add("endpoint_id IN (SELECT id FROM endpoints WHERE active AND deleted_at IS NULL)")
        c.add(PAYLOAD_KEPT)  # an erased event's deliveries have nothing left to send
        now = now_ms()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = %s, failures = 0, "
                "format_index = 0, manual = false, resume_at = NULL, updated_at = %s "
                f"WHERE {c.sql()} RETURNING endpoint_id",
                (now, now, *c.args),
            )
            rows = await cur.fetchall()
            due = [(e, now) for e in sorted({r[0] for r in rows})]
            await wakeups.notify_due(conn, self.member.id, due)
        self.tell_due(due)
        return len(rows)

    async def attempt_chart(
        self, *, endpoint_id: str | None, tenant: Any, since: int, until: int, bucket_ms: int
    ) -> Chart:
        c = Conditions()
        c.add("a.started_at >= %s AND a.started_at < %s", since, until)
        join = ""
        if endpoint_id is not None or tenant is not ...:
            join = "JOIN deliveries d ON d.id = a.delivery_id"
            if endpoint_id is not None:
                c.add("d.endpoint_id = %s", endpoint_id)
            if tenant is not ...:
                c.add("d.tenant IS NOT DISTINCT FROM %s", tenant)
        sql = (
            "SELECT a.started_at, a.duration_ms, a.status_code, a.error_kind FROM attempts a "
            f"{join} WHERE {c.sql()} ORDER BY a.started_at DESC LIMIT %s"
        )
        async with self.db.connection() as conn:
            cur = await conn.execute(sql, (*c.args, CHART_MAX_ROWS + 1))
            rows: list[Any] = list(await cur.fetchall())
        truncated = len(rows) > CHART_MAX_ROWS
        return chart_from_rows(rows[:CHART_MAX_ROWS], since, until, bucket_ms, truncated)

    async def change_marker(self) -> tuple[int, int]:
        row = await self._one(
            "SELECT (SELECT coalesce(max(seq), 0) FROM deliveries), "
            "(SELECT coalesce(max(seq), 0) FROM attempts)"
        )
        return int(row[0]), int(row[1])

    async def console_key(self) -> bytes:
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO console_settings (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (KEY_NAME, secrets.token_bytes(32)),
            )
            cur = await conn.execute(
                "SELECT value FROM console_settings WHERE name = %s", (KEY_NAME,)
            )
            row = await cur.fetchone()
        assert row is not None
        return bytes(row[0])

    async def revoke_portal(self, tenant: str, at: int) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                "INSERT INTO portal_revocations (tenant, revoked_at) VALUES (%s, %s) "
                "ON CONFLICT (tenant) DO UPDATE SET revoked_at = "
                "GREATEST(portal_revocations.revoked_at, excluded.revoked_at)",
                (tenant, at),
            )

    async def portal_revoked_at(self, tenant: str) -> int | None:
        row = await self._one(
            "SELECT revoked_at FROM portal_revocations WHERE tenant = %s", (tenant,)
        )
        return None if row is None else int(row[0])
