"""The dispatcher on PostgreSQL, with real daemon processes: a claimed delivery holds one of
its endpoint's slots for every daemon, so nothing is claimed ahead, and a daemon whose
endpoint is full (by its own requests or another daemon's) waits without spinning; a
reload changes the claims' default limit and the cluster's timings live."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web

from tests.conftest import Daemon, Receiver, wait_until

# CPU seconds an idle or blocked daemon may spend in CPU_WINDOW_S: its heartbeat, reaper,
# LISTEN health check and backstop poll, and a claim every 100 ms per full endpoint, cost
# a few hundredths; a dispatcher that claims in a loop spends the whole window.
CPU_WINDOW_S = 5.0
CPU_BUDGET_S = 0.5


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_over(daemons: list[Daemon], window_s: float = CPU_WINDOW_S) -> list[float]:
    pids = [d.proc.pid for d in daemons if d.proc is not None]
    before = [cpu_seconds(p) for p in pids]
    await asyncio.sleep(window_s)  # the measurement window itself, not a wait for a state
    return [round(cpu_seconds(p) - b, 3) for p, b in zip(pids, before, strict=True)]


class Gate:
    """A receiver's responder that holds every request until opened, counting how many
    are open at once."""

    def __init__(self) -> None:
        self.open_now = 0
        self.most_open = 0
        self.opened = asyncio.Event()

    async def __call__(self, request: web.Request, body: bytes) -> web.Response:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.opened.wait()
        finally:
            self.open_now -= 1
        return web.Response(status=200)


async def start_daemons(tmp_path: Path, dsn: str, names: str, **config: Any) -> list[Daemon]:
    daemons = []
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
        daemons.append(await Daemon(tmp_path / name, {"database": dsn, **config}).start())
    return daemons


async def count(dsn: str, sql: str, *args: Any) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, args)
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def test_an_idle_daemon_on_postgresql_sleeps(
    tmp_path: Path, pg_dsn: str, receiver: Receiver
) -> None:
    [d] = await start_daemons(tmp_path, pg_dsn, "a")
    try:
        await d.endpoint(receiver.url)
        await d.publish()
        await receiver.wait_for(1)
        [spent] = await cpu_over([d])
        print(f"idle daemon on PostgreSQL: {spent:.3f} CPU s in {CPU_WINDOW_S:g} s")
        assert spent < CPU_BUDGET_S / 2, spent
    finally:
        await d.close()


async def test_a_full_endpoint_makes_neither_daemon_spin(
    tmp_path: Path, pg_dsn: str, make_receiver: Any
) -> None:
    gate = Gate()
    receiver: Receiver = await make_receiver(responder=gate)
    [a] = await start_daemons(tmp_path, pg_dsn, "a")
    daemons = [a]
    try:
        await a.endpoint(receiver.url, max_in_flight=2)
        ids = [(await a.publish(payload={"n": i}))["id"] for i in range(6)]
        # a holds both slots with requests it cannot finish; the other four are due now.
        await wait_until(lambda: gate.open_now == 2, 10, "two open requests")
        # b starts: it sees the four due deliveries and every slot held by a.
        daemons += await start_daemons(tmp_path, pg_dsn, "b")
        delivering = "SELECT count(*) FROM deliveries WHERE status = 'delivering'"
        assert await count(pg_dsn, delivering) == 2
        spent = await cpu_over(daemons)
        print(f"a (slots all its own), b (slots all a's): {spent} CPU s in {CPU_WINDOW_S:g} s")
        assert max(spent) < CPU_BUDGET_S, spent
        # Nothing was claimed ahead: the four wait as pending, free for either daemon.
        assert await count(pg_dsn, delivering) == 2
        gate.opened.set()
        await receiver.wait_for(6)
        assert sorted(r.headers["webhook-id"] for r in receiver.received) == sorted(ids)
        assert gate.most_open == 2
    finally:
        gate.opened.set()
        for d in daemons:
            await d.close()


async def heartbeats(dsn: str, pid: int, window_s: float) -> int:
    """How many different heartbeat times the daemon with this pid shows in `window_s`."""
    sql = "SELECT heartbeat_at FROM daemons WHERE pid = %s"
    seen = {await count(dsn, sql, pid)}
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        seen.add(await count(dsn, sql, pid))
        await asyncio.sleep(0.05)
    return len(seen)


async def test_sighup_applies_the_default_limit_and_the_cluster_timings(
    tmp_path: Path, pg_dsn: str, make_receiver: Any
) -> None:
    gate = Gate()
    receiver: Receiver = await make_receiver(responder=gate)
    config = {"delivery": {"max_in_flight_per_endpoint": 1}}
    daemons = await start_daemons(tmp_path, pg_dsn, "ab", **config)
    a = daemons[0]
    try:
        await a.endpoint(receiver.url)  # no max_in_flight of its own: the default applies
        for i in range(6):
            await daemons[i % 2].publish(payload={"n": i})
        await wait_until(lambda: gate.open_now >= 1, 10, "an open request")
        # An absence check: both daemons have due work; the default limit of 1 holds for
        # both together (each asks for one, the claims allow one in all).
        await asyncio.sleep(0.5)
        assert gate.most_open == 1
        for d in daemons:
            d.config["delivery"]["max_in_flight_per_endpoint"] = 3
            d.config["cluster"] = {"heartbeat_s": 0.5}
            d.write_config()
            d.signal(signal.SIGHUP)
        for d in daemons:
            await wait_until(lambda d=d: "event=reloaded" in d.log_text(True), 10, "a reload")
            assert "needs_restart=none" in d.log_text(True)
        # The claims' default limit followed the dispatchers': three requests open at once.
        await wait_until(lambda: gate.open_now == 3, 10, "three open requests")
        # The heartbeat follows the new period (10 s before): several beats within 3 s.
        assert a.proc is not None
        assert await heartbeats(pg_dsn, a.proc.pid, 3.0) >= 3
        gate.opened.set()
        await receiver.wait_for(6)
        assert gate.most_open == 3
    finally:
        gate.opened.set()
        for d in daemons:
            await d.close()
