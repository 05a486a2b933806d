"""What every backend encodes the same way: the opaque list cursors the API hands out,
and the hash that says whether a repeated publish has "the same body"."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from typing import Any

import orjson


class BadCursor(ValueError):
    pass


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"c1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        tag, _, seq = text.partition(":")
        if tag != "c1" or not seq.isdigit() or len(seq) > 18:
            raise ValueError
        return int(seq)
    except (ValueError, UnicodeError):
        raise BadCursor("cursor is not one this server handed out") from None


def encode_name_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(f"n1:{name}".encode()).decode().rstrip("=")


def decode_name_cursor(cursor: str) -> str:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError):
        raise BadCursor("cursor is not one this server handed out") from None
    tag, sep, name = text.partition(":")
    if tag != "n1" or not sep:
        raise BadCursor("cursor is not one this server handed out")
    return name


def body_hash(
    event_type: str,
    tenant: str | None,
    payload: Any,
    deliver_at: int | None,
    channels: Sequence[str] | None = None,
) -> bytes:
    """What 'the same body' means for idempotent publishing: type, tenant, payload,
    deliver_at and channels, with object keys sorted so that key order does not matter.
    (No channels leaves them out: the hashes of events stored before channels existed
    stay the same.)"""
    doc = {"type": event_type, "tenant": tenant, "payload": payload, "deliver_at": deliver_at}
    if channels:
        doc["channels"] = sorted(channels)
    try:
        canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits
        canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).digest()
