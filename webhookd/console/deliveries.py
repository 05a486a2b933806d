"""The delivery log (filters, one search box for any evt_/dlv_/ep_ id, cursor pages,
live new rows), a delivery's page (every attempt's exact request and response, retry
now), an event's page, and the bulk retry of everything a filter matches."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from webhookd import formats
from webhookd.api.context import ANY_TENANT, state, tenant_filter, visible_to
from webhookd.api.errors import ApiError
from webhookd.console.pages import Ctx
from webhookd.store.console import STATUS_CLASSES
from webhookd.store.interface import (
    DELIVERY_STATES,
    AmbiguousId,
    Attempt,
    Delivery,
    DeliveryQuery,
    Event,
    NotFound,
)
from webhookd.timefmt import now_ms, parse_rfc3339, to_rfc3339

log = logging.getLogger("webhookd.console")
LOG_PAGE = 50
WINDOWS = {"1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000}
FILTERS = ("endpoint_id", "status", "event_type", "tenant", "window", "since", "until", "class")
_ID_RE = re.compile(r"^(evt|dlv|ep)_[A-Za-z0-9_-]{1,100}$")


@dataclass(frozen=True)
class Filter:
    query: DeliveryQuery
    values: dict[str, str]  # what the form shows and links carry

    def qs(self, **extra: str) -> str:
        return urlencode({**{k: v for k, v in self.values.items() if v}, **extra})


def _time(values: dict[str, str], name: str) -> int | None:
    text = values.get(name, "")
    if not text:
        return None
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise ApiError(422, f"{name}: expected a time such as 2026-01-31T12:00:00Z") from None


def read_filter(request: web.Request, ctx: Ctx, source: Any = None) -> Filter:
    """The log's filters from the query string (or a posted form), within the scope."""
    src = request.query if source is None else source
    values: dict[str, Any] = {k: str(src.get(k, "")).strip() for k in FILTERS}
    status = values["status"]
    if status and status not in DELIVERY_STATES:
        raise ApiError(422, f"status: expected one of {', '.join(DELIVERY_STATES)}")
    if values["class"] and values["class"] not in STATUS_CLASSES:
        raise ApiError(422, f"class: expected one of {', '.join(STATUS_CLASSES)}")
    if values["window"] and values["window"] not in WINDOWS:
        raise ApiError(422, f"window: expected one of {', '.join(WINDOWS)}")
    since = _time(values, "since")
    if values["window"]:
        since = now_ms() - WINDOWS[values["window"]]
    params = {"tenant": values["tenant"]} if values["tenant"] else {}
    tenant = tenant_filter(request, params)
    if ctx.who.tenant is not ANY_TENANT:
        values["tenant"] = ""
    query = DeliveryQuery(
        endpoint_id=values["endpoint_id"] or None,
        event_type=values["event_type"] or None,
        statuses=(status,) if status else (),
        tenant=tenant,
        since=since,
        until=_time(values, "until"),
        status_class=values["class"] or None,
    )
    return Filter(query, values)


async def log_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    f = read_filter(request, ctx)
    cursor = request.query.get("cursor") or None
    page = await ctx.state.store.console_deliveries(f.query, cursor=cursor, limit=LOG_PAGE)
    live = request.query.get("live", "1") != "0" and cursor is None
    values: dict[str, Any] = {
        "rows": page.data,
        "next_cursor": page.next_cursor,
        "f": f,
        "live": live,
        "cursor": cursor,
        "urls": {e.id: e.url for e in ctx.state.store.endpoints()},
        "statuses": DELIVERY_STATES,
        "classes": STATUS_CLASSES,
        "windows": tuple(WINDOWS),
        "retried": request.query.get("retried"),
    }
    target = request.headers.get("HX-Target")
    if ctx.htmx and target == "log-rows":
        return ctx.render("deliveries_rows.html", **values)
    return ctx.render("deliveries.html", **values)


