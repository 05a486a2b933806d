"""Payload erasure: `DELETE /v1/events/{id}/payload`.

The event stays listed, with `"payload": null` and `payload_erased_at`; its deliveries
that were still pending or in flight become `cancelled`, and none of them, nor a retry or
a recover, can send it again. Idempotent: erasing again answers 204 and keeps the first
erasure's time. The event is looked up as GET /v1/events/{id} looks it up (a tenant-scoped
key in its own tenant's ids only), so another tenant's event is a 404.
"""

from __future__ import annotations

import logging

from aiohttp import web

from webhookd.api.context import api_key, state
from webhookd.api.events import ambiguous_event, event_tenant
from webhookd.store.interface import AmbiguousId

log = logging.getLogger("webhookd.api")


async def erase_payload(request: web.Request) -> web.Response:
    event_id = request.match_info["event_id"]
    try:
        event = await state(request).store.erase_payload(event_id, event_tenant(request))
    except AmbiguousId as exc:
        raise ambiguous_event(exc) from None
    key = api_key(request)
    log.info(
        "event payload erased",
        extra={
            "event": "payload_erased",
            "event_id": event.id,
            "tenant": event.tenant,
            "by": key.name if key is not None else None,
        },
    )
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    return [web.delete("/v1/events/{event_id}/payload", erase_payload)]
