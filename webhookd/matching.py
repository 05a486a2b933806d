"""Which endpoints an event reaches: the `events` filter of an endpoint. Pure functions."""

from __future__ import annotations

from collections.abc import Iterable


def pattern_matches(pattern: str, event_type: str) -> bool:
    """`*` matches everything, `call.*` matches `call.completed` and `call.x.y`
    (not `call` itself), anything else matches exactly."""
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def subscribed(patterns: Iterable[str], event_type: str) -> bool:
    return any(pattern_matches(p, event_type) for p in patterns)
