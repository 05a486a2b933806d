"""Operations routes: liveness (the process answers), readiness (it can take work) and the
daemons sharing the database (GET /v1/cluster)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from webhookd.api.context import ANY_TENANT, scope, state
from webhookd.api.errors import ApiError, json_response
from webhookd.store.interface import DaemonInfo
from webhookd.timefmt import to_rfc3339


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


async def cluster(request: web.Request) -> web.Response:
    """The daemons alive now on this database (SQLite: this one). Operator information:
    a tenant-scoped key gets 403."""
    limited = scope(request)
    if limited is not ANY_TENANT:
        raise ApiError(
            403,
            f"the cluster listing is operator information; this API key is limited to "
            f"tenant {limited!r}",
        )
    daemons = await state(request).store.cluster()
    return json_response({"daemons": [_daemon(d) for d in daemons]})


def _daemon(d: DaemonInfo) -> dict[str, Any]:
    m = d.member
    return {
        "id": m.id,
        "host": m.host,
        "pid": m.pid,
        "version": m.version,
        "started_at": to_rfc3339(m.started_at),
        "heartbeat_at": to_rfc3339(d.heartbeat_at),
        "in_flight": d.in_flight,
    }


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz, allow_head=False),
        web.get("/readyz", readyz, allow_head=False),
        web.get("/v1/cluster", cluster, allow_head=False),
    ]
