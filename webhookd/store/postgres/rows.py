"""PostgreSQL rows to webhookd's objects and back. No database access here.

The column lists end with `seq`, the row key the list cursors are made of."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from webhookd.signing import SignatureSpec
from webhookd.store.models import (
    Attempt,
    Delivery,
    Endpoint,
    EndpointTLS,
    Event,
    EventType,
    PreviousSecret,
)

ENDPOINT_COLS = (
    "id, url, tenant, description, metadata, events, active, disabled_reason, secret, "
    "previous_secrets, signature, format, headers, delay_s, rate_limit_per_s, max_in_flight, "
    "ordered, last_success_at, failing_since, created_at, updated_at, proxy, tls, paused, seq"
)
DELIVERY_COLS = (
    "id, event_id, event_type, endpoint_id, tenant, status, attempt_count, "
    "next_attempt_at, created_at, updated_at, seq"
)
EVENT_COLS = "id, type, tenant, payload, deliver_at, created_at, seq"
EVENT_TYPE_COLS = "name, description, source, created_at"
ATTEMPT_COLS = (
    "number, started_at, duration_ms, trigger, format, request_headers, status_code, "
    "response_headers, response_body, error_kind, error_message"
)
# Endpoint fields stored as JSON text, exactly as the API gave them (key order kept).
_JSON_FIELDS = ("metadata", "headers", "events", "format", "signature", "previous_secrets")


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
        tls=_tls_from_json(row[22]),
        paused=bool(row[23]),
    )


def _tls_from_json(text: str | None) -> EndpointTLS | None:
    if text is None:
        return None
    doc = orjson.loads(text)
    return EndpointTLS(
        client_cert=doc.get("client_cert"), client_key=doc.get("client_key"), ca=doc.get("ca")
    )


def endpoint_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """API-level endpoint fields to column values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in _JSON_FIELDS:
            out[key] = orjson.dumps(value).decode()
        elif key in ("active", "ordered", "paused"):
            out[key] = bool(value)
        elif key == "tls":
            out[key] = None if value is None else orjson.dumps(value).decode()
        else:
            out[key] = value
    return out


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


def event_from_row(row: Sequence[Any]) -> Event:
    return Event(
        id=row[0],
        type=row[1],
        tenant=row[2],
        payload_json=bytes(row[3]),
        deliver_at=row[4],
        created_at=row[5],
        seq=row[6],
    )


def event_type_from_row(row: Sequence[Any]) -> EventType:
    return EventType(name=row[0], description=row[1], source=row[2], created_at=row[3])


def attempt_from_row(row: Sequence[Any]) -> Attempt:
    return Attempt(
        number=row[0],
        started_at=row[1],
        duration_ms=row[2],
        trigger=row[3],
        format=row[4],
        request_headers=orjson.loads(row[5]),
        status_code=row[6],
        response_headers=orjson.loads(row[7]),
        response_body=text_from_bytes(row[8]),
        error_kind=row[9],
        error_message=row[10],
    )


def bytes_from_text(text: str) -> bytes:
    """A response body as stored (bytea: it may hold NUL, which text columns refuse)."""
    return text.encode("utf-8", "surrogatepass")


def text_from_bytes(data: bytes) -> str:
    return bytes(data).decode("utf-8", "surrogatepass")


def no_nul(text: str | None) -> str | None:
    """`text` for a text column, which cannot hold NUL: webhookd's own one-sentence
    messages may quote what a receiver sent."""
    return None if text is None else text.replace("\x00", "\ufffd")
