"""Which endpoints an event reaches: an endpoint's `events` patterns, its `channels` and
its content `filter` (webhookd.filters). Pure functions."""

from __future__ import annotations

from collections.abc import Iterable

from webhookd.filters import Document, Filter, envelope
from webhookd.store.interface import Endpoint, NewEvent

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


def routed(endpoints: Iterable[Endpoint], ev: NewEvent, created_at: int) -> list[Endpoint]:
    """The endpoints an event goes to, of `endpoints` (the fan-out of both backends): its
    tenant's endpoints subscribed to its type, then, for those with channels, the ones
    sharing one of the event's channels, then, for those with a filter, the ones whose
    filter matches the event's envelope. The payload is parsed at most once per event,
    and only when a candidate has a filter; a test event (`only_endpoint`) is not
    filtered at all (the caller sends it to that endpoint alone)."""
    out: list[Endpoint] = []
    doc: Document | None = None
    verdicts: dict[Filter, bool] = {}
    channels = frozenset(ev.channels or ())
    for ep in endpoints:
        if ep.tenant != ev.tenant or not subscribed(ep.events, ev.type):
            continue
        if ep.channels is not None and channels.isdisjoint(ep.channels):
            continue
        flt = ep.compiled_filter
        if flt is not None:
            # Endpoints with the same filter share one Filter: it is tested once.
            held = verdicts.get(flt)
            if held is None:
                if doc is None:
                    env = envelope(ev.id, ev.type, created_at, ev.tenant, ev.payload_json)
                    doc = Document(env)
                held = verdicts[flt] = flt.test(doc)
            if not held:
                continue
        out.append(ep)
    return out
