"""The SQLite store: the only code that speaks SQL.

One write connection driven by the group-commit Writer, one read connection for the API's
queries (WAL lets it read while a write is in progress). Endpoints and the event-type
catalog are small and read on every publish, so they are also kept in memory and updated
after each committed change; deliveries, the backlog, stay on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import orjson

from webhookd.config import Config, EventTypeDecl
from webhookd.ids import new_id
from webhookd.store.codec import decode_cursor, encode_cursor
from webhookd.store.interface import DaemonInfo, DueListener, Member, WriteStats
from webhookd.store.models import (
    ERASED_RETRY,
    PAUSED_RETRY,
    AmbiguousId,
    Attempt,
    Claimed,
    Conflict,
    Delivery,
    Endpoint,
    Event,
    EventType,
    NewEvent,
    NotFound,
    Outcome,
    Page,
    PayloadSweep,
    PublishResult,
    StorageError,
)
from webhookd.store.records import check_changeable, declared_rows, event_type_row
from webhookd.store.sqlite import erasure
from webhookd.store.sqlite.batches import (
    MARK_DELIVERING,
    claim_select,
    publish_merged,
    record_merged,
    skip_pending,
)
from webhookd.store.sqlite.console import ConsoleQueries
from webhookd.store.sqlite.handoff import Offers
from webhookd.store.sqlite.migrations import MIGRATIONS
from webhookd.store.sqlite.rows import (
    DELIVERY_COLS,
    ENDPOINT_COLS,
    EVENT_COLS,
    EVENT_TYPE_COLS,
    delivery_from_row,
    endpoint_columns,
    endpoint_from_row,
    event_from_row,
    event_type_from_row,
    window,
)
from webhookd.store.sqlite.view import HEALTH_FIELDS, EndpointView
from webhookd.store.sqlite.writer import COMMIT_BUCKETS, Writer
from webhookd.timefmt import now_ms

# How long a statement waits for another process's lock (a backup, an operator's sqlite3
# shell) before the write fails and the API answers 503.
BUSY_TIMEOUT_MS = 5000
# How long the readiness write may wait for the writer before the check says no.
PROBE_TIMEOUT_S = 2.0
# WAL lets the API read while the writer writes; FULL fsyncs the WAL on every commit so an
# accepted event survives power loss, not just a process crash. The busy timeout is set
# per store (see SQLiteStore).
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
)

if TYPE_CHECKING:
    from webhookd.store.interface import Store

__all__ = ["BUSY_TIMEOUT_MS", "SQLiteStore"]


class SQLiteStore(ConsoleQueries):
    # The dispatcher keeps the endpoints' limits: one daemon per file (interface.Store).
    claims_hold_slots = False

    def __init__(self, path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        """`busy_timeout_ms`: how long a statement waits for another process's lock
        before it fails (tests set it low to see a locked database at once)."""
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._r: aiosqlite.Connection | None = None
        self.writer: Writer | None = None
        # This daemon's endpoints (shared with the database thread: see the package docstring).
        self._view = EndpointView()
        self._event_types: dict[str, EventType] = {}
        # Free slots the dispatcher offers to publishing (see store/handoff.py).
        self.offers = Offers()
        self._probe: asyncio.Task[str | None] | None = None  # the readiness write under way
        self._listener: DueListener | None = None
        self._member = Member.this_process()
        self._in_flight: Callable[[], int] = lambda: 0
        self._checkpoints = erasure.Checkpoints(self._connect_checkpointer)
        self._unflushed_erasures = 0  # by retention, since its last checkpoint

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        _create_private(self.path)
        writer = Writer(self._connect_writer)
        try:
            await writer.start(setup=self._migrate)
            self._r = await self._connect_reader()
        except (sqlite3.Error, StorageError) as exc:
            await writer.close()
            await self.close()
            raise StorageError(f"cannot open database {self.path}: {exc}") from None
        self.writer = writer
        await self._load_caches()

    def _connect_writer(self) -> sqlite3.Connection:
        """The write connection, opened in (and used only by) the writer's thread."""
        conn = sqlite3.connect(
            self.path, timeout=self._timeout_s, isolation_level=None, check_same_thread=False
        )
        for pragma in self._pragmas():
            conn.execute(pragma)
        # Deleted and overwritten content (an erased or purged payload) is zeroed in the
        # file, not left in free space (store/sqlite/erasure.py).
        conn.execute("PRAGMA secure_delete=ON")
        _restrict_files(self.path)
        return conn

    def _connect_checkpointer(self) -> sqlite3.Connection:
        """A short-lived connection for a TRUNCATE checkpoint (store/sqlite/erasure.py)."""
        conn = sqlite3.connect(self.path, timeout=self._timeout_s, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        return conn

    async def _connect_reader(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, timeout=self._timeout_s, isolation_level=None)
        for pragma in self._pragmas():
            await conn.execute(pragma)
        await conn.execute("PRAGMA query_only=ON")
        return conn

    @property
    def _timeout_s(self) -> float:
        # The sqlite3 module's own busy wait, which covers the first pragmas (switching to
        # WAL takes a lock) before busy_timeout is set.
        return self.busy_timeout_ms / 1000

    def _pragmas(self) -> tuple[str, ...]:
        return (*_PRAGMAS, f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        row = conn.execute("PRAGMA user_version").fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StorageError(
                f"database {self.path} has schema version {version}, newer than this "
                f"webhookd understands ({len(MIGRATIONS)}); upgrade webhookd"
            )
        # Foreign keys are off while the schema changes (the pragma works only outside a
        # transaction): a migration that rebuilds a table drops the old one, which would
        # otherwise cascade to the rows that refer to it. Each migration checks them
        # before it commits.
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for i in range(version, len(MIGRATIONS)):
                self._migrate_one(conn, i)
        finally:
            conn.execute("PRAGMA foreign_keys=ON")

    def _migrate_one(self, conn: sqlite3.Connection, i: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[i]):
                conn.execute(statement)
            broken = conn.execute("PRAGMA foreign_key_check").fetchone()
            if broken is not None:
                raise StorageError(
                    f"schema version {i + 1} of {self.path} would leave a {broken[0]} row "
                    f"without its {broken[2]} row; nothing was changed"
                )
            conn.execute(f"PRAGMA user_version={i + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
            self.writer = None
        if self._r is not None:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._r.close()
        self._r = None

    @property
    def _read(self) -> aiosqlite.Connection:
        if self._r is None:
            raise StorageError("the store is closed")
        return self._r

    def _writer(self) -> Writer:
        if self.writer is None:
            raise StorageError("the store is closed")
        return self.writer

    async def _load_caches(self) -> None:
        async with self._read.execute(
            f"SELECT {ENDPOINT_COLS} FROM endpoints WHERE deleted_at IS NULL"
        ) as cur:
            self._view.replace_all(endpoint_from_row(r) for r in await cur.fetchall())
        async with self._read.execute(f"SELECT {EVENT_TYPE_COLS} FROM event_types") as cur:
            self._event_types = {r[0]: event_type_from_row(r) for r in await cur.fetchall()}

    async def write_problem(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """Why a write cannot commit now, or None when one just did (for readiness).

        A real write: the one row of write_probe rewritten and committed through the
        writer, like any outcome or publish. (A transaction that changes nothing commits
        without touching the file, so it proves nothing on a full disk.) Nothing is
        cached, so storage failing shows at the next check; checks made while a probe is
        under way share it, so a readiness check every second costs one small commit a
        second, and a burst of them costs one."""
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.get_running_loop().create_task(
                self._probe_write(), name="webhookd-write-probe"
            )
        try:
            # Shielded: one caller's timeout must not cancel the write the others share.
            return await asyncio.wait_for(asyncio.shield(probe), timeout_s)
        except TimeoutError:
            return f"storage cannot write: no write committed within {timeout_s:g} s"

    async def _probe_write(self) -> str | None:
        written_at = now_ms()

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO write_probe(id, written_at) VALUES (1, ?)", (written_at,)
            )

        try:
            await self._writer().run(job)
        except (StorageError, sqlite3.Error) as exc:
            return str(exc)
        return None

    async def writable(self) -> bool:
        """Whether a write commits now (see write_problem)."""
        return await self.write_problem() is None

    # --- event types ----------------------------------------------------------------

    async def sync_event_types(self, declared: Iterable[EventTypeDecl]) -> None:
        """Make the built-in and config-declared types exist (config wins descriptions)."""
        rows = declared_rows(declared, now_ms())

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE event_types SET source='api' WHERE source='config'")
            conn.executemany(
                "INSERT INTO event_types(name, description, source, created_at, schema, "
                "example) VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                "description=excluded.description, source=excluded.source, "
                "schema=excluded.schema, example=excluded.example",
                rows,
            )

        await self._writer().run(job)
        await self._load_caches()

    def has_event_type(self, name: str) -> bool:
        return name in self._event_types

    def event_type(self, name: str) -> EventType | None:
        return self._event_types.get(name)

    async def create_event_type(
        self,
        name: str,
        description: str,
        *,
        schema: dict[str, Any] | None = None,
        example: dict[str, Any] | None = None,
    ) -> EventType:
        et = EventType(name, description, "api", now_ms(), schema=schema, example=example)

        def job(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO event_types(name, description, source, created_at, schema, "
                    "example) VALUES (?,?,?,?,?,?)",
                    event_type_row(et),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"event type {name} already exists") from None

        await self._writer().run(job)
        self._event_types[name] = et
        return et

    async def update_event_type(
        self,
        name: str,
        *,
        description: str,
        schema: dict[str, Any] | None,
        example: dict[str, Any] | None,
    ) -> EventType:
        et = self._event_types.get(name)
        if et is None:
            raise NotFound(f"no event type named {name}")
        check_changeable(et.name, et.source, "changed")
        new = dataclasses.replace(et, description=description, schema=schema, example=example)
        _, _, _, _, schema_json, example_json = event_type_row(new)

        def job(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE event_types SET description=?, schema=?, example=? WHERE name=?",
                (description, schema_json, example_json, name),
            )

        await self._writer().run(job)
        self._event_types[name] = new
        return new

    async def delete_event_type(self, name: str) -> None:
        et = self._event_types.get(name)
        if et is None:
            raise NotFound(f"no event type named {name}")
        check_changeable(et.name, et.source, "deleted")

        def job(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM event_types WHERE name=?", (name,))

        await self._writer().run(job)
        self._event_types.pop(name, None)

    async def list_event_types(self) -> list[EventType]:
        return sorted(self._event_types.values(), key=lambda e: e.name)

    # --- endpoints ------------------------------------------------------------------

    async def create_endpoint(self, fields: Mapping[str, Any]) -> Endpoint:
        now = now_ms()
        cols = endpoint_columns(fields)
        cols.update(id=new_id("ep"), created_at=now, updated_at=now)
        names = ", ".join(cols)
        marks = ", ".join("?" for _ in cols)

        def job(conn: sqlite3.Connection) -> Endpoint:
            conn.execute(f"INSERT INTO endpoints({names}) VALUES ({marks})", tuple(cols.values()))
            created = self._fetch_endpoint(conn, cols["id"])
            # Nothing is pending for it yet: the subscriber hears of it with its first.
            self.after_commit(functools.partial(self._put_endpoint, created, tell=False))
            return created

        ep: Endpoint = await self._writer().run(job)
        return ep

    def _fetch_endpoint(self, conn: sqlite3.Connection, endpoint_id: str) -> Endpoint:
        row = conn.execute(
            f"SELECT {ENDPOINT_COLS} FROM endpoints WHERE id=? AND deleted_at IS NULL",
            (endpoint_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no endpoint with id {endpoint_id}")
        return endpoint_from_row(row)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._view.get(endpoint_id)

    def endpoints(self) -> list[Endpoint]:
        return self._view.values()

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        # One daemon owns this database: its view is what is stored.
        ep = self._view.get(endpoint_id)
        if ep is None:
            raise NotFound(f"no endpoint with id {endpoint_id}")
        return ep

    async def list_endpoints(
        self, *, tenant: Any = ..., active: bool | None = None, cursor: str | None, limit: int
    ) -> Page:
        where, args = ["deleted_at IS NULL"], []
        if tenant is not ...:
            where.append("tenant IS ?")
            args.append(tenant)
        if active is not None:
            where.append("active=?")
            args.append(1 if active else 0)
        rows, nxt = await self._page("endpoints", ENDPOINT_COLS, where, args, cursor, limit)
        return Page([endpoint_from_row(r) for r in rows], nxt)

    async def update_endpoint(self, endpoint_id: str, changes: Mapping[str, Any]) -> Endpoint:
        """Apply field changes; deactivating turns pending deliveries into `skipped`."""
        cols = endpoint_columns(changes)
        now = now_ms()
        cols["updated_at"] = now

        def job(conn: sqlite3.Connection) -> Endpoint:
            before = self._fetch_endpoint(conn, endpoint_id)
            sets = ", ".join(f"{k}=?" for k in cols)
            conn.execute(
                f"UPDATE endpoints SET {sets} WHERE id=? AND deleted_at IS NULL",
                (*cols.values(), endpoint_id),
            )
            if before.active and cols.get("active") == 0:
                skip_pending(conn, endpoint_id, now)
            updated = self._fetch_endpoint(conn, endpoint_id)
            # Disabled too: a disabled endpoint gives back what was claimed ahead for it.
            self.after_commit(functools.partial(self._put_endpoint, updated, tell=True))
            return updated

        ep: Endpoint = await self._writer().run(job)
        return ep

    async def delete_endpoint(self, endpoint_id: str) -> None:
        now = now_ms()

        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE endpoints SET deleted_at=?, active=0, updated_at=? "
                "WHERE id=? AND deleted_at IS NULL",
                (now, now, endpoint_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no endpoint with id {endpoint_id}")
            conn.execute(
                "UPDATE deliveries SET status='cancelled', next_attempt_at=NULL, manual=0, "
                "updated_at=? WHERE endpoint_id=? AND status IN ('pending','delivering')",
                (now, endpoint_id),
            )
            self.after_commit(functools.partial(self._drop_endpoint, endpoint_id))

        await self._writer().run(job)

    async def rotate_secret(
        self,
        endpoint_id: str,
        new_secret: str,
        grace_s: float,
        *,
        signature: Mapping[str, str] | None = None,
    ) -> Endpoint:
        now = now_ms()
        sig_json = None if signature is None else orjson.dumps(signature).decode()

        def job(conn: sqlite3.Connection) -> Endpoint:
            ep = self._fetch_endpoint(conn, endpoint_id)
            keep = [
                {"secret": p.secret, "expires_at": p.expires_at}
                for p in ep.previous_secrets
                if p.expires_at > now
            ]
            if grace_s > 0:
                keep.insert(0, {"secret": ep.secret, "expires_at": now + int(grace_s * 1000)})
            conn.execute(
                "UPDATE endpoints SET secret=?, previous_secrets=?, "
                "signature=COALESCE(?, signature), updated_at=? WHERE id=?",
                (new_secret, orjson.dumps(keep).decode(), sig_json, now, endpoint_id),
            )
            rotated = self._fetch_endpoint(conn, endpoint_id)
            self.after_commit(functools.partial(self._put_endpoint, rotated, tell=True))
            return rotated

        ep: Endpoint = await self._writer().run(job)
        return ep

    async def recover(self, endpoint_id: str, since: int, until: int | None) -> int:
        """`failed` and `skipped` deliveries created in [since, until) go back to pending,
        due now, with a fresh retry schedule."""
        now = now_ms()

        def job(conn: sqlite3.Connection) -> int:
            window = (endpoint_id, since, until if until is not None else 2**62)
            cur = conn.execute(
                "UPDATE deliveries SET status='pending', next_attempt_at=?, failures=0, "
                "format_index=0, manual=0, resume_at=NULL, updated_at=? "
                "WHERE endpoint_id=? AND status IN ('failed','skipped') AND created_at>=? "
                f"AND created_at<? AND {erasure.PAYLOAD_KEPT}",
                (now, now, *window),
            )
            if cur.rowcount:
                self.tell_due([(endpoint_id, now)])
            elif conn.execute(erasure.ERASED_IN_WINDOW, window).fetchone():
                raise Conflict(ERASED_RETRY)
            return cur.rowcount

        count: int = await self._writer().run(job)
        return count

    async def endpoint_stats(self, endpoint_id: str, since_24h: int) -> dict[str, Any]:
        counts: dict[str, int] = {}
        async with self._read.execute(
            "SELECT status, COUNT(*) FROM deliveries WHERE endpoint_id=? GROUP BY status",
            (endpoint_id,),
        ) as cur:
            for status, n in await cur.fetchall():
                counts[status] = n
        async with self._read.execute(
            "SELECT SUM(status='delivered'), SUM(status IN ('delivered','failed')) "
            "FROM deliveries WHERE endpoint_id=? AND created_at>=?",
            (endpoint_id, since_24h),
        ) as cur:
            row = await cur.fetchone()
        delivered, finished = (row or (0, 0))[:2]
        rate = (delivered or 0) / finished if finished else None
        return {"counts": counts, "success_rate_24h": rate}

    async def purge_before(self, cutoff: int, limit: int) -> int:
        """Delete up to `limit` events created before `cutoff` that have no pending or
        in-flight delivery, with their deliveries and attempts; returns how many."""

        def job(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM events WHERE seq IN (SELECT e.seq FROM events e "
                "WHERE e.created_at < ? AND NOT EXISTS (SELECT 1 FROM deliveries d "
                "WHERE d.event_seq = e.seq AND d.status IN ('pending', 'delivering')) "
                "ORDER BY e.created_at LIMIT ?)",
                (cutoff, limit),
            )
            return cur.rowcount

        count: int = await self._writer().run(job)
        return count

    async def erase_payload(self, event_id: str, tenant: Any = ...) -> Event:
        now = now_ms()

        def job(conn: sqlite3.Connection) -> Event:
            event, cancelled = erasure.erase_event(conn, event_id, tenant, now)
            if cancelled:
                self.after_commit(functools.partial(self._cancelled, cancelled))
            return event

        erased: Event = await self._writer().run(job)
        await self._checkpoints.run()
        return erased

    async def erase_old_payloads(
        self, cutoff: int, after: tuple[int, int], limit: int
    ) -> PayloadSweep:
        now = now_ms()
        done: PayloadSweep = await self._writer().run(
            lambda conn: erasure.sweep(conn, cutoff, after, limit, now)
        )
        self._unflushed_erasures += done.erased
        if self._unflushed_erasures and done.scanned < limit:
            # Once per pass, after its last batch: out of the WAL too.
            self._unflushed_erasures = 0
            await self._checkpoints.run()
        return done

    def _cancelled(self, items: Sequence[tuple[str, str]]) -> None:
        if self._listener is not None:
            self._listener.deliveries_cancelled(items)

    async def backlog(self, now: int) -> tuple[int, int | None]:
        """(pending deliveries, age in ms of the oldest one that is due, or None)."""
        async with self._read.execute(
            "SELECT COUNT(*) FROM deliveries WHERE status='pending'"
        ) as cur:
            row = await cur.fetchone()
        pending = int(row[0]) if row else 0
        # Per endpoint through the claim index: O(endpoints), not O(backlog).
        active = [e.id for e in self._view.values() if e.active and not e.paused]
        due = [d for d in (await self.next_due(active)).values() if d is not None and d <= now]
        oldest = min(due) if due else None
        return pending, (now - oldest) if oldest is not None else None

    # --- publishing -----------------------------------------------------------------

    async def publish(self, events: Sequence[NewEvent]) -> list[PublishResult]:
        """Commit events and their deliveries (one transaction, shared with concurrent
        publishes). Raises Conflict if an id exists with a different body; then nothing
        of this call is stored."""
        result: list[PublishResult] = await self._writer().run_merged(
            publish_merged, (self, events)
        )
        return result

    def fan_out(self, ev: NewEvent, created_at: int) -> list[Endpoint]:
        """The endpoints `ev` goes to (in the database thread, for batches.py)."""
        return self._view.fan_out(ev, created_at)

    async def get_event(self, event_id: str, tenant: Any = ...) -> tuple[Event, list[Delivery]]:
        """The event with this id in `tenant` (None: the events without one), with its
        deliveries. Ids are unique per tenant only: with any tenant (`...`), an id that
        several tenants use raises AmbiguousId."""
        sql = f"SELECT {EVENT_COLS} FROM events WHERE id=?"
        args: list[Any] = [event_id]
        if tenant is not ...:
            sql += " AND tenant IS ?"
            args.append(tenant)
        async with self._read.execute(sql, args) as cur:
            rows = list(await cur.fetchall())
        if not rows:
            raise NotFound(f"no event with id {event_id}")
        if len(rows) > 1:
            raise AmbiguousId(event_id, [r[2] for r in rows])
        event = event_from_row(rows[0])
        async with self._read.execute(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE event_seq=? ORDER BY seq",
            (event.seq,),
        ) as cur:
            deliveries = [delivery_from_row(r) for r in await cur.fetchall()]
        return event, deliveries

    async def list_events(
        self,
        *,
        event_type: str | None = None,
        tenant: Any = ...,
        since: int | None = None,
        until: int | None = None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        if event_type is not None:
            where.append("type=?")
            args.append(event_type)
        if tenant is not ...:
            where.append("tenant IS ?")
            args.append(tenant)
        window(where, args, since, until)
        rows, nxt = await self._page(
            "events",
            EVENT_COLS,
            where,
            args,
            cursor,
            limit,
        )
        return Page([event_from_row(r) for r in rows], nxt)

    # --- deliveries -----------------------------------------------------------------

    async def list_deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        event_id: str | None = None,
        event_type: str | None = None,
        status: str | None = None,
        tenant: Any = ...,
        since: int | None = None,
        until: int | None = None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        where: list[str] = []
        args: list[Any] = []
        for col, val in (
            ("endpoint_id", endpoint_id),
            ("event_type", event_type),
            ("status", status),
        ):
            if val is not None:
                where.append(f"{col}=?")
                args.append(val)
        if event_id is not None:
            # Through the events' id index: the deliveries of every event with this id,
            # of every tenant unless `tenant` narrows it (a delivery has its event's).
            where.append("event_seq IN (SELECT seq FROM events WHERE id=?)")
            args.append(event_id)
        if tenant is not ...:
            where.append("tenant IS ?")
            args.append(tenant)
        window(where, args, since, until)
        rows, nxt = await self._page("deliveries", DELIVERY_COLS, where, args, cursor, limit)
        return Page([delivery_from_row(r) for r in rows], nxt)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[Attempt]]:
        async with self._read.execute(
            f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id=?", (delivery_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no delivery with id {delivery_id}")
        async with self._read.execute(
            "SELECT number, started_at, duration_ms, trigger, format, request_headers, "
            "status_code, response_headers, response_body, error_kind, error_message "
            "FROM attempts WHERE delivery_id=? ORDER BY number",
            (delivery_id,),
        ) as cur:
            attempts = [
                Attempt(
                    number=r[0],
                    started_at=r[1],
                    duration_ms=r[2],
                    trigger=r[3],
                    format=r[4],
                    request_headers=orjson.loads(r[5]),
                    status_code=r[6],
                    response_headers=orjson.loads(r[7]),
                    response_body=r[8],
                    error_kind=r[9],
                    error_message=r[10],
                )
                for r in await cur.fetchall()
            ]
        return delivery_from_row(row), attempts

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        """Make a delivery due now for one manual attempt, whatever its state."""
        now = now_ms()

        def job(conn: sqlite3.Connection) -> Delivery:
            row = conn.execute(
                "SELECT status, endpoint_id, (SELECT payload_erased_at FROM events "
                "WHERE seq=event_seq) FROM deliveries WHERE id=?",
                (delivery_id,),
            ).fetchone()
            if row is None:
                raise NotFound(f"no delivery with id {delivery_id}")
            status, endpoint_id, erased_at = row
            if erased_at is not None:
                raise Conflict(ERASED_RETRY)
            ep = self._view.get(endpoint_id)
            if ep is None:
                raise Conflict("the endpoint of this delivery was deleted; it cannot be retried")
            if not ep.active:
                raise Conflict(
                    "the endpoint of this delivery is disabled; re-enable it with "
                    'PATCH {"active": true} or use recover'
                )
            if ep.paused:
                raise Conflict(PAUSED_RETRY)
            if status == "delivering":
                raise Conflict("an attempt of this delivery is in progress; try again shortly")
            conn.execute(
                "UPDATE deliveries SET manual=1, "
                "resume_at=CASE WHEN status='pending' THEN next_attempt_at END, "
                "status='pending', next_attempt_at=?, updated_at=? WHERE id=?",
                (now, now, delivery_id),
            )
            updated = conn.execute(
                f"SELECT {DELIVERY_COLS} FROM deliveries WHERE id=?", (delivery_id,)
            ).fetchone()
            assert updated is not None
            self.tell_due([(endpoint_id, now)])
            return delivery_from_row(updated)

        result: Delivery = await self._writer().run(job)
        return result

    # --- the dispatcher's side --------------------------------------------------------

    async def requeue_interrupted(self) -> int:
        """Deliveries left `delivering` by a crash become due again at once."""
        now = now_ms()

        def job(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE deliveries SET status='pending', next_attempt_at=?, updated_at=? "
                "WHERE status='delivering'",
                (now, now),
            )
            return cur.rowcount

        count: int = await self._writer().run(job)
        return count

    async def release(self, claimed: Sequence[Claimed], status: str = "pending") -> None:
        """Give claimed deliveries back unattempted: `pending` (shutdown), due at once,
        or `skipped` (their endpoint was disabled meanwhile)."""
        if not claimed:
            return
        delivery_ids = [c.delivery_id for c in claimed]
        assert status in ("pending", "skipped")
        now = now_ms()

        def job(conn: sqlite3.Connection) -> None:
            if status == "pending":
                conn.executemany(
                    "UPDATE deliveries SET status='pending', next_attempt_at=MIN("
                    "COALESCE(next_attempt_at, ?), ?), updated_at=? "
                    "WHERE id=? AND status='delivering'",
                    [(now, now, now, d) for d in delivery_ids],
                )
            else:
                conn.executemany(
                    "UPDATE deliveries SET status='skipped', next_attempt_at=NULL, manual=0, "
                    "updated_at=? WHERE id=? AND status='delivering'",
                    [(now, d) for d in delivery_ids],
                )

        await self._writer().run(job)

    async def next_due(self, endpoint_ids: Iterable[str]) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for endpoint_id in endpoint_ids:
            async with self._read.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries "
                "WHERE endpoint_id=? AND status='pending'",
                (endpoint_id,),
            ) as cur:
                row = await cur.fetchone()
            out[endpoint_id] = row[0] if row else None
        return out

    async def claim(
        self, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        """Claim up to wants[endpoint] due deliveries per endpoint, in one statement.

        Returns the claimed deliveries and, for endpoints that got fewer than they asked
        for, when their next pending delivery is due (None: nothing pending)."""
        result: tuple[list[Claimed], dict[str, int | None]] = await self._writer().run(
            lambda conn: self._claim_job(conn, wants, now)
        )
        return result

    def _claim_job(
        self, conn: sqlite3.Connection, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        ordered = {e for e in wants if (ep := self._view.get(e)) is not None and ep.ordered}
        # Nothing of a paused endpoint is claimed (claim_select checks the committed row
        # too), and nothing is due for it until it is unpaused.
        paused = {e for e in wants if (ep := self._view.get(e)) is not None and ep.paused}
        parts: list[str] = []
        args: list[Any] = []
        for endpoint_id, n in wants.items():
            if endpoint_id in paused:
                continue
            if endpoint_id in ordered:
                parts.append(_CLAIM_ORDERED)
                args += [endpoint_id, now]
            else:
                parts.append(_CLAIM_DUE)
                args += [endpoint_id, now, n]
        claimed = _claim_rows(conn, parts, args, now) if parts else []
        counts: dict[str, int] = dict.fromkeys(wants, 0)
        for c in claimed:
            counts[c.endpoint_id] += 1
        next_due: dict[str, int | None] = {}
        for endpoint_id, n in wants.items():
            if endpoint_id in paused:
                next_due[endpoint_id] = None
            # An ordered endpoint may have claimed its head and still have more due.
            elif endpoint_id in ordered or counts[endpoint_id] < n:
                sql = _NEXT_ORDERED if endpoint_id in ordered else _NEXT_DUE
                row = conn.execute(sql, (endpoint_id,)).fetchone()
                next_due[endpoint_id] = row[0] if row else None
        return claimed, next_due

    async def record(self, outcome: Outcome) -> None:
        """Store one attempt and the delivery's new state (batched with others)."""
        await self._writer().run_merged(record_merged, (self, outcome))

    def refresh_endpoint_health(self, endpoint_id: str, **changes: Any) -> None:
        """On the event loop: this daemon's view of an endpoint's health (and disabling)."""
        ep = self._view.get(endpoint_id)
        if ep is None:
            return
        health_only = changes.keys() <= HEALTH_FIELDS
        self._view.put(dataclasses.replace(ep, **changes), health_only=health_only)

    def disable_in_view(self, endpoint_id: str, reason: str) -> None:
        self.refresh_endpoint_health(endpoint_id, active=False, disabled_reason=reason)

    # --- the subscription -------------------------------------------------------------

    def subscribe(self, listener: DueListener) -> None:
        self._listener = listener
        self.offers.receiver = listener.handed_over

    def unsubscribe(self, listener: DueListener) -> None:
        self.offers.close(listener.handed_over)
        if self._listener is listener:
            self._listener = None

    def after_commit(
        self, callback: Callable[[], None], on_rollback: Callable[[], None] | None = None
    ) -> None:
        """From inside a job (the database thread): run `callback` on the event loop once
        the job's transaction commits, or `on_rollback` if its work is undone."""
        self._writer().after_commit(callback, on_rollback)

    def tell_due(self, items: Sequence[tuple[str, int]]) -> None:
        """From inside a job: once it commits, tell the subscriber that deliveries of these
        endpoints are pending from these times on."""
        if items:
            self.after_commit(functools.partial(self._due, items))

    def _due(self, items: Sequence[tuple[str, int]]) -> None:
        if self._listener is not None:
            self._listener.due(items)

    def _put_endpoint(self, ep: Endpoint, *, tell: bool) -> None:
        """After the commit that stored `ep`: this daemon's view, then the subscriber."""
        self._view.put(ep)
        if tell and self._listener is not None:
            self._listener.endpoint_changed(ep.id)

    def _drop_endpoint(self, endpoint_id: str) -> None:
        """After the commit that deleted the endpoint."""
        self._view.drop(endpoint_id)
        if self._listener is not None:
            self._listener.endpoint_deleted(endpoint_id)

    def offer(self, endpoint_id: str, room: int) -> None:
        self.offers.set(endpoint_id, room)

    def offer_budget(self, free: int | None) -> None:
        self.offers.budget(free)

    # --- the daemon -------------------------------------------------------------------

    def join(self, member: Member, in_flight: Callable[[], int]) -> None:
        self._member = member
        self._in_flight = in_flight

    async def cluster(self) -> list[DaemonInfo]:
        # One daemon per SQLite file: this one, alive as it answers.
        return [DaemonInfo(self._member, now_ms(), self._in_flight())]

    async def reconfigure(self, config: Config) -> list[str]:
        """Nothing of a reloaded config is the SQLite store's (`database` is restart-only,
        `cluster` is for PostgreSQL)."""
        return []

    def write_stats(self) -> WriteStats | None:
        w = self.writer
        if w is None:  # closed: the same buckets, empty
            return WriteStats(0, 0.0, 0.0, COMMIT_BUCKETS, (0,) * (len(COMMIT_BUCKETS) + 1))
        return WriteStats(w.commits, w.busy_s, w.commit_s, COMMIT_BUCKETS, tuple(w.commit_counts))

    # --- helpers --------------------------------------------------------------------

    async def _page(
        self,
        table: str,
        cols: str,
        where: list[str],
        args: list[Any],
        cursor: str | None,
        limit: int,
    ) -> tuple[list[Any], str | None]:
        where = list(where)
        args = list(args)
        if cursor:
            where.append("seq < ?")
            args.append(decode_cursor(cursor))
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        async with self._read.execute(
            f"SELECT {cols} FROM {table} {clause} ORDER BY seq DESC LIMIT ?",
            (*args, limit + 1),
        ) as cur:
            rows = list(await cur.fetchall())
        nxt = None
        if len(rows) > limit:
            rows = rows[:limit]
            nxt = encode_cursor(rows[-1][-1])
        return rows, nxt


# The claim's choice of deliveries per endpoint. Ordered: strictly in publish order, only
# the oldest pending delivery, if it is due.
_CLAIM_ORDERED = (
    "SELECT id FROM (SELECT id, next_attempt_at FROM deliveries "
    "WHERE endpoint_id=? AND status='pending' ORDER BY seq LIMIT 1) "
    "WHERE next_attempt_at<=?"
)
_CLAIM_DUE = (
    "SELECT id FROM (SELECT id FROM deliveries WHERE endpoint_id=? AND "
    "status='pending' AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT ?)"
)
# When an endpoint that got less than it asked for next has something due.
_NEXT_ORDERED = (
    "SELECT next_attempt_at FROM deliveries WHERE endpoint_id=? AND "
    "status='pending' ORDER BY seq LIMIT 1"
)
_NEXT_DUE = "SELECT MIN(next_attempt_at) FROM deliveries WHERE endpoint_id=? AND status='pending'"


def _claim_rows(
    conn: sqlite3.Connection, parts: list[str], args: list[Any], now: int
) -> list[Claimed]:
    """Claim the deliveries the `parts` choose: one row holding every claimed delivery
    with its event as JSON, then one statement to mark them, two steps however many are
    claimed (see store/batches.py on why steps per row are expensive here)."""
    row = conn.execute(claim_select(parts), args).fetchone()
    rows = orjson.loads(row[0]) if row and row[0] else []
    if rows:
        conn.execute(MARK_DELIVERING, (now, orjson.dumps([r[0] for r in rows])))
    events: dict[str, Event] = {}
    claimed: list[Claimed] = []
    for r in rows:
        event = events.get(r[7])
        if event is None:
            event = events[r[7]] = Event(
                r[7], r[8], r[9], bytes.fromhex(r[10]), r[11], r[12], r[13], traceparent=r[14]
            )
        claimed.append(
            Claimed(
                delivery_id=r[0],
                endpoint_id=r[1],
                event=event,
                attempt_count=r[2],
                failures=r[3],
                format_index=r[4],
                manual=bool(r[5]),
                resume_at=r[6],
                had_failures=r[2] > 0,
            )
        )
    return claimed


def _split_sql(script: str) -> list[str]:
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") or not stripped:
            continue
        current.append(line)
        if stripped.endswith(";"):
            statements.append("\n".join(current))
            current = []
    if current:
        statements.append("\n".join(current))
    return statements


def _create_private(path: str) -> None:
    """Create the database file with mode 0600 before SQLite does (which would use 0644)."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except FileExistsError:
        pass


def _restrict_files(path: str) -> None:
    """SQLite creates -wal and -shm with the database file's mode; make sure of 0600."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


if TYPE_CHECKING:

    def _is_a_store(store: SQLiteStore) -> Store:  # mypy checks that SQLiteStore is a Store
        return store
