"""GET /v1/cluster on a real daemon: on SQLite it lists the one daemon, with this run's
identity, a heartbeat of now and its open requests; operator information only."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until
from webhookd import __version__
from webhookd.timefmt import parse_rfc3339

OPERATOR = "o" * 40
ACME = "a" * 40
KEYS = [{"name": "ops", "key": OPERATOR}, {"name": "acme", "key": ACME, "tenant": "acme"}]


async def test_cluster_lists_this_daemon(make_daemon: Any, receiver: Receiver) -> None:
    d: Daemon = await make_daemon({"api_keys": KEYS})
    d.api_key = OPERATOR
    before_ms = int(time.time() * 1000)
    r = await d.get("/v1/cluster")
    assert r.status == 200, r
    [me] = r.json["daemons"]
    assert set(me) == {"id", "host", "pid", "version", "started_at", "heartbeat_at", "in_flight"}
    assert d.proc is not None and me["pid"] == d.proc.pid
    assert me["host"] == socket.gethostname()
    assert me["version"] == __version__
    assert uuid.UUID(me["id"]).version == 4
    started, heartbeat = parse_rfc3339(me["started_at"]), parse_rfc3339(me["heartbeat_at"])
    assert started <= heartbeat and heartbeat >= before_ms - 1000  # now, to the second
    assert me["in_flight"] == 0
    # A request held open by the receiver counts.
    release = asyncio.Event()

    async def hold(request: web.Request, body: bytes) -> web.Response:
        await release.wait()
        return web.Response(status=200)

    receiver.responder = hold
    await d.endpoint(receiver.url)
    await d.publish()
    try:

        async def in_flight() -> int:
            return int((await d.get("/v1/cluster")).json["daemons"][0]["in_flight"])

        assert await wait_until(in_flight, 10, "one open request") == 1
    finally:
        release.set()
    # The id is this run's: the same on every call, a new one after a restart.
    again = (await d.get("/v1/cluster")).json["daemons"][0]
    assert (again["id"], again["started_at"]) == (me["id"], me["started_at"])
    await d.stop()
    await d.start()
    restarted = (await d.get("/v1/cluster")).json["daemons"]
    assert [x["id"] for x in restarted] != [me["id"]] and len(restarted) == 1


async def test_cluster_is_operator_information(make_daemon: Any) -> None:
    d: Daemon = await make_daemon({"api_keys": KEYS})
    assert (await d.get("/v1/cluster", key="")).status == 401
    scoped = await d.get("/v1/cluster", key=ACME)
    assert scoped.status == 403, scoped
    assert scoped.json["error"] == "forbidden" and "operator" in scoped.json["message"]
    assert (await d.get("/v1/cluster", key=OPERATOR)).status == 200
