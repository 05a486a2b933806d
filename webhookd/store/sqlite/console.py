"""The console's queries on SQLite (see webhookd/store/console.py for what they answer):
the delivery log's bounded pages, counts and bulk requeue, the chart of attempts, the
live-update marker, the console's signing key and portal revocations.

A mixin of SQLiteStore: reads go through its read connection, writes through its
group-commit writer. The indexes they walk are migration 5 (webhookd/store/sqlite/
migrations.py)."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiosqlite

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
from webhookd.store.sqlite.erasure import PAYLOAD_KEPT
from webhookd.store.sqlite.rows import DELIVERY_COLS, delivery_from_row
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.store.sqlite.writer import Writer

KEY_NAME = "console_key"
_COLUMN = {"endpoint_id": "endpoint_id", "status": "status", "event_type": "event_type"}


class Conditions:
    """A WHERE clause and its arguments, built one condition at a time."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *args: Any) -> None:
        self.where.append(condition)
        self.args.extend(args)

    def sql(self) -> str:
        return " AND ".join(self.where) if self.where else "1"


def walk_conditions(q: DeliveryQuery, c: Conditions) -> None:
    """The condition of the one index a page walks (DeliveryQuery.index)."""
    index = q.index()
    if index == "endpoint_id":
        c.add("endpoint_id = ?", q.endpoint_id)
    elif index == "status":
        c.add("status = ?", q.statuses[0])
    elif index == "event_type":
        c.add("event_type = ?", q.event_type)
    elif index == "tenant":
        c.add("tenant IS ?", q.tenant)


def residual_conditions(q: DeliveryQuery, c: Conditions) -> None:
    """Every filter but the walked index's, checked row by row."""
    index = q.index()
    if q.endpoint_id is not None and index != "endpoint_id":
        c.add("endpoint_id = ?", q.endpoint_id)
    if q.statuses and index != "status":
        c.add(f"status IN ({','.join('?' * len(q.statuses))})", *q.statuses)
    if q.event_type is not None and index != "event_type":
        c.add("event_type = ?", q.event_type)
    if q.tenant is not ... and index != "tenant":
        c.add("tenant IS ?", q.tenant)
    if q.since is not None:
        c.add("created_at >= ?", q.since)
    if q.until is not None:
        c.add("created_at < ?", q.until)
    if q.status_class is not None:
        bounds = class_bounds(q.status_class)
        answer = "a.status_code IS NULL" if bounds is None else "a.status_code BETWEEN ? AND ?"
        c.add(
            "EXISTS (SELECT 1 FROM attempts a WHERE a.delivery_id = deliveries.id "
            f"AND a.number = deliveries.attempt_count AND {answer})",
            *(bounds or ()),
        )


def _rare_states_first(statuses: tuple[str, ...]) -> str:
    """The table clause for a count or update of these states: through their (status,
    seq) index when none is `delivered`. The others are the few (failed, skipped,
    pending): reading them beats reading every delivery of an endpoint, which SQLite's
    planner prefers from its statistics (0.1 ms against 90 ms for the skipped of an
    endpoint with 250,000 deliveries)."""
    if statuses and "delivered" not in statuses:
        return "deliveries INDEXED BY deliveries_status"
    return "deliveries"


