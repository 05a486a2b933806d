"""The PostgreSQL store: the Store interface on a database several daemons share.

A pool of autocommit connections (webhookd/store/postgres/db.py): a statement that is
its own transaction runs as is, a change of several statements runs in `transaction()`.
Every read the API makes of what a caller asked for goes to the database, so any daemon
answers with what is committed. The endpoints and the event-type catalog are also kept in
memory (this daemon's view, for the publish fan-out and the dispatcher's hot path):
loaded at open, updated after each change this daemon commits, reloaded when another
daemon's change is announced on the endpoints channel, and whole again after every
(re)connection of the LISTEN connection.

The dispatcher's side is delegated: claims.py (claims within every limit over all
daemons, releases), outcomes.py (the fenced, group-committed outcome writer),
cluster.py (heartbeat, reaper, the listing) and wakeups.py (the LISTEN connection and
the notices that wake the other daemons).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from webhookd.config import Config, EventTypeDecl
from webhookd.matching import routed
from webhookd.store.interface import DaemonInfo, DueListener, Member, WriteStats
from webhookd.store.models import (
    ERASED_RETRY,
    PAUSED_RETRY,
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
from webhookd.store.postgres import endpoints as ep_sql
from webhookd.store.postgres import erasure, reads, wakeups
from webhookd.store.postgres import publish as pub
from webhookd.store.postgres.claims import Claims
from webhookd.store.postgres.cluster import Cluster
from webhookd.store.postgres.console import ConsoleQueries
from webhookd.store.postgres.db import Conn, Database
from webhookd.store.postgres.migrate import migrate
from webhookd.store.postgres.outcomes import Outcomes
from webhookd.store.postgres.rows import DELIVERY_COLS, delivery_from_row
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.store.interface import Store

log = logging.getLogger("webhookd.store")

# How long the readiness write may take before the check says no.
PROBE_TIMEOUT_S = 2.0
# How often a read of the catalog is tried again when this daemon changed it meanwhile.
VIEW_READS = 5
# A publish that lost a race on an event id to another daemon is run again this often.
PUBLISH_TRIES = 3


class PostgresStore(ConsoleQueries):
    # A claimed row takes one of its endpoint's numbered slots (claims.py): the limit holds
    # for all daemons, and the dispatcher claims nothing ahead (interface.Store).
    claims_hold_slots = True

    def __init__(
        self,
        dsn: str,
        *,
        lease_s: float = 90.0,
        heartbeat_s: float = 10.0,
        default_limit: int = 10,
    ) -> None:
        """`dsn`: a libpq URI or key/value string. `lease_s`: how long a claim holds (a
        dead daemon's claims are pending again within it); `heartbeat_s`: how often this
        daemon says it is alive; `default_limit`: max_in_flight of endpoints without one."""
        self.db = Database(dsn)
        self.member = Member.this_process()
        self._endpoints: dict[str, Endpoint] = {}
        self._event_types: dict[str, EventType] = {}
        self._listener: DueListener | None = None
        # Changes this daemon made to its view, counted, and the count at each
        # endpoint's last one; changes to the catalog, counted (see reload_view).
        self._view_changes = 0
        self._touched: dict[str, int] = {}
        self._catalog_changes = 0
        m = self.member
        self.claims = Claims(self.db, m.id, lease_s=lease_s, default_limit=default_limit)
        self.outcomes = Outcomes(self.db, m.id, on_health=self._health_changed)
        self._cluster = Cluster(
            self.db, m, lease_s=lease_s, heartbeat_s=heartbeat_s, on_reaped=self.tell_due
        )
        self.listener = wakeups.Listener(
            self.db,
            m.id,
            self.tell_due,
            channels={
                ep_sql.ENDPOINTS_CHANNEL: self._endpoint_notice,
                erasure.CANCELLED_CHANNEL: self._cancelled_notice,
            },
            on_connected=self.reload_view,
        )
        self._probe: asyncio.Task[str | None] | None = None

    # --- lifecycle and the daemon ----------------------------------------------------

    async def open(self) -> None:
        await self.db.open()
        try:
            conn = await self.db.connect()
            async with conn:
                await migrate(conn)
            await self.reload_view()
            await self._cluster.start()
        except BaseException:
            await self._cluster.stop()
            await self.db.close()
            raise
        self.outcomes.start()
        self.listener.start()

    async def close(self) -> None:
        """Write the queued outcomes, give back this daemon's remaining claims and leave
        the cluster, then close every connection."""
        await self.listener.stop()
        await self.outcomes.close()
        try:
            await self._cluster.leave()
        except StorageError as exc:
            # The reaper of another daemon (or this one's next start) gives them back.
            log.warning(
                "could not give back this daemon's claims on leaving",
                extra={"event": "leave_failed", "error": str(exc)},
            )
        if self._probe is not None and not self._probe.done():
            self._probe.cancel()
        await self.db.close()

    def join(self, member: Member, in_flight: Callable[[], int]) -> None:
        self.member = member
        self.claims.member_id = member.id
        self.outcomes.member_id = member.id
        self.listener.member_id = member.id
        self._cluster.member = member
        self._cluster.in_flight = in_flight

    async def cluster(self) -> list[DaemonInfo]:
        return await self._cluster.daemons()

    async def reconfigure(self, config: Config) -> list[str]:
        """A reload applies at once: delivery.max_in_flight_per_endpoint (the limit of
        endpoints without their own, in the next claim), cluster.lease_s (the lease of the
        next claims, and how long a silent daemon is taken for alive) and
        cluster.heartbeat_s (the next beat). The lease follows delivery.timeout_s, which
        the dispatcher applies live too: keeping the old lease could leave it shorter than
        a request. Claims already made keep their lease."""
        self.claims.default_limit = config.delivery.max_in_flight_per_endpoint
        self.claims.lease_ms = int(config.cluster.lease_s * 1000)
        self._cluster.configure(config.cluster.lease_s, config.cluster.heartbeat_s)
        return []

    async def write_problem(self, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
        """A real write (the write_probe row rewritten and committed). Concurrent checks
        share the write under way."""
        probe = self._probe
        if probe is None or probe.done():
            probe = self._probe = asyncio.get_running_loop().create_task(
                self._probe_write(), name="webhookd-write-probe"
            )
        try:
            return await asyncio.wait_for(asyncio.shield(probe), timeout_s)
        except TimeoutError:
            return f"storage cannot write: no write committed within {timeout_s:g} s"

    async def _probe_write(self) -> str | None:
        try:
            async with self.db.connection() as conn:
                await conn.execute(
                    "INSERT INTO write_probe (id, written_at) VALUES (1, %s) "
                    "ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at",
                    (now_ms(),),
                )
        except StorageError as exc:
            return str(exc)
        return None

    def write_stats(self) -> WriteStats | None:
        return None

    # --- the view and the subscription -------------------------------------------------

    async def reload_catalog(self) -> None:
        async with self.db.connection() as conn:
            await self._load_catalog(conn)

    async def _load_catalog(self, conn: Conn) -> None:
        # A type this daemon adds or removes while the catalog is read may be missing
        # from what is read: then read it again.
        for _ in range(VIEW_READS):
            start = self._catalog_changes
            types = await ep_sql.load_event_types(conn)
            if self._catalog_changes == start:
                self._event_types = types
                return

    async def reload_view(self, endpoint_id: str | None = None) -> None:
        """Read the view again from the database: one endpoint, or (None) all of them and
        the event-type catalog; tell the subscriber what changed. An endpoint this
        daemon changes while it is read keeps its newer state."""
        start = self._view_changes
        async with self.db.connection() as conn:
            if endpoint_id is not None:
                found = await ep_sql.find_endpoints(conn, [endpoint_id])
                ids = {endpoint_id}
            else:
                found = await ep_sql.load_endpoints(conn)
                ids = set(self._endpoints) | set(found)
                await self._load_catalog(conn)
        for eid in ids:
            if self._touched.get(eid, -1) > start:
                continue
            ep = found.get(eid)
            if ep is None:
                self._forget(eid)
            elif self._endpoints.get(eid) != ep:
                self._endpoints[eid] = ep
                if self._listener is not None:
                    self._listener.endpoint_changed(eid)

    def _touch(self, endpoint_id: str) -> None:
        """Note a change this daemon made to its view (see reload_view)."""
        self._view_changes += 1
        self._touched[endpoint_id] = self._view_changes

    def _forget(self, endpoint_id: str) -> None:
        if self._endpoints.pop(endpoint_id, None) is not None and self._listener is not None:
            self._listener.endpoint_deleted(endpoint_id)

    def refresh_view(self, endpoint_id: str, **changes: Any) -> None:
        ep = self._endpoints.get(endpoint_id)
        if ep is not None:
            self._touch(endpoint_id)
            self._endpoints[endpoint_id] = dataclasses.replace(ep, **changes)

    def _changed(self, ep: Endpoint) -> Endpoint:
        self._touch(ep.id)
        self._endpoints[ep.id] = ep
        if self._listener is not None:
            self._listener.endpoint_changed(ep.id)
        return ep

    def tell_due(self, items: Iterable[tuple[str, int]]) -> None:
        items = list(items)
        if items and self._listener is not None:
            self._listener.due(items)

    async def _endpoint_notice(self, payload: str) -> None:
        """Another daemon changed an endpoint ("<daemon> <endpoint id>") or the event-type
        catalog ("<daemon> ")."""
        sender, _, endpoint_id = payload.partition(" ")
        if sender == self.member.id:
            return  # this daemon's own change: its view has it already
        if endpoint_id:
            await self.reload_view(endpoint_id)
        else:
            await self.reload_catalog()

    def _health_changed(self, endpoint_id: str, changes: dict[str, Any]) -> None:
        self.refresh_view(endpoint_id, **changes)

    def subscribe(self, listener: DueListener) -> None:
        self._listener = listener

    def unsubscribe(self, listener: DueListener) -> None:
        if self._listener is listener:
            self._listener = None

    def offer(self, endpoint_id: str, room: int) -> None:
        """No hand-over on a shared database: another daemon may have the room."""

    def offer_budget(self, free: int | None) -> None:
        """See offer."""

    # --- event types -------------------------------------------------------------------

    async def sync_event_types(self, declared: Iterable[EventTypeDecl]) -> None:
        now = now_ms()
        async with self.db.transaction() as conn:
            await ep_sql.sync_event_types(conn, declared, now)
            await ep_sql.notify_changed(conn, self.member.id)
        await self.reload_catalog()

    def has_event_type(self, name: str) -> bool:
        return name in self._event_types

    def event_type(self, name: str) -> EventType | None:
        return self._event_types.get(name)

    async def list_event_types(self) -> list[EventType]:
        await self.reload_catalog()
        return sorted(self._event_types.values(), key=lambda e: e.name)

    async def create_event_type(
        self,
        name: str,
        description: str,
        *,
        schema: dict[str, Any] | None = None,
        example: dict[str, Any] | None = None,
    ) -> EventType:
        et = EventType(name, description, "api", now_ms(), schema=schema, example=example)
        async with self.db.transaction() as conn:
            await ep_sql.create_event_type(conn, et)
            await ep_sql.notify_changed(conn, self.member.id)
        self._catalog_changes += 1
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
        changed = EventType(name, description, "api", 0, schema=schema, example=example)
        async with self.db.transaction() as conn:
            stored = await ep_sql.update_event_type(conn, changed)
            await ep_sql.notify_changed(conn, self.member.id)
        # This daemon's view keeps the objects given (its compiled schema is theirs).
        et = dataclasses.replace(stored, schema=schema, example=example)
        self._catalog_changes += 1
        self._event_types[name] = et
        return et

    async def delete_event_type(self, name: str) -> None:
        async with self.db.transaction() as conn:
            await ep_sql.delete_event_type(conn, name)
            await ep_sql.notify_changed(conn, self.member.id)
        self._catalog_changes += 1
        self._event_types.pop(name, None)

    # --- endpoints ---------------------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._endpoints.get(endpoint_id)

    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints.values())

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        async with self.db.connection() as conn:
            return await ep_sql.fetch_endpoint(conn, endpoint_id)

    async def list_endpoints(
        self, *, tenant: Any = ..., active: bool | None = None, cursor: str | None, limit: int
    ) -> Page:
        async with self.db.connection() as conn:
            return await reads.list_endpoints(conn, tenant, active, cursor, limit)

    async def create_endpoint(self, fields: Mapping[str, Any]) -> Endpoint:
        async with self.db.transaction() as conn:
            ep = await ep_sql.create_endpoint(conn, fields, now_ms())
            await ep_sql.notify_changed(conn, self.member.id, ep.id)
        return self._changed(ep)

    async def update_endpoint(self, endpoint_id: str, changes: Mapping[str, Any]) -> Endpoint:
        async with self.db.transaction() as conn:
            ep = await ep_sql.update_endpoint(conn, endpoint_id, changes, now_ms())
            await ep_sql.notify_changed(conn, self.member.id, ep.id)
        return self._changed(ep)

    async def delete_endpoint(self, endpoint_id: str) -> None:
        async with self.db.transaction() as conn:
            await ep_sql.delete_endpoint(conn, endpoint_id, now_ms())
            await ep_sql.notify_changed(conn, self.member.id, endpoint_id)
        self._touch(endpoint_id)
        self._forget(endpoint_id)

    async def rotate_secret(
        self,
        endpoint_id: str,
        new_secret: str,
        grace_s: float,
        *,
        signature: Mapping[str, str] | None = None,
    ) -> Endpoint:
        async with self.db.transaction() as conn:
            ep = await ep_sql.rotate_secret(
                conn, endpoint_id, new_secret, grace_s, now_ms(), signature=signature
            )
            await ep_sql.notify_changed(conn, self.member.id, ep.id)
        return self._changed(ep)

    async def recover(self, endpoint_id: str, since: int, until: int | None) -> int:
        now = now_ms()
        async with self.db.transaction() as conn:
            count = await ep_sql.recover(conn, endpoint_id, since, until, now)
            if count:
                await wakeups.notify_due(conn, self.member.id, [(endpoint_id, now)])
        if count:
            self.tell_due([(endpoint_id, now)])
        return count

    async def endpoint_stats(self, endpoint_id: str, since_24h: int) -> dict[str, Any]:
        async with self.db.connection() as conn:
            return await ep_sql.endpoint_stats(conn, endpoint_id, since_24h)

    def disable_in_view(self, endpoint_id: str, reason: str) -> None:
        self.refresh_view(endpoint_id, active=False, disabled_reason=reason)

    # --- events ------------------------------------------------------------------------

    async def publish(self, events: Sequence[NewEvent]) -> list[PublishResult]:
        for attempt in range(PUBLISH_TRIES):
            try:
                async with self.db.transaction() as conn:
                    results = await pub.publish(
                        conn, events, self._fan_out, self.member.id, now_ms()
                    )
                break
            except Exception as exc:
                if attempt + 1 < PUBLISH_TRIES and ep_sql.is_unique_violation(
                    exc, pub.EVENTS_ID_INDEX
                ):
                    continue  # another daemon stored one of these ids meanwhile: look again
                if ep_sql.is_unique_violation(exc, pub.EVENTS_ID_INDEX):
                    raise StorageError("storage cannot write: event ids kept racing") from None
                raise
        self.tell_due(d for r in results for d in r.due)
        return results

    def _fan_out(self, ev: NewEvent, created_at: int) -> list[Endpoint]:
        if ev.only_endpoint is not None:
            ep = self._endpoints.get(ev.only_endpoint)
            return [ep] if ep else []
        return routed(self._endpoints.values(), ev, created_at)

    async def get_event(self, event_id: str, tenant: Any = ...) -> tuple[Event, list[Delivery]]:
        async with self.db.connection() as conn:
            return await reads.get_event(conn, event_id, tenant)

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
        async with self.db.connection() as conn:
            return await reads.list_events(conn, event_type, tenant, since, until, cursor, limit)

    # --- deliveries --------------------------------------------------------------------

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
        filters = {
            "endpoint_id": endpoint_id,
            "event_id": event_id,
            "event_type": event_type,
            "status": status,
            "tenant": tenant,
            "since": since,
            "until": until,
        }
        async with self.db.connection() as conn:
            return await reads.list_deliveries(conn, filters, cursor, limit)

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[Attempt]]:
        async with self.db.connection() as conn:
            return await reads.get_delivery(conn, delivery_id)

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        now = now_ms()
        async with self.db.transaction() as conn:
            cur = await conn.execute(
                "SELECT d.status, d.endpoint_id, e.active, e.deleted_at, e.paused "
                "FROM deliveries d "
                "LEFT JOIN endpoints e ON e.id = d.endpoint_id WHERE d.id = %s FOR UPDATE OF d",
                (delivery_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no delivery with id {delivery_id}")
            # A statement of its own, after the lock: an erasure that cancelled this
            # delivery meanwhile has committed, and this snapshot sees it.
            cur = await conn.execute(
                "SELECT e.payload_erased_at FROM deliveries d JOIN events e "
                "ON e.seq = d.event_seq WHERE d.id = %s",
                (delivery_id,),
            )
            erased = await cur.fetchone()
            if erased is not None and erased[0] is not None:
                raise Conflict(ERASED_RETRY)
            _check_retry(*row)
            cur = await conn.execute(
                "UPDATE deliveries SET manual = true, "
                "resume_at = CASE WHEN status = 'pending' THEN next_attempt_at END, "
                "status = 'pending', next_attempt_at = %s, updated_at = %s WHERE id = %s "
                f"RETURNING {DELIVERY_COLS}",
                (now, now, delivery_id),
            )
            updated = await cur.fetchone()
            assert updated is not None
            await wakeups.notify_due(conn, self.member.id, [(row[1], now)])
        self.tell_due([(row[1], now)])
        return delivery_from_row(updated)

    # --- the dispatcher's side (delegated to claims.py and outcomes.py) ------------------

    async def requeue_interrupted(self) -> int:
        """This daemon's claims (none at startup), and those whose lease ran out or whose
        daemon is dead (the reaper's work, which also runs every few seconds), become due
        now; another live daemon's are kept."""
        now = now_ms()
        async with self.db.transaction() as conn:
            cur = await conn.execute(_REQUEUE_MINE, {"now": now, "me": self.member.id})
            mine = [(r[0], now) for r in await cur.fetchall()]
            await wakeups.notify_due(conn, self.member.id, mine)
        self.tell_due(mine)
        return len(mine) + await self._cluster.reap()

    async def next_due(self, endpoint_ids: Iterable[str]) -> dict[str, int | None]:
        return await self.claims.next_due(endpoint_ids)

    async def claim(
        self, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        return await self.claims.claim(wants, now)

    async def record(self, outcome: Outcome) -> None:
        await self.outcomes.record(outcome)

    async def release(self, claimed: Sequence[Claimed], status: str = "pending") -> None:
        await self.claims.release(claimed, status)

    # --- maintenance -------------------------------------------------------------------

    async def purge_before(self, cutoff: int, limit: int) -> int:
        """Delete up to `limit` old events (none with unfinished deliveries), with their
        deliveries and attempts, in batches of PURGE_BATCH rows: each batch is its own
        short transaction, and rows another daemon is purging are skipped, not waited for."""
        total = 0
        while total < limit:
            n = min(PURGE_BATCH, limit - total)
            async with self.db.connection() as conn:
                cur = await conn.execute(_PURGE, (cutoff, n))
                done = cur.rowcount
            total += done
            if done < n:
                break
        return total

    async def erase_payload(self, event_id: str, tenant: Any = ...) -> Event:
        async with self.db.transaction() as conn:
            event, cancelled = await erasure.erase_event(
                conn, self.member.id, event_id, tenant, now_ms()
            )
        self._tell_cancelled(cancelled)
        return event

    async def erase_old_payloads(
        self, cutoff: int, after: tuple[int, int], limit: int
    ) -> PayloadSweep:
        async with self.db.transaction() as conn:
            return await erasure.sweep(conn, cutoff, after, limit, now_ms())

    async def _cancelled_notice(self, payload: str) -> None:
        """Another daemon erased a payload and cancelled these deliveries: this daemon's
        claims among them are not sent."""
        self._tell_cancelled(erasure.parse_cancelled(payload, self.member.id))

    def _tell_cancelled(self, items: Sequence[tuple[str, str]]) -> None:
        if items and self._listener is not None:
            self._listener.deliveries_cancelled(items)

    async def backlog(self, now: int) -> tuple[int, int | None]:
        active = [e.id for e in self._endpoints.values() if e.active and not e.paused]
        async with self.db.connection() as conn:
            return await reads.backlog(conn, active, now)


_REQUEUE_MINE = (
    "UPDATE deliveries SET status = 'pending', next_attempt_at = %(now)s, slot = NULL, "
    "lease_owner = NULL, lease_token = NULL, lease_until = NULL, updated_at = %(now)s "
    "WHERE status = 'delivering' AND lease_owner = %(me)s RETURNING endpoint_id"
)
# Retention deletes in batches this size: a batch's locks are held for milliseconds.
PURGE_BATCH = 5000
_PURGE = (
    "DELETE FROM events WHERE seq = ANY(ARRAY(SELECT e.seq FROM events e "
    "WHERE e.created_at < %s AND NOT EXISTS (SELECT 1 FROM deliveries d "
    "WHERE d.event_seq = e.seq AND d.status IN ('pending', 'delivering')) "
    "ORDER BY e.created_at LIMIT %s FOR UPDATE OF e SKIP LOCKED))"
)


def _check_retry(
    status: str, endpoint_id: str, active: bool | None, deleted: int | None, paused: bool | None
) -> None:
    if active is None or deleted is not None:
        raise Conflict("the endpoint of this delivery was deleted; it cannot be retried")
    if not active:
        raise Conflict(
            "the endpoint of this delivery is disabled; re-enable it with "
            'PATCH {"active": true} or use recover'
        )
    if paused:
        raise Conflict(PAUSED_RETRY)
    if status == "delivering":
        raise Conflict("an attempt of this delivery is in progress; try again shortly")


if TYPE_CHECKING:

    def _is_a_store(store: PostgresStore) -> Store:  # mypy checks that this is a Store
        return store
