"""The store's interface: what the API, the dispatcher and the rest of webhookd may ask of a
storage backend, in terms of events, endpoints, deliveries, attempts, claims and outcomes.

Every module outside a backend imports the store's types and errors from here, and holds a
store only as a `Store`. A backend (webhookd/store/sqlite/, webhookd/store/postgres/) is
chosen once, by the composition root, through `webhookd.store.open_store`.

Conventions every backend keeps:

- Times are integer milliseconds since the epoch (`*_at`, `now`, `due_ms`).
- A write method returns once its change is committed (durable), or raises: StorageError
  (storage cannot write now; nothing of the call happened), NotFound, Conflict.
- `tenant=...` (Ellipsis) means "any tenant"; None is the tenant of events without one.
- Synchronous reads (`endpoint`, `endpoints`, `has_event_type`, `event_type`) answer from
  this daemon's view, kept current by the backend: on a database several daemons share, it
  may lag another daemon's change by the time that change's notification takes to arrive. The
  API's reads of what a caller asked for are `async` and may go to the database.
- After a change commits, the backend tells its one subscriber (the dispatcher) what
  became due, on the event loop (`DueListener`); nothing else wakes the dispatcher.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from webhookd import __version__
from webhookd.config import Config, EventTypeDecl
from webhookd.store.codec import BadCursor
from webhookd.store.console import Chart, ChartBucket, DeliveryQuery, EndpointHealth
from webhookd.store.models import (
    BUILTIN_EVENT_TYPES,
    DELIVERY_STATES,
    FINAL_STATES,
    AmbiguousId,
    Attempt,
    Claimed,
    Conflict,
    Delivery,
    Endpoint,
    EndpointTLS,
    Event,
    EventType,
    NewEvent,
    NotFound,
    Outcome,
    Page,
    PayloadSweep,
    PreviousSecret,
    PublishResult,
    StorageError,
)
from webhookd.timefmt import now_ms

__all__ = [
    "BUILTIN_EVENT_TYPES",
    "DELIVERY_STATES",
    "FINAL_STATES",
    "AmbiguousId",
    "Attempt",
    "BadCursor",
    "Chart",
    "ChartBucket",
    "Claimed",
    "Conflict",
    "DaemonInfo",
    "Delivery",
    "DeliveryQuery",
    "DueListener",
    "Endpoint",
    "EndpointHealth",
    "EndpointTLS",
    "Event",
    "EventType",
    "Member",
    "NewEvent",
    "NotFound",
    "Outcome",
    "Page",
    "PayloadSweep",
    "PreviousSecret",
    "PublishResult",
    "StorageError",
    "Store",
    "WriteStats",
]


@dataclass(frozen=True)
class Member:
    """Who this daemon is, for the cluster listing: one per run of the process."""

    id: str
    host: str
    pid: int
    version: str
    started_at: int

    @classmethod
    def this_process(cls) -> Member:
        """A fresh identity (a uuid4) for this run of this process."""
        return cls(str(uuid.uuid4()), socket.gethostname(), os.getpid(), __version__, now_ms())


@dataclass(frozen=True)
class DaemonInfo:
    """One daemon alive now, as `GET /v1/cluster` lists it."""

    member: Member
    heartbeat_at: int
    in_flight: int


@dataclass(frozen=True)
class WriteStats:
    """The write path's figures for /metrics: transactions committed, seconds spent in
    them and in COMMIT alone, and COMMIT durations counted per bucket (`commit_counts` has
    one more entry than `commit_buckets_s`: everything slower)."""

    transactions: int
    busy_s: float
    commit_s: float
    commit_buckets_s: tuple[float, ...]
    commit_counts: tuple[int, ...]


class DueListener(Protocol):
    """The store's one subscriber (the dispatcher). Every call comes on the event loop,
    after the change it reports has committed, and must not block or raise."""

    def due(self, items: Iterable[tuple[str, int]]) -> None:
        """Deliveries of these endpoints are pending from these times on (ms)."""

    def handed_over(self, claimed: list[Claimed]) -> None:
        """Deliveries a publish claimed for this daemon (see `Store.offer`): it owns them."""

    def endpoint_changed(self, endpoint_id: str) -> None:
        """The endpoint's settings or secret changed: look at it again now."""

    def endpoint_deleted(self, endpoint_id: str) -> None:
        """The endpoint is gone and its unfinished deliveries are cancelled."""

    def deliveries_cancelled(self, items: Sequence[tuple[str, str]]) -> None:
        """These (endpoint id, delivery id) were cancelled while pending or in flight
        (their event's payload was erased): send none of them that has not started."""


