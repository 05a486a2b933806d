"""Operations routes: liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from webhookd.api.context import state
from webhookd.api.errors import json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    st = state(request)
    problems = []
    if st.starting:
        problems.append("starting")
    if st.stopping:
        problems.append("stopping")
    if not problems and (st.dispatcher is None or not st.dispatcher.running):
        problems.append("dispatcher not running")
    if not problems and not await st.store.writable():
        problems.append("storage cannot write")
    if problems:
        return json_response(
            {"status": "unavailable", "problems": problems},
            503,
            headers={"Retry-After": "5"},
        )
    return json_response({"status": "ready"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=False),
        web.get("/readyz", readyz, allow_head=False),
    ]
