"""Deliveries: list, get with every attempt, and manual retry."""

from __future__ import annotations

from aiohttp import web

from webhookd.api import serialize
from webhookd.api.context import state, tenant_filter, visible_to
from webhookd.api.errors import json_response
from webhookd.api.validate import Problems, page_json, paging, query, query_time
from webhookd.store.interface import DELIVERY_STATES, NotFound


async def list_(request: web.Request) -> web.Response:
    params = query(
        request,
        ("endpoint_id", "event_id", "event_type", "status", "tenant", "since", "until"),
    )
    problems = Problems()
    cursor, limit = paging(params, problems)
    since = query_time(params, "since", problems)
    until = query_time(params, "until", problems)
    status = params.get("status")
    if status is not None and status not in DELIVERY_STATES:
        problems.add(("query", "status"), f"expected one of {', '.join(DELIVERY_STATES)}")
    problems.raise_if_any()
    tenant = tenant_filter(request, params)
    page = await state(request).store.list_deliveries(
        endpoint_id=params.get("endpoint_id"),
        event_id=params.get("event_id"),
        event_type=params.get("event_type"),
        status=status,
        tenant=tenant,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return json_response(page_json([serialize.delivery(d) for d in page.data], page.next_cursor))


async def get(request: web.Request) -> web.Response:
    delivery_id = request.match_info["delivery_id"]
    d, attempts = await state(request).store.get_delivery(delivery_id)
    if not visible_to(request, d.tenant):
        raise NotFound(f"no delivery with id {delivery_id}")
    return json_response(serialize.delivery(d, attempts))


async def retry(request: web.Request) -> web.Response:
    delivery_id = request.match_info["delivery_id"]
    st = state(request)
    d, _ = await st.store.get_delivery(delivery_id)
    if not visible_to(request, d.tenant):
        raise NotFound(f"no delivery with id {delivery_id}")
    updated = await st.store.retry_delivery(delivery_id)
    return json_response(serialize.delivery(updated), 202)


def routes() -> list[web.RouteDef]:
    return [
        web.get("/v1/deliveries", list_, allow_head=False),
        web.get("/v1/deliveries/{delivery_id}", get, allow_head=False),
        web.post("/v1/deliveries/{delivery_id}/retry", retry),
    ]
