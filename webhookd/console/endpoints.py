"""The endpoints board and an endpoint's pages: create, edit, disable, enable, delete,
the secret (reveal on an explicit POST, rotate with a grace period), test events, and
"re-enable and recover since T" with the count shown before confirming.

Every change goes through the API's own functions (webhookd.api.endpoints): the same
validation, tenant scope and limits as `PATCH /v1/endpoints/{id}`.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from webhookd import jsonio, signing
from webhookd.api import endpoints as api
from webhookd.api import event_types, keys
from webhookd.api.context import ANY_TENANT, tenant_filter
from webhookd.api.errors import ApiError, validation_error
from webhookd.api.validate import Problems, number
from webhookd.console import charts, forms
from webhookd.console.pages import Ctx
from webhookd.ids import new_id
from webhookd.matching import subscribed
from webhookd.store.interface import DeliveryQuery, Endpoint, NewEvent, NotFound
from webhookd.timefmt import now_ms, parse_rfc3339, to_rfc3339

log = logging.getLogger("webhookd.console")
BOARD_PAGE = 50


async def _health(ctx: Ctx, eps: list[Endpoint]) -> dict[str, dict[str, Any]]:
    """What the board shows of each endpoint (one store call for the whole page)."""
    got = await ctx.state.store.endpoint_health([e.id for e in eps], now_ms() - 86_400_000)
    dispatcher = ctx.state.dispatcher
    default = ctx.state.config.delivery.max_in_flight_per_endpoint
    return {
        ep.id: {
            "pending": got[ep.id].pending,
            "rate": got[ep.id].success_rate,
            "in_flight": dispatcher.in_flight_for(ep.id) if dispatcher else 0,
            "max_in_flight": ep.max_in_flight or default,
        }
        for ep in eps
    }


async def board(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    params = {k: v for k, v in request.query.items() if k == "tenant" and v}
    tenant = tenant_filter(request, params)
    page = await ctx.state.store.list_endpoints(
        tenant=tenant, cursor=request.query.get("cursor") or None, limit=BOARD_PAGE
    )
    health = await _health(ctx, page.data)
    rows = [(ep, health[ep.id]) for ep in page.data]
    template = "endpoints_table.html" if ctx.htmx else "endpoints.html"
    return ctx.render(template, rows=rows, next_cursor=page.next_cursor)


async def _catalog(ctx: Ctx) -> list[str]:
    return [t.name for t in await ctx.state.store.list_event_types()]


async def new_form(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    return ctx.render(
        "endpoint_form.html",
        ep=None,
        values=forms.endpoint_values(None),
        problems={},
        catalog=await _catalog(ctx),
    )


def _tenant_field(ctx: Ctx) -> bool:
    return ctx.who.tenant is ANY_TENANT


async def create(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    form = await request.post()
    body = forms.endpoint_body(form, creating=True, tenant_field=_tenant_field(ctx))
    try:
        fields = api.validate_fields(body, request, creating=True, current=None)
        async with api._cap_lock(ctx.state):
            await api._check_tenant_cap(ctx.state, fields.get("tenant"))
            ep = await ctx.state.store.create_endpoint(fields)
    except ApiError as err:
        if err.status != 422:
            raise
        return ctx.render(
            "endpoint_form.html",
            422,
            ep=None,
            values=dict(form),
            problems=forms.problems_by_field(err.detail or [{"loc": ["body"], "msg": err.message}]),
            catalog=await _catalog(ctx),
        )
    log.info(
        "endpoint created in the console",
        extra={"event": "console_endpoint_created", "endpoint": ep.id, "by": ctx.who.name},
    )
    return ctx.redirect(f"/endpoints/{ep.id}?created=1")


async def detail(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    rng = charts.chosen_range(request.query.get("range"))
    now = now_ms()
    chart = await ctx.state.store.attempt_chart(
        endpoint_id=ep.id,
        tenant=ctx.who.tenant,
        since=now - rng.span_ms,
        until=now,
        bucket_ms=rng.bucket_ms,
    )
    recent = await ctx.state.store.console_deliveries(
        DeliveryQuery(endpoint_id=ep.id), cursor=None, limit=15
    )
    skipped = await ctx.state.store.count_deliveries(
        DeliveryQuery(endpoint_id=ep.id, statuses=("skipped",))
    )
    return ctx.render(
        "endpoint.html",
        ep=ep,
        health=(await _health(ctx, [ep]))[ep.id],
        chart=charts.svg_data(chart),
        range=rng,
        ranges=charts.RANGES,
        recent=recent.data,
        skipped=skipped,
        secret=None,
        public_key=keys.public_key(ep),
        previous=[p.expires_at for p in ep.previous_secrets if p.expires_at > now],
        catalog=await _catalog(ctx),
        created=request.query.get("created") == "1",
    )


async def edit_form(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    return ctx.render(
        "endpoint_form.html",
        ep=ep,
        values=forms.endpoint_values(ep),
        problems={},
        catalog=await _catalog(ctx),
    )


async def edit(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    form = await request.post()
    body = forms.endpoint_body(form, creating=False, tenant_field=_tenant_field(ctx))
    try:
        await _patch(request, ctx, ep, body)
    except ApiError as err:
        if err.status != 422:
            raise
        return ctx.render(
            "endpoint_form.html",
            422,
            ep=ep,
            values=dict(form),
            problems=forms.problems_by_field(err.detail or [{"loc": ["body"], "msg": err.message}]),
            catalog=await _catalog(ctx),
        )
    return ctx.redirect(f"/endpoints/{ep.id}")


async def _patch(request: web.Request, ctx: Ctx, ep: Endpoint, body: dict[str, Any]) -> Endpoint:
    """PATCH /v1/endpoints/{id}, as the API does it."""
    fields = api.validate_fields(body, request, creating=False, current=ep)
    st = ctx.state
    async with api._cap_lock(st):
        if "tenant" in fields and fields["tenant"] != ep.tenant:
            await api._check_tenant_cap(st, fields["tenant"])
        return await st.store.update_endpoint(ep.id, fields) if fields else ep


async def set_active(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    form = await request.post()
    await _patch(request, ctx, ep, {"active": form.get("active") == "true"})
    return ctx.redirect(f"/endpoints/{ep.id}")


async def set_paused(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    form = await request.post()
    await _patch(request, ctx, ep, {"paused": form.get("paused") == "true"})
    return ctx.redirect(f"/endpoints/{ep.id}")


async def delete(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    await ctx.state.store.delete_endpoint(ep.id)
    log.info(
        "endpoint deleted in the console",
        extra={"event": "console_endpoint_deleted", "endpoint": ep.id, "by": ctx.who.name},
    )
    return ctx.redirect("/endpoints")


async def events_preview(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """Which catalog types an `events` list matches (the form's live preview)."""
    patterns = forms.events_list(request.query.get("events", "")) or ["*"]
    names = await _catalog(ctx)
    matched = [n for n in names if subscribed(patterns, n)]
    return ctx.render("events_preview.html", matched=matched, patterns=patterns)


async def reveal_secret(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    log.info(
        "secret revealed",
        extra={"event": "secret_revealed", "endpoint": ep.id, "by": ctx.who.name},
    )
    return ctx.render(
        "secret_page.html",
        ep=ep,
        secret=ep.secret,
        public_key=keys.public_key(ep),
        previous=_previous(ep),
    )


def _previous(ep: Endpoint) -> list[int]:
    now = now_ms()
    return [p.expires_at for p in ep.previous_secrets if p.expires_at > now]


async def rotate_secret(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    form = await request.post()
    problems = Problems()
    grace_text = str(form.get("grace_s", "86400")).strip() or "0"
    try:
        grace_raw: Any = float(grace_text)
    except ValueError:
        grace_raw = grace_text
    grace = number(grace_raw, ("body", "grace_s"), problems, lo=0, hi=api.MAX_GRACE_S) or 0
    problems.raise_if_any()
    new_secret = signing.generate_secret(ep.signature.algorithm)
    await ctx.state.store.rotate_secret(ep.id, new_secret, grace)
    log.info(
        "secret rotated",
        extra={"event": "secret_rotated", "endpoint": ep.id, "by": ctx.who.name, "grace_s": grace},
    )
    return ctx.redirect(f"/endpoints/{ep.id}?rotated=1#secret")


async def send_test(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """A test event to this endpoint only, as POST /v1/endpoints/{id}/test; then the
    delivery's page, where the attempt appears live."""
    ep = await api.visible(request)
    st = ctx.state
    form = await request.post()
    event_type = str(form.get("event_type") or "webhookd.test")
    if not st.store.has_event_type(event_type):
        raise ApiError(422, f"unknown event type {event_type!r}")
    text = str(form.get("payload") or "").strip()
    example = getattr(st.store.event_type(event_type), "example", None)
    try:
        payload = jsonio.loads(text) if text else (example or {})
    except jsonio.JSONError as exc:
        raise ApiError(422, f"payload: not JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise ApiError(422, "payload: expected a JSON object")
    problems = Problems()
    if not event_types.check_payload(st, event_type, payload, ("body", "payload"), problems):
        raise validation_error(problems.items)
    if not ep.active:
        raise ApiError(409, "the endpoint is disabled; enable it first")
    payload_json, _ = jsonio.dump_payload(payload)
    if len(payload_json) > st.config.limits.max_payload_bytes:
        raise ApiError(413, "the test payload is larger than limits.max_payload_bytes")
    event = NewEvent(
        id=new_id("evt"),
        type=event_type,
        tenant=ep.tenant,
        payload_json=payload_json,
        body_hash=None,
        deliver_at=None,
        only_endpoint=ep.id,
    )
    [res] = await st.store.publish([event])
    if not res.delivery_ids:
        raise NotFound(f"no endpoint with id {ep.id}")
    return ctx.redirect(f"/deliveries/{res.delivery_ids[0]}")


def _since(ctx: Ctx, ep: Endpoint, text: str | None) -> int:
    if text:
        try:
            return parse_rfc3339(text)
        except ValueError:
            raise ApiError(422, "since: expected a time such as 2026-01-31T12:00:00Z") from None
    return ep.failing_since or ep.updated_at


async def recover_preview(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    ep = await api.visible(request)
    since = _since(ctx, ep, request.query.get("since"))
    count = await ctx.state.store.count_deliveries(
        DeliveryQuery(endpoint_id=ep.id, statuses=("failed", "skipped"), since=since)
    )
    return ctx.render("recover.html", ep=ep, since=to_rfc3339(since), count=count)


async def recover(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """Re-enable (when disabled) and recover since T, in one step."""
    ep = await api.visible(request)
    form = await request.post()
    since = _since(ctx, ep, str(form.get("since", "")))
    if not ep.active:
        ep = await _patch(request, ctx, ep, {"active": True})
    count = await ctx.state.store.recover(ep.id, since, None)
    log.info(
        "recovered in the console",
        extra={"event": "console_recover", "endpoint": ep.id, "by": ctx.who.name, "count": count},
    )
    return ctx.redirect(f"/endpoints/{ep.id}?recovered={count}")


async def overview(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    """Charts over every endpoint the caller may see."""
    rng = charts.chosen_range(request.query.get("range"))
    now = now_ms()
    chart = await ctx.state.store.attempt_chart(
        endpoint_id=None,
        tenant=ctx.who.tenant,
        since=now - rng.span_ms,
        until=now,
        bucket_ms=rng.bucket_ms,
    )
    return ctx.render("charts.html", chart=charts.svg_data(chart), range=rng, ranges=charts.RANGES)
