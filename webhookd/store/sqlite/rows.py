"""Rows to objects and back. No database access here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Shared by both backends; re-exported for this backend's modules.
from webhookd.store.records import DELIVERY_COLS as DELIVERY_COLS
from webhookd.store.records import ENDPOINT_COLS as ENDPOINT_COLS
from webhookd.store.records import EVENT_COLS as EVENT_COLS
from webhookd.store.records import EVENT_TYPE_COLS as EVENT_TYPE_COLS
from webhookd.store.records import NULLABLE_JSON_FIELDS
from webhookd.store.records import delivery_from_row as delivery_from_row
from webhookd.store.records import endpoint_from_row as endpoint_from_row
from webhookd.store.records import event_from_row as event_from_row
from webhookd.store.records import event_type_from_row as event_type_from_row
from webhookd.store.records import json_or_null as json_or_null
from webhookd.store.records import tls_from_json as tls_from_json


def endpoint_columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """API-level endpoint fields to column values."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("metadata", "headers", "events", "format", "signature", "previous_secrets"):
            out["format" if key == "format" else key] = orjson.dumps(value).decode()
        elif key in ("active", "ordered", "paused"):
            out[key] = 1 if value else 0
        elif key in NULLABLE_JSON_FIELDS:
            out[key] = json_or_null(value)
        else:
            out[key] = value
    return out


def window(where: list[str], args: list[Any], since: int | None, until: int | None) -> None:
    if since is not None:
        where.append("created_at >= ?")
        args.append(since)
    if until is not None:
        where.append("created_at < ?")
        args.append(until)
