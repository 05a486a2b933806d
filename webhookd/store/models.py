"""The objects the store hands out and takes in: events, endpoints, deliveries, attempts.

Plain frozen dataclasses with no database in them, so the API and the dispatcher speak
in terms of webhookd's own nouns and a second backend only has to produce the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from webhookd.filters import Filter, compile_stored
from webhookd.signing import SignatureSpec

DELIVERY_STATES = ("pending", "delivering", "delivered", "failed", "skipped", "cancelled")
FINAL_STATES = ("delivered", "failed", "skipped", "cancelled")
BUILTIN_EVENT_TYPES = {
    "webhookd.test": "A test event sent with POST /v1/endpoints/{id}/test.",
    "webhookd.endpoint.disabled": "webhookd disabled an endpoint (gone or failing).",
    "webhookd.delivery.failed": "A delivery gave up after its last retry.",
    "webhookd.delivery.recovered": "A delivery succeeded after failed attempts.",
}


# The Conflict of a manual retry while the delivery's endpoint is paused: "now" cannot be.
PAUSED_RETRY = (
    'the endpoint of this delivery is paused; resume it with PATCH {"paused": false} first'
)


# The Conflict of a manual retry or a recover of a delivery whose event's payload was
# erased: there is nothing left to send (and an empty body must never go out).
ERASED_RETRY = (
    "the payload of this delivery's event was erased; it cannot be sent again "
    "(publish a new event instead)"
)


class StorageError(Exception):
    """The store cannot read or write (disk full, I/O error, database locked too long)."""


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class AmbiguousId(Conflict):
    """An event id looked up across tenants that more than one tenant uses (ids are
    unique per tenant only): the caller has to say which tenant it means."""

    def __init__(self, event_id: str, tenants: list[str | None]) -> None:
        super().__init__(f"event id {event_id} is used by {len(tenants)} tenants")
        self.event_id = event_id
        self.tenants = tenants


@dataclass(frozen=True)
class EventType:
    name: str
    description: str
    source: str  # builtin | config | api
    created_at: int
    # A JSON Schema (draft 2020-12) for the payload, and an example payload; None: none.
    schema: dict[str, Any] | None = None
    example: dict[str, Any] | None = None


@dataclass(frozen=True)
class PreviousSecret:
    secret: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True)
class EndpointTLS:
    """An endpoint's TLS material, as PEM text: a client certificate and its key (mutual
    TLS), and/or a CA bundle trusted for this endpoint instead of the system store."""

    client_cert: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)  # write-only: never shown
    ca: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # Which parts are set, never their text: a key is a secret, and PEM is noise.
        parts = ("client_cert", "client_key", "ca")
        return f"EndpointTLS({', '.join(p for p in parts if getattr(self, p))})"


@dataclass(frozen=True)
class Endpoint:
    id: str
    url: str
    tenant: str | None
    description: str
    metadata: dict[str, str]
    events: tuple[str, ...]
    active: bool
    disabled_reason: str | None
    secret: str = field(repr=False)
    previous_secrets: tuple[PreviousSecret, ...]
    signature: SignatureSpec
    formats: tuple[str, ...]
    format_is_list: bool
    headers: dict[str, str]
    delay_s: float
    rate_limit_per_s: float | None
    max_in_flight: int | None
    ordered: bool
    last_success_at: int | None
    failing_since: int | None
    created_at: int
    updated_at: int
    # http://[user:pass@]host[:port]; overrides delivery.proxy. Out of repr: a password.
    proxy: str | None = field(default=None, repr=False)
    tls: EndpointTLS | None = None
    # Deliveries stay pending, unclaimed, until unpaused (unlike active=False: none skipped).
    paused: bool = False
    # How webhookd authenticates to the receiver, as the API took it ({"type": "basic" |
    # "bearer" | "oauth2", ...}), secrets included: out of repr, write-only in answers.
    auth: dict[str, Any] | None = field(default=None, repr=False)
    # Only events whose envelope matches create deliveries (None: every event).
    filter: dict[str, Any] | None = None
    # Only events published with at least one of these channels (None: every event).
    channels: tuple[str, ...] | None = None

    def signing_secrets(self, now_ms: int) -> list[str]:
        """The current secret first, then rotated-out ones still within their grace."""
        return [self.secret] + [p.secret for p in self.previous_secrets if p.expires_at > now_ms]

    @cached_property
    def compiled_filter(self) -> Filter | None:
        """`filter`, compiled once per endpoint version (every change makes a new object)."""
        return compile_stored(self.filter)


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class Event:
    id: str
    type: str
    tenant: str | None
    payload_json: bytes
    deliver_at: int | None
    created_at: int
    seq: int = 0
    channels: tuple[str, ...] | None = None
    traceparent: str | None = None  # the publisher's W3C trace context, kept for attempts
    payload_erased_at: int | None = None  # set: payload_json is b"" (erased)


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class NewEvent:
    """One event to publish, validated by the caller."""

    id: str
    type: str
    tenant: str | None
    payload_json: bytes
    body_hash: bytes | None  # set when the caller chose the id: idempotency
    deliver_at: int | None
    only_endpoint: str | None = None  # a test event goes to this endpoint alone
    channels: tuple[str, ...] | None = None
    traceparent: str | None = None


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class PublishResult:
    event: Event
    deliveries: int
    created: bool
    delivery_ids: tuple[str, ...] = ()
    due: tuple[tuple[str, int], ...] = ()  # (endpoint id, due ms) of each pending delivery


@dataclass(frozen=True)
class Delivery:
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    tenant: str | None
    status: str
    attempt_count: int
    next_attempt_at: int | None
    created_at: int
    updated_at: int


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class Attempt:
    number: int
    started_at: int
    duration_ms: int
    trigger: str
    format: str
    request_headers: dict[str, str]
    status_code: int | None
    response_headers: dict[str, str]
    response_body: str
    error_kind: str | None
    error_message: str | None


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class Claimed:
    """A delivery the dispatcher now owns, with what it needs to make the request."""

    delivery_id: str
    endpoint_id: str
    event: Event
    attempt_count: int
    failures: int
    format_index: int
    manual: bool
    resume_at: int | None
    had_failures: bool
    # A shared backend's fencing token for this claim (None on SQLite): the outcome and a
    # release carry it back, so a daemon that lost its claim cannot overwrite the next
    # owner's result.
    lease: str | None = None


@dataclass(slots=True)  # built per publish or per attempt: no frozen __setattr__
class Outcome:
    """What one attempt did, and what the delivery and its endpoint become."""

    delivery_id: str
    endpoint_id: str
    attempt: Attempt
    status: str  # pending | delivered | failed | skipped
    next_attempt_at: int | None
    failures: int
    format_index: int
    success: bool
    disable_reason: str | None = None  # disable the endpoint at once ("gone")
    lease: str | None = None  # the claim's (Claimed.lease)


@dataclass(frozen=True, slots=True)
class PayloadSweep:
    """One batch of retention's payload erasure (Store.erase_old_payloads). Positions are
    (created_at, seq) of events, the order the sweep walks them in."""

    erased: int  # payloads erased by this batch
    scanned: int  # events with a payload looked at
    last: tuple[int, int] | None  # the last one looked at; None: nothing left to look at
    held: tuple[int, int] | None  # the first one kept for unfinished deliveries, if any


@dataclass(frozen=True)
class Page:
    data: list[Any]
    next_cursor: str | None
