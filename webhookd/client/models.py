"""The shapes of the API's answers, as TypedDicts: what `webhookd.Client` and
`webhookd.AsyncClient` return. At run time they are plain dicts of the API's JSON, so
they print, compare and serialise as such; the types are for editors and type checkers.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar

T = TypeVar("T")

DeliveryStatus = Literal["pending", "delivering", "delivered", "failed", "skipped", "cancelled"]


class Page(TypedDict, Generic[T]):
    """One page of a list, newest first; pass `next_cursor` back as `cursor` for the next."""

    data: list[T]
    next_cursor: str | None


class PublishResult(TypedDict):
    """An accepted event: its id and how many deliveries it made."""

    id: str
    type: str
    tenant: str | None
    created_at: str
    deliveries: int


class EventIn(TypedDict, total=False):
    """One event of a batch, as `POST /v1/events/batch` takes it."""

    type: str
    payload: dict[str, Any]
    tenant: str | None
    id: str
    deliver_at: str | None
    channels: list[str] | None


class Endpoint(TypedDict, total=False):
    """An endpoint; `secret` only in the answer to its creation."""

    id: str
    url: str
    tenant: str | None
    description: str
    metadata: dict[str, str]
    events: list[str]
    active: bool
    disabled_reason: str | None
    signature: dict[str, str]
    format: str | list[str]
    headers: dict[str, str]
    delay_s: float
    rate_limit_per_s: float | None
    max_in_flight: int
    ordered: bool
    paused: bool
    filter: dict[str, Any] | None
    channels: list[str] | None
    created_at: str
    updated_at: str
    secret: str
    public_key: str  # whpk_…, with the secret, for signature.algorithm ed25519


class Secret(TypedDict):
    secret: str
    public_key: NotRequired[str]  # whpk_…, for signature.algorithm ed25519
    previous_secrets: list[dict[str, str]]  # expires_at (and public_key, for Ed25519 keys)


class TestResult(TypedDict):
    event_id: str
    delivery_id: str


class Stats(TypedDict):
    counts: dict[str, int]
    success_rate_24h: float | None
    in_flight: int
    last_success_at: str | None
    failing_since: str | None


class Attempt(TypedDict):
    """One HTTP attempt of a delivery, exactly as the delivery log keeps it."""

    number: int
    started_at: str
    duration_ms: int
    trigger: Literal["scheduled", "manual"]
    format: str
    request_headers: dict[str, str]
    status_code: int | None
    response_headers: dict[str, str]
    response_body: str
    error_kind: str | None
    error_message: str | None


class Delivery(TypedDict):
    """One event to one endpoint; `attempts` only when read alone (`get_delivery`)."""

    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    tenant: str | None
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: str | None
    created_at: str
    updated_at: str


class DeliveryDetail(Delivery):
    attempts: list[Attempt]


class Event(TypedDict):
    id: str
    type: str
    tenant: str | None
    payload: dict[str, Any] | None  # None once erased
    payload_erased_at: str | None
    deliver_at: str | None
    created_at: str
    channels: NotRequired[list[str]]  # only when the event has channels


class EventDetail(Event):
    deliveries: list[Delivery]


class EventType(TypedDict, total=False):
    name: str
    description: str
    source: str
    created_at: str
    schema: dict[str, Any] | None
    example: dict[str, Any] | None