async def search(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """Jump to any evt_/dlv_/ep_ id the caller may see."""
    q = request.query.get("q", "").strip()
    if not _ID_RE.match(q):
        raise ApiError(422, "search: give an id that starts with evt_, dlv_ or ep_")
    if q.startswith("dlv_"):
        await _visible_delivery(request, q)
        return ctx.redirect(f"/deliveries/{q}")
    if q.startswith("ep_"):
        ep = await ctx.state.store.get_endpoint(q)
        if not visible_to(request, ep.tenant):
            raise NotFound(f"no endpoint with id {q}")
        return ctx.redirect(f"/endpoints/{q}")
    await _event(request, ctx, q)
    return ctx.redirect(f"/events/{q}")


async def _visible_delivery(
    request: web.Request, delivery_id: str
) -> tuple[Delivery, list[Attempt]]:
    d, attempts = await state(request).store.get_delivery(delivery_id)
    if not visible_to(request, d.tenant):
        raise NotFound(f"no delivery with id {delivery_id}")
    return d, attempts


async def _event(request: web.Request, ctx: Ctx, event_id: str) -> tuple[Event, list[Delivery]]:
    tenant = ctx.who.tenant
    try:
        return await ctx.state.store.get_event(event_id, tenant)
    except AmbiguousId:
        raise ApiError(409, f"several tenants use {event_id}; filter the log by tenant") from None


def request_body(event: Event, attempt: Attempt) -> str:
    """The body the attempt sent, made again from the event exactly as the dispatcher
    makes it (the multipart boundary read back from the Content-Type that was sent)."""
    if event.payload_erased_at is not None:
        return f"(not kept: the payload was erased at {to_rfc3339(event.payload_erased_at)})"
    content_type = next(
        (v for k, v in attempt.request_headers.items() if k.lower() == "content-type"), ""
    )
    if attempt.format == "multipart" and "boundary=" in content_type:
        from webhookd import jsonio

        payload = jsonio.loads(event.payload_json)
        body, _ = formats.multipart_body(
            payload if isinstance(payload, dict) else {"data": payload},
            content_type.split("boundary=", 1)[1],
        )
    else:
        body, _ = formats.render(
            attempt.format,
            event_id=event.id,
            event_type=event.type,
            timestamp=to_rfc3339(event.created_at) or "",
            tenant=event.tenant,
            payload_json=event.payload_json,
        )
    return body.decode("utf-8", "replace")


async def delivery_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    d, attempts = await _visible_delivery(request, request.match_info["delivery_id"])
    event, _ = await ctx.state.store.get_event(d.event_id, d.tenant)
    ep = ctx.state.store.endpoint(d.endpoint_id)
    shown = [(a, request_body(event, a)) for a in reversed(attempts)]
    template = "attempts.html" if ctx.htmx else "delivery.html"
    return ctx.render(
        template, d=d, event=event, ep=ep, attempts=shown, url=ep.url if ep else "(deleted)"
    )


async def event_page(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    event, deliveries = await _event(request, ctx, request.match_info["event_id"])
    payload = event.payload_json.decode("utf-8", "replace")
    return ctx.render("event.html", event=event, deliveries=deliveries, payload=payload)


async def retry(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    d, _ = await _visible_delivery(request, request.match_info["delivery_id"])
    await ctx.state.store.retry_delivery(d.id)
    log.info(
        "retry from the console",
        extra={"event": "console_retry", "delivery": d.id, "by": ctx.who.name},
    )
    return ctx.redirect(f"/deliveries/{d.id}")


def _requeue_query(f: Filter) -> DeliveryQuery | None:
    """What bulk retry takes: the filter's failed and skipped deliveries."""
    q = f.query
    if q.statuses and not set(q.statuses) <= {"failed", "skipped"}:
        return None
    statuses = q.statuses or ("failed", "skipped")
    return DeliveryQuery(
        endpoint_id=q.endpoint_id,
        event_type=q.event_type,
        statuses=statuses,
        tenant=q.tenant,
        since=q.since,
        until=q.until,
        status_class=q.status_class,
    )


async def retry_all_preview(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    f = read_filter(request, ctx)
    q = _requeue_query(f)
    count = 0 if q is None else await ctx.state.store.count_deliveries(q)
    return ctx.render("retry_all.html", f=f, count=count)


async def retry_all(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    form = await request.post()
    f = read_filter(request, ctx, form)
    q = _requeue_query(f)
    count = 0 if q is None else await ctx.state.store.requeue_deliveries(q)
    log.info(
        "bulk retry from the console",
        extra={"event": "console_bulk_retry", "by": ctx.who.name, "count": count},
    )
    return ctx.redirect(f"/deliveries?{f.qs(retried=str(count))}")
