"""The endpoint form's routing preview: would the last few events of the endpoint's types
have reached it with the filter and channels being edited?

`POST {base}/filter-preview` takes the endpoint form as it stands. Live (htmx, targeting
#filter-preview) it answers the preview alone; without JavaScript the form's "Preview"
button posts the whole form there and gets the form back, as filled in, with the preview
in place. Nothing is saved. The check is the fan-out's own (webhookd.matching and
webhookd.filters) on the stored events, newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from webhookd import jsonio
from webhookd.api import routing
from webhookd.api.context import ANY_TENANT, scope
from webhookd.api.validate import Problems
from webhookd.console import forms
from webhookd.console.pages import Ctx
from webhookd.console.routing_form import names
from webhookd.filters import Filter, compile_filter, envelope
from webhookd.matching import subscribed
from webhookd.store.interface import Endpoint, Event, NotFound

PREVIEW_EVENTS = 10  # events shown
SCAN_PAGES, SCAN_PAGE = 5, 100  # at most this many recent events looked through


@dataclass
class Row:
    event: Event
    verdict: str  # "yes", "no: filter", "no: channels"


@dataclass
class Preview:
    problems: list[str]  # why the filter or channels cannot be used (then no rows)
    rows: list[Row]
    patterns: list[str]
    scanned: int


async def filter_preview(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    form = await request.post()
    ep = await _endpoint(request, ctx, str(form.get("endpoint_id", "")))
    preview = await _preview(ctx, form, ep)
    if request.headers.get("HX-Target") == "filter-preview":
        return ctx.render("filter_preview.html", preview=preview)
    catalog = [t.name for t in await ctx.state.store.list_event_types()]
    values = {k: str(v) for k, v in form.items() if k != "client_key"}
    return ctx.render(
        "endpoint_form.html", ep=ep, values=values, problems={}, catalog=catalog, preview=preview
    )


async def _endpoint(request: web.Request, ctx: Ctx, endpoint_id: str) -> Endpoint | None:
    """The endpoint being edited (None: a new one); 404 outside the caller's tenant."""
    if not endpoint_id:
        return None
    ep = await ctx.state.store.get_endpoint(endpoint_id)
    limited = scope(request)
    if limited is not ANY_TENANT and ep.tenant != limited:
        raise NotFound(f"no endpoint with id {endpoint_id}")
    return ep


def _tenant(ctx: Ctx, form: Any, ep: Endpoint | None) -> str | None:
    if ctx.who.tenant is not ANY_TENANT:
        tenant: str | None = ctx.who.tenant
        return tenant
    if "tenant" in form:
        return str(form["tenant"]).strip() or None
    return ep.tenant if ep is not None else None


def _filter(text: str, problems: list[str]) -> Filter | None:
    if not text.strip():
        return None
    try:
        spec = jsonio.loads(text)
    except jsonio.JSONError as exc:
        problems.append(f"filter: not valid JSON: {exc}")
        return None
    checked = Problems()
    routing.check_filter(spec, checked, ())
    for item in checked.items:
        where = ".".join(str(p) for p in item["loc"])
        problems.append(f"filter{'.' + where if where else ''}: {item['msg']}")
    return None if checked else compile_filter(spec)


def _channels(text: str, problems: list[str]) -> list[str] | None:
    given = names(text)
    if not given:
        return None
    checked = Problems()
    routing.check_channels(given, checked, (), most=routing.MAX_ENDPOINT_CHANNELS)
    problems.extend(f"channels: {item['msg']}" for item in checked.items)
    return given


async def _preview(ctx: Ctx, form: Any, ep: Endpoint | None) -> Preview:
    problems: list[str] = []
    flt = _filter(str(form.get("filter", "")), problems)
    channels = _channels(str(form.get("channels", "")), problems)
    patterns = forms.events_list(str(form.get("events", ""))) or ["*"]
    if problems:
        return Preview(problems, [], patterns, 0)
    tenant = _tenant(ctx, form, ep)
    rows: list[Row] = []
    scanned = 0
    cursor: str | None = None
    for _ in range(SCAN_PAGES):
        page = await ctx.state.store.list_events(tenant=tenant, cursor=cursor, limit=SCAN_PAGE)
        scanned += len(page.data)
        for ev in page.data:
            if subscribed(patterns, ev.type) and len(rows) < PREVIEW_EVENTS:
                rows.append(Row(ev, _verdict(ev, flt, channels)))
        cursor = page.next_cursor
        if cursor is None or len(rows) >= PREVIEW_EVENTS:
            break
    return Preview([], rows, patterns, scanned)


def _verdict(ev: Event, flt: Filter | None, channels: list[str] | None) -> str:
    if channels is not None and not set(channels) & set(ev.channels or ()):
        return "no: channels"
    if flt is None:
        return "yes"
    if not ev.payload_json:
        return "unknown: payload erased"
    env = envelope(ev.id, ev.type, ev.created_at, ev.tenant, ev.payload_json)
    return "yes" if flt.matches(env) else "no: filter"
