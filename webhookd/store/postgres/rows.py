"""PostgreSQL rows to webhookd's objects and back. No database access here.

The column lists end with `seq`, the row key the list cursors are made of."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from webhookd.store.models import Attempt

# Shared by both backends; re-exported for this backend's modules.
from webhookd.store.records import DELIVERY_COLS as DELIVERY_COLS
from webhookd.store.records import ENDPOINT_COLS as ENDPOINT_COLS
from webhookd.store.records import EVENT_COLS as EVENT_COLS
from webhookd.store.records import EVENT_TYPE_COLS as EVENT_TYPE_COLS
from webhookd.store.records import NULLABLE_JSON_FIELDS, json_or_null
from webhookd.store.records import delivery_from_row as delivery_from_row
from webhookd.store.records import endpoint_from_row as endpoint_from_row
from webhookd.store.records import event_from_row as event_from_row
from webhookd.store.records import event_type_from_row as event_type_from_row
from webhookd.store.records import tls_from_json as tls_from_json

ATTEMPT_COLS = (
    "number, started_at, duration_ms, trigger, format, request_headers, status_code, "
    "response_headers, response_body, error_kind, error_message"
)
# Endpoint fields stored as JSON text, exactly as the API gave them (key order kept).
_JSON_FIELDS = ("metadata", "headers", "events", "format", "signature", "previous_secrets")


def endpoint_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """API-level endpoint fields to column values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in _JSON_FIELDS:
            out[key] = orjson.dumps(value).decode()
        elif key in ("active", "ordered", "paused"):
            out[key] = bool(value)
        elif key in NULLABLE_JSON_FIELDS:
            out[key] = json_or_null(value)
        else:
            out[key] = value
    return out


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
