"""Which endpoints an event reaches: the `events` filter of an endpoint. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable

RESERVED_PREFIX = "webhookd."


def pattern_matches(pattern: str, event_type: str) -> bool:
    """`*` matches every application event type, `call.*` matches `call.completed` and
    `call.x.y` (not `call` itself), anything else matches exactly.

    `*` (the default subscription) leaves out webhookd's own `webhookd.*` types: an
    endpoint gets operational events only by naming them or with `webhookd.*`, so a
    customer endpoint subscribed to "everything" does not start receiving webhookd's
    notices about other endpoints."""
    if pattern == "*":
        return not event_type.startswith(RESERVED_PREFIX)
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def subscribed(patterns: Iterable[str], event_type: str) -> bool:
    return any(pattern_matches(p, event_type) for p in patterns)