class Store(Protocol):
    """A storage backend. See the module docstring for the conventions."""

    @property
    def claims_hold_slots(self) -> bool:
        """Whether a claimed delivery holds one of its endpoint's max_in_flight slots for
        every daemon until its outcome or release is stored (PostgreSQL), rather than the
        dispatcher keeping the limit in memory (SQLite). Then the dispatcher claims no more
        than the free slots (nothing ahead), since a delivery waiting in its queue would
        keep another daemon from sending."""

    # --- lifecycle and the daemon ------------------------------------------------------

    async def open(self) -> None:
        """Connect, bring the schema up to date, load this daemon's view; StorageError if
        the database cannot be opened or is newer than this webhookd."""

    async def close(self) -> None:
        """Finish the writes already queued, then release every connection and thread."""

    def join(self, member: Member, in_flight: Callable[[], int]) -> None:
        """Who this daemon is and how to count its open requests (called before open);
        a shared backend heartbeats them, and cluster() lists them."""

    async def cluster(self) -> list[DaemonInfo]:
        """The daemons alive now sharing this database (on SQLite: this one)."""

    async def reconfigure(self, config: Config) -> list[str]:
        """A reload: apply the new config's settings this backend uses that can change
        while it runs; return the keys of those that changed and apply only after a
        restart (none: an empty list)."""

    async def write_problem(self, timeout_s: float = 2.0) -> str | None:
        """None if a real write committed within `timeout_s`, else why not (readiness)."""

    def write_stats(self) -> WriteStats | None:
        """The write path's figures for /metrics, or None if the backend keeps none."""

    # --- the subscription --------------------------------------------------------------

    def subscribe(self, listener: DueListener) -> None:
        """Make `listener` the one subscriber: from now on it hears, after each commit,
        what became due (publish, batch, retry, recover, test and operational events) and
        which endpoints changed (update, rotate, delete)."""

    def unsubscribe(self, listener: DueListener) -> None:
        """Stop telling `listener` anything; no more hand-overs (offers are withdrawn).
        Hand-overs already committing still settle; their deliveries stay `delivering`
        and are requeued at the next start."""

    def offer(self, endpoint_id: str, room: int) -> None:
        """The subscriber can start `room` more requests to this endpoint now (0: none),
        so a publish may claim that many of its fresh due deliveries in its own
        transaction and hand them over after commit. Optional: a backend may ignore it
        (PostgreSQL does: its claims are shared by several daemons)."""

    def offer_budget(self, free: int | None) -> None:
        """At most `free` deliveries over all endpoints may be handed over until the next
        call (None: each endpoint's offer alone bounds it). A no-op where offer is."""

    # --- event types -------------------------------------------------------------------

    async def sync_event_types(self, declared: Iterable[EventTypeDecl]) -> None:
        """Make the built-in and config-declared types exist (the config's descriptions,
        schemas and examples win; types no longer declared become the API's); committed
        before it returns."""

    def has_event_type(self, name: str) -> bool:
        """Whether the catalog has this type, in this daemon's view."""

    def event_type(self, name: str) -> EventType | None:
        """The type in this daemon's view (None: not in the catalog), for publishing."""

    async def list_event_types(self) -> list[EventType]:
        """The whole catalog, sorted by name."""

    async def create_event_type(
        self,
        name: str,
        description: str,
        *,
        schema: dict[str, Any] | None = None,
        example: dict[str, Any] | None = None,
    ) -> EventType:
        """Add a type (source "api"); Conflict if it exists."""

    async def update_event_type(
        self,
        name: str,
        *,
        description: str,
        schema: dict[str, Any] | None,
        example: dict[str, Any] | None,
    ) -> EventType:
        """Replace an API-created type's description, schema and example (all three: the
        caller checked them together); NotFound, or Conflict for a built-in or a config one."""

    async def delete_event_type(self, name: str) -> None:
        """Remove an API-created type; NotFound, or Conflict for a built-in or a config one."""

    # --- endpoints -----------------------------------------------------------------------

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint in this daemon's view (None: unknown or deleted), for the hot path;
        may lag another daemon's change by the time its notification takes."""

    def endpoints(self) -> Iterable[Endpoint]:
        """A snapshot of every endpoint in this daemon's view (same lag as endpoint())."""

    async def get_endpoint(self, endpoint_id: str) -> Endpoint:
        """The endpoint as stored now; NotFound if it does not exist or was deleted."""

    async def list_endpoints(
        self, *, tenant: Any = ..., active: bool | None = None, cursor: str | None, limit: int
    ) -> Page:
        """A page of endpoints, newest first; BadCursor for a cursor not handed out here."""

    async def create_endpoint(self, fields: Mapping[str, Any]) -> Endpoint:
        """Store a new endpoint from validated API fields (the subscriber hears of it
        with its first due delivery)."""

    async def update_endpoint(self, endpoint_id: str, changes: Mapping[str, Any]) -> Endpoint:
        """Apply validated field changes; deactivating makes its pending deliveries
        `skipped` in the same transaction. NotFound if deleted."""

    async def delete_endpoint(self, endpoint_id: str) -> None:
        """Delete it and cancel its pending and in-flight deliveries, in one transaction."""

    async def rotate_secret(
        self,
        endpoint_id: str,
        new_secret: str,
        grace_s: float,
        *,
        signature: Mapping[str, str] | None = None,
    ) -> Endpoint:
        """Make `new_secret` current; the old one keeps signing for `grace_s` (0: not).
        `signature`, when given, replaces the signature object in the same transaction (a
        rotation to a secret of another algorithm)."""

    async def recover(self, endpoint_id: str, since: int, until: int | None) -> int:
        """`failed` and `skipped` deliveries created in [since, until) become pending, due
        now, with a fresh retry schedule; returns how many. Those of events whose payload
        was erased stay as they are; Conflict when they are all the window holds."""

    async def endpoint_stats(self, endpoint_id: str, since_24h: int) -> dict[str, Any]:
        """{"counts": {status: n}, "success_rate_24h": delivered / finished since
        `since_24h`, or None when nothing finished}."""

    def disable_in_view(self, endpoint_id: str, reason: str) -> None:
        """Show the endpoint disabled in this daemon's view at once, before the outcome
        that disables it is stored, so nothing more starts towards it meanwhile."""

    # --- events --------------------------------------------------------------------------

    async def publish(self, events: Sequence[NewEvent]) -> list[PublishResult]:
        """Commit the events and one delivery per subscribed endpoint, all or nothing;
        an id already used with the same body is an idempotent repeat, with a different
        body a Conflict. Concurrent publishes may share one transaction."""

    async def get_event(self, event_id: str, tenant: Any = ...) -> tuple[Event, list[Delivery]]:
        """The event with its deliveries; NotFound, or AmbiguousId when `tenant` is any
        and several tenants use the id."""

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
        """A page of events, newest first, created in [since, until)."""

    async def erase_payload(self, event_id: str, tenant: Any = ...) -> Event:
        """Erase the event's payload now, in one transaction with the cancelling of its
        pending and in-flight deliveries (the subscriber hears which): the row stays,
        with an empty payload, `payload_erased_at` (an erased one keeps its first) and no
        body hash. Returns once the bytes are gone from the database's files as far as
        the backend can make them so. NotFound, or AmbiguousId as get_event."""

    async def erase_old_payloads(
        self, cutoff: int, after: tuple[int, int], limit: int
    ) -> PayloadSweep:
        """Retention: look at up to `limit` events created before `cutoff` whose payload
        is not erased, after position `after` (created_at, seq) in that order, and erase
        the payloads of those without pending or in-flight deliveries."""

    # --- deliveries ----------------------------------------------------------------------

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
        """A page of deliveries, newest first, matching every filter given."""

    async def get_delivery(self, delivery_id: str) -> tuple[Delivery, list[Attempt]]:
        """The delivery with its attempts in order; NotFound."""

    async def retry_delivery(self, delivery_id: str) -> Delivery:
        """Make it due now for one manual attempt, whatever its state; Conflict if its
        endpoint is deleted or disabled or an attempt is in progress, or its event's
        payload was erased."""

    # --- the dispatcher's side -----------------------------------------------------------

    async def requeue_interrupted(self) -> int:
        """Deliveries this daemon left `delivering` (a crash) become due now; how many."""

    async def next_due(self, endpoint_ids: Iterable[str]) -> dict[str, int | None]:
        """Per endpoint, when its earliest pending delivery is due (None: none pending)."""

    async def claim(
        self, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        """Claim due deliveries (`delivering`, owned by this daemon): at most wants[e] of
        endpoint e, and within its limits (an ordered endpoint: only its oldest pending
        one). Also returns, for each endpoint that got fewer than it asked for or is
        ordered, when its next pending delivery is due (None: nothing pending)."""

    async def record(self, outcome: Outcome) -> None:
        """Store one attempt and its delivery's new state, and the endpoint's health
        (disabling it with `disable_reason`); concurrent outcomes share a transaction.
        A delivery no longer `delivering` (cancelled meanwhile) keeps its state."""

    async def release(self, claimed: Sequence[Claimed], status: str = "pending") -> None:
        """Give claimed deliveries back unattempted: "pending" (due now, keeping an
        earlier due time) or "skipped" (their endpoint was disabled meanwhile)."""

    # --- maintenance ---------------------------------------------------------------------

    async def purge_before(self, cutoff: int, limit: int) -> int:
        """Delete up to `limit` events created before `cutoff` with no pending or
        in-flight delivery, with their deliveries and attempts; returns how many."""

    async def backlog(self, now: int) -> tuple[int, int | None]:
        """(pending deliveries, age in ms of the oldest one that is due, or None)."""

    # --- the console (webhookd/console/; queries in webhookd/store/console.py) ----------

    async def console_deliveries(
        self, query: DeliveryQuery, *, cursor: str | None, limit: int
    ) -> Page:
        """A page of the delivery log, newest first, matching `query`. Bounded work: a page
        walks at most SCAN_BUDGET entries of one index, so it may hold fewer than `limit`
        rows and still have a next_cursor (more may match further back)."""

    async def endpoint_health(
        self, endpoint_ids: Sequence[str], since: int
    ) -> dict[str, EndpointHealth]:
        """Per endpoint: pending deliveries, and delivered and finished ones created since
        `since` (ms); reads that grow with those deliveries, not with the whole log."""

    async def count_deliveries(self, query: DeliveryQuery) -> int:
        """How many deliveries match `query` (exactly: for the console's previews)."""

    async def requeue_deliveries(self, query: DeliveryQuery) -> int:
        """The `failed` and `skipped` deliveries matching `query`, of endpoints that are
        active, become pending, due now, with a fresh retry schedule (as recover does);
        returns how many."""

    async def attempt_chart(
        self,
        *,
        endpoint_id: str | None,
        tenant: Any,
        since: int,
        until: int,
        bucket_ms: int,
    ) -> Chart:
        """Attempts started in [since, until), of one endpoint or all (within `tenant`)."""

    async def change_marker(self) -> tuple[int, int]:
        """Something that grows with every new delivery and every new attempt (for the
        console's live updates: polled, compared, cheap)."""

    async def console_key(self) -> bytes:
        """The key that signs console sessions and portal links: made on first use, then
        the same for every daemon of this database and across restarts."""

    async def revoke_portal(self, tenant: str, at: int) -> None:
        """Every portal link and session of `tenant` issued before `at` (ms) is void."""

    async def portal_revoked_at(self, tenant: str) -> int | None:
        """When the tenant's portal links were last revoked (ms), or None."""