class ConsoleQueries:
    """The console's part of SQLiteStore."""

    if TYPE_CHECKING:

        @property
        def _read(self) -> aiosqlite.Connection: ...

        def _writer(self) -> Writer: ...

        def tell_due(self, items: Sequence[tuple[str, int]]) -> None: ...

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        async with self._read.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _seq_bounds(self, q: DeliveryQuery) -> tuple[int, int] | None:
        """The seq range a time window lies in (widened by SEQ_SLACK); None: empty."""
        lo, hi = 0, 2**62
        if q.since is not None:
            row = await self._one(
                "SELECT seq FROM deliveries WHERE created_at >= ? ORDER BY created_at, seq LIMIT 1",
                (q.since,),
            )
            if row is None:
                return None
            lo = row[0] - SEQ_SLACK
        if q.until is not None:
            row = await self._one(
                "SELECT seq FROM deliveries WHERE created_at < ? "
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
        walk.add("seq BETWEEN ? AND ?", *bounds)
        if cursor:
            walk.add("seq < ?", decode_cursor(cursor))
        rest = Conditions()
        residual_conditions(query, rest)
        # The walk is a co-routine read in its own order (seq descending): the outer
        # LIMIT stops it as soon as a page is full, without sorting what it read.
        sql = (
            f"SELECT {DELIVERY_COLS} FROM (SELECT * FROM deliveries WHERE {walk.sql()} "
            f"ORDER BY seq DESC LIMIT ?) AS deliveries WHERE {rest.sql()} LIMIT ?"
        )
        async with self._read.execute(sql, (*walk.args, SCAN_BUDGET, *rest.args, limit + 1)) as cur:
            rows = list(await cur.fetchall())
        rows.sort(key=lambda r: r[-1], reverse=True)
        if len(rows) > limit:
            rows = rows[:limit]
            return Page([delivery_from_row(r) for r in rows], encode_cursor(rows[-1][-1]))
        walked = await self._one(
            f"SELECT COUNT(*), MIN(seq) FROM (SELECT seq FROM deliveries WHERE {walk.sql()} "
            "ORDER BY seq DESC LIMIT ?)",
            (*walk.args, SCAN_BUDGET),
        )
        nxt = encode_cursor(walked[1]) if walked[0] >= SCAN_BUDGET and walked[1] > 1 else None
        return Page([delivery_from_row(r) for r in rows], nxt)

    async def endpoint_health(
        self, endpoint_ids: Sequence[str], since: int
    ) -> dict[str, EndpointHealth]:
        # Pending: through the claim index (pending rows only). The window: through the
        # endpoint's (endpoint_id, seq) index from the first seq of the window.
        bounds = await self._seq_bounds(DeliveryQuery(since=since))
        out = {}
        for endpoint_id in endpoint_ids:
            pending = await self._one(
                "SELECT COUNT(*) FROM deliveries WHERE endpoint_id = ? AND status = 'pending'",
                (endpoint_id,),
            )
            window = (0, 0)
            if bounds is not None:
                window = await self._one(
                    "SELECT IFNULL(SUM(status = 'delivered'), 0), "
                    "IFNULL(SUM(status IN ('delivered', 'failed')), 0) FROM deliveries "
                    "WHERE endpoint_id = ? AND seq >= ? AND created_at >= ?",
                    (endpoint_id, bounds[0], since),
                )
            out[endpoint_id] = EndpointHealth(int(pending[0]), int(window[0]), int(window[1]))
        return out

    async def count_deliveries(self, query: DeliveryQuery) -> int:
        c = Conditions()
        walk_conditions(query, c)
        residual_conditions(query, c)
        table = _rare_states_first(query.statuses)
        row = await self._one(f"SELECT COUNT(*) FROM {table} WHERE {c.sql()}", c.args)
        return int(row[0])

    async def requeue_deliveries(self, query: DeliveryQuery) -> int:
        c = Conditions()
        walk_conditions(query, c)
        residual_conditions(query, c)
        c.add("status IN ('failed', 'skipped')")
        c.add("endpoint_id IN (SELECT id FROM endpoints WHERE active = 1 AND deleted_at IS NULL)")
        c.add(PAYLOAD_KEPT)  # an erased event's deliveries have nothing left to send
        now = now_ms()

        def job(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"UPDATE {_rare_states_first(('failed', 'skipped'))} "
                "SET status='pending', next_attempt_at=?, failures=0, "
                "format_index=0, manual=0, resume_at=NULL, updated_at=? "
                f"WHERE {c.sql()} RETURNING endpoint_id",
                (now, now, *c.args),
            ).fetchall()
            endpoints = {r[0] for r in rows}
            if endpoints:
                self.tell_due([(e, now) for e in sorted(endpoints)])
            return len(rows)

        count: int = await self._writer().run(job)
        return count

    async def attempt_chart(
        self, *, endpoint_id: str | None, tenant: Any, since: int, until: int, bucket_ms: int
    ) -> Chart:
        c = Conditions()
        c.add("a.started_at >= ? AND a.started_at < ?", since, until)
        join = ""
        if endpoint_id is not None or tenant is not ...:
            join = "JOIN deliveries d ON d.id = a.delivery_id"
            if endpoint_id is not None:
                c.add("d.endpoint_id = ?", endpoint_id)
            if tenant is not ...:
                c.add("d.tenant IS ?", tenant)
        sql = (
            "SELECT a.started_at, a.duration_ms, a.status_code, a.error_kind FROM attempts a "
            f"{join} WHERE {c.sql()} ORDER BY a.started_at DESC LIMIT ?"
        )
        async with self._read.execute(sql, (*c.args, CHART_MAX_ROWS + 1)) as cur:
            rows = list(await cur.fetchall())
        truncated = len(rows) > CHART_MAX_ROWS
        kept: list[Any] = rows[:CHART_MAX_ROWS]
        return chart_from_rows(kept, since, until, bucket_ms, truncated)

    async def change_marker(self) -> tuple[int, int]:
        row = await self._one(
            "SELECT (SELECT IFNULL(MAX(seq), 0) FROM deliveries), "
            "(SELECT IFNULL(MAX(seq), 0) FROM attempts)"
        )
        return int(row[0]), int(row[1])

    async def console_key(self) -> bytes:
        row = await self._one("SELECT value FROM console_settings WHERE name = ?", (KEY_NAME,))
        if row is not None:
            return bytes(row[0])
        fresh = secrets.token_bytes(32)

        def job(conn: sqlite3.Connection) -> bytes:
            conn.execute(
                "INSERT OR IGNORE INTO console_settings(name, value) VALUES (?, ?)",
                (KEY_NAME, fresh),
            )
            got = conn.execute(
                "SELECT value FROM console_settings WHERE name = ?", (KEY_NAME,)
            ).fetchone()
            return bytes(got[0])

        key: bytes = await self._writer().run(job)
        return key

    async def revoke_portal(self, tenant: str, at: int) -> None:
        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO portal_revocations(tenant, revoked_at) VALUES (?, ?) "
                "ON CONFLICT(tenant) DO UPDATE SET "
                "revoked_at = MAX(revoked_at, excluded.revoked_at)",
                (tenant, at),
            )

        await self._writer().run(job)

    async def portal_revoked_at(self, tenant: str) -> int | None:
        row = await self._one(
            "SELECT revoked_at FROM portal_revocations WHERE tenant = ?", (tenant,)
        )
        return None if row is None else int(row[0])
