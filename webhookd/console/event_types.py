"""The console's page of the event-type catalog: every type with its description, and its
JSON Schema and example payload, read-only (they are changed through the API or the config
file). The tenant portal shows it too: schemas are what receivers build against."""

from __future__ import annotations

import json

from aiohttp import web

from webhookd.console.pages import Ctx


async def catalog(request: web.Request, ctx: Ctx) -> web.StreamResponse:
    types = await ctx.state.store.list_event_types()
    rows = [(et, _pretty(et.schema), _pretty(et.example)) for et in types]
    return ctx.render("event_types.html", rows=rows)


def _pretty(value: object) -> str | None:
    return None if value is None else json.dumps(value, indent=2, ensure_ascii=False)
