"""The JSON shapes of API.md, built from store objects."""

from __future__ import annotations

from typing import Any

import orjson

from webhookd.config import Config
from webhookd.store.models import Attempt, Delivery, Endpoint, Event, EventType, PublishResult
from webhookd.timefmt import to_rfc3339


def endpoint(ep: Endpoint, config: Config, *, with_secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ep.id,
        "url": ep.url,
        "tenant": ep.tenant,
        "description": ep.description,
        "metadata": ep.metadata,
        "events": list(ep.events),
        "active": ep.active,
        "disabled_reason": ep.disabled_reason,
        "signature": ep.signature.to_json(),
        "format": list(ep.formats) if ep.format_is_list else ep.formats[0],
        "headers": ep.headers,
        "delay_s": _num(ep.delay_s),
        "rate_limit_per_s": _num(ep.rate_limit_per_s),
        "max_in_flight": ep.max_in_flight or config.delivery.max_in_flight_per_endpoint,
        "ordered": ep.ordered,
        "created_at": to_rfc3339(ep.created_at),
        "updated_at": to_rfc3339(ep.updated_at),
    }
    if with_secret:
        out["secret"] = ep.secret
    return out


def _num(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def event_type(et: EventType) -> dict[str, Any]:
    return {
        "name": et.name,
        "description": et.description,
        "source": et.source,
        "created_at": to_rfc3339(et.created_at),
    }


def publish_result(res: PublishResult) -> dict[str, Any]:
    ev = res.event
    return {
        "id": ev.id,
        "type": ev.type,
        "tenant": ev.tenant,
        "created_at": to_rfc3339(ev.created_at),
        "deliveries": res.deliveries,
    }


def event(ev: Event, deliveries: list[Delivery] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ev.id,
        "type": ev.type,
        "tenant": ev.tenant,
        "payload": orjson.Fragment(ev.payload_json),
        "deliver_at": to_rfc3339(ev.deliver_at),
        "created_at": to_rfc3339(ev.created_at),
    }
    if deliveries is not None:
        out["deliveries"] = [delivery(d) for d in deliveries]
    return out


def delivery(d: Delivery, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": d.id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "endpoint_id": d.endpoint_id,
        "tenant": d.tenant,
        "status": d.status,
        "attempt_count": d.attempt_count,
        "next_attempt_at": to_rfc3339(d.next_attempt_at),
        "created_at": to_rfc3339(d.created_at),
        "updated_at": to_rfc3339(d.updated_at),
    }
    if attempts is not None:
        out["attempts"] = [attempt(a) for a in attempts]
    return out


def attempt(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "started_at": to_rfc3339(a.started_at),
        "duration_ms": a.duration_ms,
        "trigger": a.trigger,
        "format": a.format,
        "request_headers": a.request_headers,
        "status_code": a.status_code,
        "response_headers": a.response_headers,
        "response_body": a.response_body,
        "error_kind": a.error_kind,
        "error_message": a.error_message,
    }
