"""Erasing an event's payload from the console: the event page's "Erase payload" opens a
confirmation page (a plain form: no JavaScript needed), whose POST erases it as
DELETE /v1/events/{id}/payload does. Operators only: a tenant portal shows when a payload
was erased but offers no erasure (portal capabilities do not include it)."""

from __future__ import annotations

import logging

from aiohttp import web

from webhookd.console.deliveries import _event
from webhookd.console.pages import Ctx

log = logging.getLogger("webhookd.console")


def _operator_only(ctx: Ctx) -> web.Response | None:
    if ctx.who.kind != "operator":
        return ctx.render("error.html", 403, message="only an operator may erase payloads")
    return None


async def confirm(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    if (refused := _operator_only(ctx)) is not None:
        return refused
    event, deliveries = await _event(request, ctx, request.match_info["event_id"])
    unfinished = sum(d.status in ("pending", "delivering") for d in deliveries)
    return ctx.render("erase_payload.html", event=event, unfinished=unfinished)


async def erase(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    if (refused := _operator_only(ctx)) is not None:
        return refused
    event, _ = await _event(request, ctx, request.match_info["event_id"])
    await ctx.state.store.erase_payload(event.id, event.tenant)
    log.info(
        "event payload erased in the console",
        extra={"event": "console_payload_erased", "event_id": event.id, "by": ctx.who.name},
    )
    return ctx.redirect(f"/events/{event.id}")
