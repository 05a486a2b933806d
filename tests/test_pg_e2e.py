"""Three daemon processes on one PostgreSQL database, end to end: thousands of events
published through all three in turn, one daemon SIGKILLed midway, and at a scripted
receiver every accepted event arrives, max_in_flight holds for all daemons together, the
ordered endpoint gets its events in publish order and the rate limit holds over all
daemons; the cluster listing shows the two survivors once the dead one's lease is over."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Daemon, wait_until

# Short timings, so that the dead daemon's claims come back within seconds: the lease is
# the shortest the config allows with a 1 s request timeout (timeout_s + 5).
LEASE_S = 6.0
CONFIG: dict[str, Any] = {
    "event_types": [
        {"name": "e2e.plain"},
        {"name": "e2e.limited"},
        {"name": "e2e.ordered"},
        {"name": "e2e.rated"},
    ],
    "delivery": {"timeout_s": 1, "retry_schedule_s": [0.2, 0.4, 0.8, 1.6], "jitter": 0},
    "cluster": {"lease_s": LEASE_S, "heartbeat_s": 1},
}
# Events per type: every event also goes to the plain endpoint (it takes "*").
EVENTS = {"e2e.plain": 1400, "e2e.limited": 450, "e2e.ordered": 200, "e2e.rated": 250}
LIMIT = 3  # the limited endpoint's max_in_flight
HOLD_S = 0.02  # how long the receiver holds each request to it, so that concurrency builds
RATE = 50  # the rated endpoint's rate_limit_per_s
# The rate check's slack over RATE in any 1 s window of arrivals: the shared bucket holds
# at most one token (max(1, rate * 10 ms)), so claims in any 1 s window are at most
# RATE + 1; an arrival trails its claim by the request's set-up time, which varies by a
# few ms to a few tens on a loaded 2-core machine, so a window of arrivals may hold the
# claims of a window up to ~60 ms longer: 3 more at 50/s. 5 in all.
RATE_SLACK = 5
PUBLISHERS = 3  # concurrent publishing tasks, in batches (besides the ordered events')
BATCH = 20


@dataclass
class Hit:
    event_id: str
    start: float
    end: float = 0.0


@dataclass
class Recorder:
    """The scripted receiver: one path per endpoint; arrival and finish time of every
    request, and the most requests open at once per path."""

    hits: dict[str, list[Hit]] = field(default_factory=lambda: defaultdict(list))
    open_now: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    most_open: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        path = request.match_info["name"]
        hit = Hit(request.headers["webhook-id"], time.monotonic())
        self.hits[path].append(hit)
        self.open_now[path] += 1
        self.most_open[path] = max(self.most_open[path], self.open_now[path])
        try:
            if path == "limited":
                await asyncio.sleep(HOLD_S)  # a slow receiver, not a wait for a state
            return web.Response(status=200)
        finally:
            self.open_now[path] -= 1
            hit.end = time.monotonic()

    def seen(self, path: str) -> set[str]:
        return {h.event_id for h in self.hits[path]}

    def first_arrivals(self, path: str) -> list[str]:
        return list(dict.fromkeys(h.event_id for h in self.hits[path]))

    def busiest_second(self, path: str) -> int:
        """The most arrivals in any 1 s window."""
        times = sorted(h.start for h in self.hits[path])
        return max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    app = web.Application()
    app.router.add_post("/{name}", rec.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@dataclass
class Publishing:
    """Events published round robin through the live daemons; `accepted` holds the ids
    answered 202 (or 200) per type, the ordered ones in publish order."""

    daemons: list[Daemon]
    accepted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    refused: int = 0
    turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.accepted.values())

    async def send(self, events: list[tuple[str, int]]) -> None:
        """Publish these (type, n) events on the next live daemon: one event alone, or
        several in one batch."""
        d = self.daemons[next(self.turn) % len(self.daemons)]
        bodies = [
            {"type": t, "id": f"evt_{t.split('.')[1]}_{n:05d}", "payload": {"n": n}}
            for t, n in events
        ]
        try:
            if len(bodies) == 1:
                r = await d.post("/v1/events", bodies[0])
            else:
                r = await d.post("/v1/events/batch", {"events": bodies})
        except aiohttp.ClientError:
            self.refused += len(bodies)  # the daemon was killed under this request
            return
        if r.status not in (200, 202):
            self.refused += len(bodies)
            return
        for body in bodies:
            self.accepted[body["type"]].append(body["id"])

    async def one_by_one(self, event_type: str, count: int) -> None:
        for n in range(count):
            await self.send([(event_type, n)])

    async def batches(self, plan: list[tuple[str, int]]) -> None:
        for i in range(0, len(plan), BATCH):
            await self.send(plan[i : i + BATCH])


def interleaved() -> list[list[tuple[str, int]]]:
    """The unordered events, mixed by type and dealt to PUBLISHERS tasks; the rated ones
    all in the first third, so that they come faster than the rate and wait for it."""
    spread = {"e2e.rated": 3.0}
    events = [(t, n) for t, count in EVENTS.items() if t != "e2e.ordered" for n in range(count)]
    events.sort(key=lambda e: e[1] / EVENTS[e[0]] / spread.get(e[0], 1.0))
    return [events[i::PUBLISHERS] for i in range(PUBLISHERS)]


async def make_endpoints(d: Daemon, url: str) -> None:
    await d.endpoint(f"{url}/plain", events=["*"], max_in_flight=20)
    await d.endpoint(f"{url}/limited", events=["e2e.limited"], max_in_flight=LIMIT)
    await d.endpoint(f"{url}/ordered", events=["e2e.ordered"], ordered=True)
    await d.endpoint(f"{url}/rated", events=["e2e.rated"], rate_limit_per_s=RATE)


async def kill_midway(pub: Publishing, victim: Daemon) -> float:
    """SIGKILL `victim` once half of the events are accepted and it has requests open (so
    that it dies holding claims); publishing goes on through the others. Returns when."""
    half = sum(EVENTS.values()) // 2
    await wait_until(lambda: pub.total >= half, 60, "half of the events to be published")

    async def busy() -> bool:
        r = await victim.get("/v1/cluster")
        return any(m["in_flight"] >= 2 for m in r.json["daemons"] if m["pid"] == victim_pid)

    assert victim.proc is not None
    victim_pid = victim.proc.pid
    await wait_until(busy, 30, "the victim to have requests open")
    pub.daemons.remove(victim)
    victim.kill()
    return time.monotonic()


async def cluster_pids(d: Daemon) -> set[int] | None:
    r = await d.get("/v1/cluster")
    assert r.status == 200, r
    return {m["pid"] for m in r.json["daemons"]}


def check_delivered(rec: Recorder, pub: Publishing) -> bool:
    every = {i for ids in pub.accepted.values() for i in ids}
    if not every <= rec.seen("plain"):
        return False
    return all(
        set(pub.accepted[f"e2e.{path}"]) <= rec.seen(path)
        for path in ("limited", "ordered", "rated")
    )


async def test_three_daemons_one_killed_midway(
    tmp_path: Path, pg_dsn: str, recorder: Recorder
) -> None:
    daemons: list[Daemon] = []
    try:
        for name in "abc":
            (tmp_path / name).mkdir()
            daemons.append(await Daemon(tmp_path / name, {"database": pg_dsn, **CONFIG}).start())
        await make_endpoints(daemons[0], recorder.url)
        # Every view has the endpoints once an event published on each fans out to the
        # last one made (and to plain); those deliveries are done before the run starts.
        warm: list[int] = []
        for d in daemons:
            await wait_until(lambda d=d: _fans_out(d, warm), 5, "the endpoints in every view")
        await wait_until(
            lambda: sum(map(len, recorder.hits.values())) == sum(warm), 10, "the warm-up"
        )
        recorder.hits.clear()
        started = time.monotonic()
        pub = Publishing(list(daemons))
        victim = daemons[2]
        *_, killed_at = await asyncio.gather(
            pub.one_by_one("e2e.ordered", EVENTS["e2e.ordered"]),
            *(pub.batches(plan) for plan in interleaved()),
            kill_midway(pub, victim),
        )
        published_s = time.monotonic() - started
        await wait_until(lambda: check_delivered(recorder, pub), 40, "every accepted event")
        delivered_s = time.monotonic() - started
        survivors = [d for d in daemons if d is not victim]
        assert {d.proc.pid for d in survivors if d.proc} == await wait_until(
            lambda: _survivors_listed(survivors), LEASE_S + 10, "the cluster to list two"
        )
        hits = {p: len(h) for p, h in recorder.hits.items()}
        # The victim died holding claims: a survivor gave them back once their lease ran out.
        assert any("event=claims_reaped" in d.log_text() for d in survivors)
        print(
            f"{pub.total} events accepted ({pub.refused} refused) in {published_s:.1f} s, "
            f"killed at {killed_at - started:.1f} s, all delivered at {delivered_s:.1f} s; "
            f"requests {hits}; most open at once "
            f"{dict(recorder.most_open)}; busiest second of the rated endpoint "
            f"{recorder.busiest_second('rated')}"
        )
        # max_in_flight holds for the three daemons together, and was reached.
        assert recorder.most_open["limited"] == LIMIT
        # The ordered endpoint: first arrivals in publish order (a delivery the dead daemon
        # had in flight may come again, after its lease, as a repeat).
        accepted = set(pub.accepted["e2e.ordered"])
        firsts = [i for i in recorder.first_arrivals("ordered") if i in accepted]
        assert firsts == pub.accepted["e2e.ordered"]
        assert recorder.busiest_second("rated") <= RATE + RATE_SLACK
    finally:
        for d in daemons:
            await d.close()


async def _fans_out(d: Daemon, made: list[int]) -> bool:
    """Whether a rated event published on `d` goes to both plain and rated (the last
    endpoint made); the deliveries it made are added to `made`."""
    r = await d.post("/v1/events", {"type": "e2e.rated", "payload": {}})
    assert r.status == 202, r
    made.append(int(r.json["deliveries"]))
    return made[-1] == 2


async def _survivors_listed(survivors: list[Daemon]) -> set[int] | None:
    pids = await cluster_pids(survivors[0])
    return pids if pids is not None and len(pids) == len(survivors) else None
