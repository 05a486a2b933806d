"""The state the SQLite store's database thread shares with the event loop (the rule is
in webhookd/store/sqlite/__init__.py): publishes fan out in the database thread while
the event loop creates, updates, deletes and disables endpoints, and every publish sees
one consistent set of endpoints, never one a change had already replaced."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.conftest import new_event
from webhookd.store.sqlite import SQLiteStore

STABLE = 150  # never changed: every event goes to each exactly once
DOOMED = 20  # disabled in this daemon's view (as the dispatcher does) during the run
WAVES = 25  # concurrent publishes per wave share a transaction
PER_WAVE = 12
CHURN = 30  # endpoints created, changed and deleted during the run


@dataclass
class Clock:
    """The event loop's order of things: a tick per step."""

    now: int = 0
    published: dict[str, tuple[int, int]] = field(default_factory=dict)  # event: start, end
    disabled: dict[str, int] = field(default_factory=dict)  # endpoint: tick
    deleted: dict[str, int] = field(default_factory=dict)  # endpoint: tick it was done

    def tick(self) -> int:
        self.now += 1
        return self.now


async def publisher(store: SQLiteStore, clock: Clock) -> None:
    async def one(n: int) -> None:
        ev = new_event(n)
        start = clock.tick()
        await store.publish([ev])
        clock.published[ev.id] = (start, clock.tick())

    for wave in range(WAVES):
        await asyncio.gather(*(one(wave * PER_WAVE + i) for i in range(PER_WAVE)))


async def doomer(store: SQLiteStore, clock: Clock, doomed: list[str], rand: random.Random) -> None:
    """Disable the doomed endpoints one by one, spread over the publishing: the loop runs
    while the database thread is in a transaction almost all the time, so most changes
    land while a fan-out may be walking the endpoints."""
    deadline = time.monotonic() + 30
    total = WAVES * PER_WAVE
    for i, endpoint_id in enumerate(doomed):
        # A bounded spin of loop turns (not a wait for time): until the publishing has
        # reached this endpoint's share, then a few turns more.
        while len(clock.published) < i * total // len(doomed) and time.monotonic() < deadline:
            await asyncio.sleep(0)
        for _ in range(rand.randrange(1, 40)):
            await asyncio.sleep(0)
        store.disable_in_view(endpoint_id, "gone")
        clock.disabled[endpoint_id] = clock.tick()


async def churner(store: SQLiteStore, clock: Clock, url: str) -> None:
    for i in range(CHURN):
        ep = await store.create_endpoint({"url": f"{url}/churn/{i}", "secret": "whsec_x"})
        await store.update_endpoint(ep.id, {"events": ["other.type"]})
        await store.update_endpoint(ep.id, {"events": ["*"], "active": i % 2 == 0})
        await store.rotate_secret(ep.id, f"whsec_{i}", 0)
        await store.delete_endpoint(ep.id)
        clock.deleted[ep.id] = clock.tick()


def deliveries(store: SQLiteStore) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(store.path)
    try:
        return conn.execute("SELECT event_id, endpoint_id, status FROM deliveries").fetchall()
    finally:
        conn.close()


async def test_fan_out_while_the_loop_changes_endpoints(store: SQLiteStore) -> None:
    url = "https://example.com"
    stable = [
        (await store.create_endpoint({"url": f"{url}/s/{i}", "secret": "whsec_x"})).id
        for i in range(STABLE)
    ]
    doomed = [
        (await store.create_endpoint({"url": f"{url}/d/{i}", "secret": "whsec_x"})).id
        for i in range(DOOMED)
    ]
    clock = Clock()
    await asyncio.gather(
        publisher(store, clock),
        doomer(store, clock, doomed, random.Random(7)),
        churner(store, clock, url),
    )
    rows = deliveries(store)
    assert len(clock.published) == WAVES * PER_WAVE
    # One delivery per (event, endpoint), and every stable endpoint got every event.
    pairs = Counter((event_id, endpoint_id) for event_id, endpoint_id, _ in rows)
    assert max(pairs.values()) == 1
    per_event: dict[str, set[str]] = defaultdict(set)
    status = {}
    for event_id, endpoint_id, st in rows:
        per_event[event_id].add(endpoint_id)
        status[event_id, endpoint_id] = st
    for event_id in clock.published:
        assert per_event[event_id] >= set(stable) | set(doomed)
    # A publish that began after an endpoint was disabled in the view skipped it; one
    # that ended before made it pending.
    for endpoint_id, disabled_at in clock.disabled.items():
        for event_id, (start, end) in clock.published.items():
            if start > disabled_at:
                assert status[event_id, endpoint_id] == "skipped", (event_id, endpoint_id)
            elif end < disabled_at:
                assert status[event_id, endpoint_id] == "pending", (event_id, endpoint_id)
    # Nothing reached an endpoint once its deletion was done, and nothing of a deleted
    # endpoint is left pending.
    for endpoint_id, deleted_at in clock.deleted.items():
        for event_id, (start, _) in clock.published.items():
            if start > deleted_at:
                assert endpoint_id not in per_event[event_id]
    assert not [r for r in rows if r[1] in clock.deleted and r[2] == "pending"]
    # The view ends as the database: the same endpoints, the churned ones gone.
    page = await store.list_endpoints(cursor=None, limit=1000)
    assert {e.id for e in store.endpoints()} == {e.id for e in page.data}
    assert {e.id for e in page.data} == set(stable) | set(doomed)
