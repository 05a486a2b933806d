"""Endpoint and delivery rows to webhookd's objects, the same for every backend: both
schemas store these columns in the same order and the same encodings (JSON as text
exactly as the API gave it, integer milliseconds), so one decoder serves both. No
database access here; each backend's rows.py adds what differs (column types, writes).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from webhookd import jsonio
from webhookd.signing import SignatureSpec
from webhookd.store.models import (
    BUILTIN_EVENT_TYPES,
    Conflict,
    Delivery,
    Endpoint,
    EndpointTLS,
    Event,
    EventType,
    NewEvent,
    PreviousSecret,
)

if TYPE_CHECKING:
    from webhookd.config import EventTypeDecl

ENDPOINT_COLS = (
    "id, url, tenant, description, metadata, events, active, disabled_reason, secret, "
    "previous_secrets, signature, format, headers, delay_s, rate_limit_per_s, max_in_flight, "
    "ordered, last_success_at, failing_since, created_at, updated_at, proxy, tls, paused, "
    "auth, filter, channels, seq"
)
# Both backends read events in this order; `seq` last, as the list cursors need.
EVENT_COLS = (
    "id, type, tenant, payload, deliver_at, created_at, channels, traceparent, "
    "payload_erased_at, seq"
)
EVENT_TYPE_COLS = "name, description, source, created_at, schema, example"
# Endpoint fields kept as JSON text where NULL means "none" (not an empty value).
NULLABLE_JSON_FIELDS = ("tls", "auth", "filter", "channels")
DELIVERY_COLS = (
    "id, event_id, event_type, endpoint_id, tenant, status, attempt_count, "
    "next_attempt_at, created_at, updated_at, seq"
)


def endpoint_from_row(row: Sequence[Any]) -> Endpoint:
    fmt = orjson.loads(row[11])
    sig = orjson.loads(row[10])
    return Endpoint(
        id=row[0],
        url=row[1],
        tenant=row[2],
        description=row[3],
        metadata=orjson.loads(row[4]),
        events=tuple(orjson.loads(row[5])),
        active=bool(row[6]),
        disabled_reason=row[7],
        secret=row[8],
        previous_secrets=tuple(
            PreviousSecret(secret=p["secret"], expires_at=p["expires_at"])
            for p in orjson.loads(row[9])
        ),
        signature=SignatureSpec(
            scheme=sig.get("scheme", "standard"),
            header=sig.get("header"),
            timestamp_header=sig.get("timestamp_header"),
            algorithm=sig.get("algorithm", "hmac-sha256"),
        ),
        formats=tuple(fmt) if isinstance(fmt, list) else (fmt,),
        format_is_list=isinstance(fmt, list),
        headers=orjson.loads(row[12]),
        delay_s=row[13],
        rate_limit_per_s=row[14],
        max_in_flight=row[15],
        ordered=bool(row[16]),
        last_success_at=row[17],
        failing_since=row[18],
        created_at=row[19],
        updated_at=row[20],
        proxy=row[21],
        tls=tls_from_json(row[22]),
        paused=bool(row[23]),
        auth=None if row[24] is None else orjson.loads(row[24]),
        filter=None if row[25] is None else orjson.loads(row[25]),
        channels=None if row[26] is None else tuple(orjson.loads(row[26])),
    )


def tls_from_json(text: str | None) -> EndpointTLS | None:
    if text is None:
        return None
    doc = orjson.loads(text)
    return EndpointTLS(
        client_cert=doc.get("client_cert"), client_key=doc.get("client_key"), ca=doc.get("ca")
    )


def event_from_row(row: Sequence[Any]) -> Event:
    """An event from EVENT_COLS (the payload as bytes, or a buffer of them)."""
    return Event(
        id=row[0],
        type=row[1],
        tenant=row[2],
        payload_json=bytes(row[3]),
        deliver_at=row[4],
        created_at=row[5],
        channels=None if row[6] is None else tuple(orjson.loads(row[6])),
        traceparent=row[7],
        payload_erased_at=row[8],
        seq=row[9],
    )


def event_type_from_row(row: Sequence[Any]) -> EventType:
    # jsonio: an example's integers beyond 64 bits come back exact, as the API took them.
    return EventType(
        name=row[0],
        description=row[1],
        source=row[2],
        created_at=row[3],
        schema=None if row[4] is None else jsonio.loads(row[4]),
        example=None if row[5] is None else jsonio.loads(row[5]),
    )


def event_type_row(et: EventType) -> tuple[Any, ...]:
    """An event type's values in EVENT_TYPE_COLS order."""
    return (
        et.name,
        et.description,
        et.source,
        et.created_at,
        None if et.schema is None else jsonio.dumps(et.schema).decode(),
        None if et.example is None else jsonio.dumps(et.example).decode(),
    )


def declared_rows(declared: Iterable[EventTypeDecl], now: int) -> list[tuple[Any, ...]]:
    """The rows of the built-in types and the config's, as sync_event_types writes them."""
    types = [EventType(n, d, "builtin", now) for n, d in BUILTIN_EVENT_TYPES.items()]
    types += [
        EventType(d.name, d.description, "config", now, schema=d.schema, example=d.example)
        for d in declared
    ]
    return [event_type_row(et) for et in types]


def check_changeable(name: str, source: str, verb: str) -> None:
    """Conflict unless the type was made through the API (built-in and config types are
    changed only by a new version or the config file)."""
    if source == "builtin":
        raise Conflict(f"{name} is built into webhookd and cannot be {verb}")
    if source == "config":
        where = "remove it there" if verb == "deleted" else "change it there"
        raise Conflict(f"{name} is declared in the config file; {where} and reload")


def stored_event(ev: NewEvent, seq: int, now: int) -> tuple[Event, tuple[Any, ...]]:
    """A new event as published at `now`, and its row for both backends' inserts, in the
    column order (seq, id, type, tenant, payload, body_hash, deliver_at, created_at,
    channels, traceparent)."""
    event = Event(
        id=ev.id,
        type=ev.type,
        tenant=ev.tenant,
        payload_json=ev.payload_json,
        deliver_at=ev.deliver_at,
        created_at=now,
        seq=seq,
        channels=ev.channels,
        traceparent=ev.traceparent,
    )
    row = (
        seq,
        ev.id,
        ev.type,
        ev.tenant,
        ev.payload_json,
        ev.body_hash,
        ev.deliver_at,
        now,
        json_or_null(ev.channels),
        ev.traceparent,
    )
    return event, row


def repeat_conflict(prior: Event, event_id: str, index: int, batch: bool) -> Conflict:
    """Why an event id chosen again cannot be published: its first use had another body,
    or its payload was erased since (then no body can be compared, nor republished)."""
    where = f" (events[{index}])" if batch else ""
    if prior.payload_erased_at is not None:
        return Conflict(
            f"event id {event_id}{where} was already used, and its payload has been erased; "
            "publish with a new id"
        )
    return Conflict(f"event id {event_id}{where} was already used with a different body")


def json_or_null(value: Any) -> str | None:
    """A nullable JSON column's text."""
    return None if value is None else orjson.dumps(value).decode()


def delivery_from_row(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        event_id=row[1],
        event_type=row[2],
        endpoint_id=row[3],
        tenant=row[4],
        status=row[5],
        attempt_count=row[6],
        next_attempt_at=row[7] if row[5] == "pending" else None,
        created_at=row[8],
        updated_at=row[9],
    )
