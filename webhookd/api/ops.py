"""Operations routes: liveness (the process answers) and readiness (it can take work)."""

from __future__ import annotations

from aiohttp import web

from webhookd.api.context import state
from webhookd.api.errors import json_response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: started, not stopping, the dispatcher running and a real write committing
    (the store's probe; a read or an empty transaction succeeds on a full disk too)."""
    st = state(request)
    problems = []
    reason = None
    if st.starting:
        problems.append("starting")
    if st.stopping:
        problems.append("stopping")
    if not problems and (st.dispatcher is None or not st.dispatcher.running):
        problems.append("dispatcher not running")
    if not problems:
        reason = await st.store.write_problem()
        if reason is not None:
            problems.append("storage cannot write")
    if problems:
        body: dict[str, object] = {"status": "unavailable", "problems": problems}
        if reason is not None:
            body["reason"] = reason
        return json_response(body, 503, headers={"Retry-After": "5"})
    return json_response({"status": "ready"})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=False),
        web.get("/readyz", readyz, allow_head=False),
    ]
