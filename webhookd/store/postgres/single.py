"""Claims, outcomes and the daemons table, in their simplest form: enough for one daemon
on PostgreSQL (and safe for several: a claim is a guarded UPDATE, an outcome is fenced by
the claim's token), but without concurrency slots, shared rate limits, a reaper of dead
daemons' claims or wake-ups across daemons.

PLUG-IN POINT: webhookd/store/postgres/claims.py (claim, record, release,
requeue_interrupted, next_due) and cluster.py (heartbeat, reaper, LISTEN/NOTIFY,
cluster()) replace this module; PostgresStore holds one `Claims` and one `Cluster` and
only calls the methods below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from webhookd.store.interface import DaemonInfo, Member
from webhookd.store.models import Claimed, Outcome, StorageError
from webhookd.store.postgres import endpoints as ep_sql
from webhookd.store.postgres import reads
from webhookd.store.postgres.db import Conn
from webhookd.store.postgres.rows import EVENT_COLS, bytes_from_text, event_from_row, no_nul
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.store.postgres.store import PostgresStore

log = logging.getLogger("webhookd.store")

_CLAIM_DUE = (
    "(SELECT id FROM deliveries WHERE endpoint_id = %s AND status = 'pending' "
    "AND next_attempt_at <= %s ORDER BY next_attempt_at LIMIT %s)"
)
# Ordered: strictly in publish order, only the oldest unfinished delivery, if it is due.
_CLAIM_ORDERED = (
    "(SELECT id FROM (SELECT id, status, next_attempt_at FROM deliveries "
    "WHERE endpoint_id = %s AND status IN ('pending', 'delivering') ORDER BY seq LIMIT 1) h "
    "WHERE h.status = 'pending' AND h.next_attempt_at <= %s)"
)
_NEXT_ORDERED = (
    "SELECT next_attempt_at FROM deliveries WHERE endpoint_id = %s AND "
    "status IN ('pending', 'delivering') ORDER BY seq LIMIT 1"
)
# Guarded by status: under READ COMMITTED a row another daemon claimed meanwhile is
# re-checked against the new version and left alone.
_MARK = (
    "UPDATE deliveries d SET status = 'delivering', lease_owner = %s, "
    "lease_token = nextval('lease_tokens'), lease_until = webhookd_now_ms() + %s, "
    "updated_at = %s FROM ({parts}) p WHERE d.id = p.id AND d.status = 'pending' "
    "RETURNING d.id, d.endpoint_id, d.attempt_count, d.failures, d.format_index, d.manual, "
    "d.resume_at, d.event_seq, d.lease_token"
)
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, trigger, format, "
    "request_headers, status_code, response_headers, response_body, error_kind, "
    "error_message) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_FENCE = " AND status = 'delivering' AND (%s::bigint IS NULL OR lease_token = %s::bigint)"


def _token(lease: str | None) -> int | None:
    return int(lease) if lease else None


class Claims:
    def __init__(self, store: PostgresStore, lease_s: float, alive_s: float) -> None:
        self.store = store
        self.lease_ms = int(lease_s * 1000)
        # A daemon whose heartbeat is older than this is gone.
        self.alive_ms = int(alive_s * 1000)

    async def claim(
        self, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        ordered = {e for e in wants if (ep := self.store.endpoint(e)) is not None and ep.ordered}
        parts: list[str] = []
        args: list[Any] = []
        for endpoint_id, n in wants.items():
            if endpoint_id in ordered:
                parts.append(_CLAIM_ORDERED)
                args += [endpoint_id, now]
            else:
                parts.append(_CLAIM_DUE)
                args += [endpoint_id, now, n]
        async with self.store.db.transaction() as conn:
            claimed = await self._mark(conn, parts, args, now) if parts else []
            counts = dict.fromkeys(wants, 0)
            for c in claimed:
                counts[c.endpoint_id] += 1
            next_due: dict[str, int | None] = {}
            short = [e for e, n in wants.items() if e not in ordered and counts[e] < n]
            if short:
                next_due.update(await reads.next_due(conn, short))
            for endpoint_id in ordered:
                cur = await conn.execute(_NEXT_ORDERED, (endpoint_id,))
                row = await cur.fetchone()
                next_due[endpoint_id] = row[0] if row else None
        return claimed, next_due

    async def _mark(self, conn: Conn, parts: list[str], args: list[Any], now: int) -> list[Claimed]:
        sql = _MARK.format(parts=" UNION ALL ".join(parts))
        cur = await conn.execute(sql, (self.store.member.id, self.lease_ms, now, *args))
        rows = await cur.fetchall()
        if not rows:
            return []
        cur = await conn.execute(
            f"SELECT {EVENT_COLS} FROM events WHERE seq = ANY(%s)",
            (sorted({r[7] for r in rows}),),
        )
        events = {e.seq: e for e in map(event_from_row, await cur.fetchall())}
        return [
            Claimed(
                delivery_id=r[0],
                endpoint_id=r[1],
                event=events[r[7]],
                attempt_count=r[2],
                failures=r[3],
                format_index=r[4],
                manual=bool(r[5]),
                resume_at=r[6],
                had_failures=r[2] > 0,
                lease=str(r[8]),
            )
            for r in rows
        ]

    async def record(self, o: Outcome) -> None:
        a = o.attempt
        now = now_ms()
        member = self.store.member.id
        async with self.store.db.transaction() as conn:
            await conn.execute(
                _INSERT_ATTEMPT,
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
                    bytes_from_text(a.response_body),
                    a.error_kind,
                    no_nul(a.error_message),
                ),
            )
            token = _token(o.lease)
            await conn.execute(
                "UPDATE deliveries SET status = %s, attempt_count = GREATEST(attempt_count, %s), "
                "failures = %s, format_index = %s, next_attempt_at = %s, manual = false, "
                "resume_at = NULL, lease_owner = NULL, lease_token = NULL, lease_until = NULL, "
                "slot = NULL, updated_at = %s WHERE id = %s" + _FENCE,
                (
                    o.status,
                    a.number,
                    o.failures,
                    o.format_index,
                    o.next_attempt_at,
                    now,
                    o.delivery_id,
                    token,
                    token,
                ),
            )
            changes = await self._health(conn, o, now, member)
        if changes:
            self.store.refresh_view(o.endpoint_id, **changes)

    async def _health(self, conn: Conn, o: Outcome, now: int, member: str) -> dict[str, Any]:
        """The endpoint's health after this outcome; returns the view's changes."""
        changes: dict[str, Any] = {}
        if o.success:
            await conn.execute(
                "UPDATE endpoints SET last_success_at = %s, failing_since = NULL WHERE id = %s",
                (now, o.endpoint_id),
            )
            changes.update(last_success_at=now, failing_since=None)
        else:
            cur = await conn.execute(
                "UPDATE endpoints SET failing_since = COALESCE(failing_since, %s) WHERE id = %s "
                "RETURNING failing_since",
                (o.attempt.started_at, o.endpoint_id),
            )
            row = await cur.fetchone()
            if row is not None:
                changes["failing_since"] = row[0]
        if o.disable_reason:
            cur = await conn.execute(
                "UPDATE endpoints SET active = false, disabled_reason = %s, updated_at = %s "
                "WHERE id = %s AND deleted_at IS NULL AND active",
                (o.disable_reason, now, o.endpoint_id),
            )
            if cur.rowcount:
                log.warning(
                    "endpoint disabled",
                    extra={
                        "event": "endpoint_disabled",
                        "endpoint_id": o.endpoint_id,
                        "reason": o.disable_reason,
                    },
                )
            await ep_sql.skip_pending(conn, o.endpoint_id, now)
            await ep_sql.notify_changed(conn, member, o.endpoint_id)
            changes.update(active=False, disabled_reason=o.disable_reason)
        elif o.status == "pending":
            # An outcome decided just before another attempt disabled the endpoint must
            # not leave a delivery pending on a disabled endpoint.
            await conn.execute(
                "UPDATE deliveries SET status = 'skipped', next_attempt_at = NULL, "
                "updated_at = %s WHERE id = %s AND status = 'pending' AND endpoint_id IN "
                "(SELECT id FROM endpoints WHERE NOT active)",
                (now, o.delivery_id),
            )
        return changes

    async def release(self, claimed: Sequence[Claimed], status: str = "pending") -> None:
        if not claimed:
            return
        assert status in ("pending", "skipped")
        now = now_ms()
        rows = [(c.delivery_id, _token(c.lease), _token(c.lease)) for c in claimed]
        if status == "pending":
            sql = (
                "UPDATE deliveries SET status = 'pending', next_attempt_at = "
                "LEAST(COALESCE(next_attempt_at, %s), %s), "
                "lease_owner = NULL, lease_token = NULL, lease_until = NULL, slot = NULL, "
                "updated_at = %s WHERE id = %s" + _FENCE
            )
            params: list[tuple[Any, ...]] = [(now, now, now, *r) for r in rows]
        else:
            sql = (
                "UPDATE deliveries SET status = 'skipped', next_attempt_at = NULL, "
                "manual = false, lease_owner = NULL, lease_token = NULL, lease_until = NULL, "
                "slot = NULL, updated_at = %s WHERE id = %s" + _FENCE
            )
            params = [(now, *r) for r in rows]
        async with self.store.db.transaction() as conn, conn.cursor() as cur:
            await cur.executemany(sql, params)

    async def requeue_interrupted(self) -> int:
        """Claims this daemon holds (none yet at startup), of daemons that are gone (no
        fresh heartbeat in `daemons`), or whose lease ran out, become due now."""
        now = now_ms()
        async with self.store.db.connection() as conn:
            cur = await conn.execute(
                "UPDATE deliveries SET status = 'pending', next_attempt_at = %s, "
                "lease_owner = NULL, lease_token = NULL, lease_until = NULL, slot = NULL, "
                "updated_at = %s WHERE status = 'delivering' AND (lease_owner IS NULL "
                "OR lease_owner = %s OR lease_until < webhookd_now_ms() "
                "OR lease_owner NOT IN (SELECT id FROM daemons "
                "WHERE heartbeat_at > webhookd_now_ms() - %s))",
                (now, now, self.store.member.id, self.alive_ms),
            )
            return cur.rowcount

    async def next_due(self, endpoint_ids: list[str]) -> dict[str, int | None]:
        async with self.store.db.connection() as conn:
            return await reads.next_due(conn, endpoint_ids)


class Cluster:
    """This daemon's row in `daemons`, refreshed every `heartbeat_s`, removed on close."""

    def __init__(self, store: PostgresStore, heartbeat_s: float, alive_s: float) -> None:
        self.store = store
        self.heartbeat_s = heartbeat_s
        self.alive_s = alive_s
        self.in_flight: Callable[[], int] = lambda: 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        m = self.store.member
        async with self.store.db.connection() as conn:
            await conn.execute(
                "INSERT INTO daemons (id, host, pid, version, started_at, heartbeat_at, "
                "in_flight) VALUES (%s, %s, %s, %s, %s, webhookd_now_ms(), 0) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (m.id, m.host, m.pid, m.version, m.started_at),
            )
        self._task = asyncio.create_task(self._beat(), name="webhookd-pg-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                async with self.store.db.connection() as conn:
                    await conn.execute(
                        "UPDATE daemons SET heartbeat_at = webhookd_now_ms(), in_flight = %s "
                        "WHERE id = %s",
                        (self.in_flight(), self.store.member.id),
                    )
            except StorageError as exc:
                log.warning(
                    "heartbeat failed", extra={"event": "heartbeat_failed", "error": str(exc)}
                )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(StorageError):
            async with self.store.db.connection() as conn:
                await conn.execute("DELETE FROM daemons WHERE id = %s", (self.store.member.id,))

    async def daemons(self) -> list[DaemonInfo]:
        async with self.store.db.connection() as conn:
            cur = await conn.execute(
                "SELECT id, host, pid, version, started_at, heartbeat_at, in_flight "
                "FROM daemons WHERE heartbeat_at > webhookd_now_ms() - %s ORDER BY started_at, id",
                (int(self.alive_s * 1000),),
            )
            rows = await cur.fetchall()
        me = self.store.member.id
        return [
            DaemonInfo(
                Member(r[0], r[1], r[2], r[3], r[4]),
                r[5],
                self.in_flight() if r[0] == me else r[6],
            )
            for r in rows
        ]
