"""The JSON shapes of API.md, built from store objects."""

from __future__ import annotations

from typing import Any

import orjson

from webhookd.api import auth_fields, keys
from webhookd.config import Config
from webhookd.signing import REDACTED
from webhookd.store.interface import (
    Attempt,
    Delivery,
    Endpoint,
    EndpointTLS,
    Event,
    EventType,
    PublishResult,
)
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
        "paused": ep.paused,
        "proxy": redacted_proxy(ep.proxy),
        "tls": redacted_tls(ep.tls),
        "filter": ep.filter,
        "channels": None if ep.channels is None else list(ep.channels),
        "auth": auth_fields.redacted(ep.auth),
        "created_at": to_rfc3339(ep.created_at),
        "updated_at": to_rfc3339(ep.updated_at),
    }
    if with_secret:
        out.update(keys.secret_fields(ep.signature, ep.secret))  # and public_key (Ed25519)
    return out


def split_proxy(url: str) -> tuple[str, str | None, str | None, str]:
    """`http://user:pass@host:port` as ("http://", user, password, "host:port"), split on
    the text (the last "@" ends the credentials, the first ":" in them starts the
    password), so that a password can be swapped without re-encoding the rest."""
    prefix, sep, rest = url.partition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not sep or not at:
        return f"{prefix}{sep}", None, None, rest
    user, colon, password = userinfo.partition(":")
    return f"{prefix}{sep}", user, password if colon else None, hostport


def redacted_proxy(url: str | None) -> str | None:
    """The proxy URL with its password, if any, shown as [redacted]."""
    if url is None:
        return None
    prefix, user, password, hostport = split_proxy(url)
    if password is None:
        return url
    return f"{prefix}{user}:{REDACTED}@{hostport}"


def redacted_tls(tls: EndpointTLS | None) -> dict[str, str] | None:
    """The TLS parts that are set; the private key as [redacted] (it is write-only)."""
    if tls is None:
        return None
    out: dict[str, str] = {}
    if tls.client_cert is not None:
        out["client_cert"] = tls.client_cert
    if tls.client_key is not None:
        out["client_key"] = REDACTED
    if tls.ca is not None:
        out["ca"] = tls.ca
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
        "schema": et.schema,
        "example": et.example,
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
        # Erased (DELETE /v1/events/{id}/payload, retention.payload_days): null.
        "payload": None if ev.payload_erased_at is not None else orjson.Fragment(ev.payload_json),
        "payload_erased_at": to_rfc3339(ev.payload_erased_at),
        "deliver_at": to_rfc3339(ev.deliver_at),
        "created_at": to_rfc3339(ev.created_at),
    }
    if ev.channels:
        out["channels"] = list(ev.channels)
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
