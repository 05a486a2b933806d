"""Freshly published deliveries handed straight to the dispatcher (store/handoff.py):
claimed inside the publish transaction, so the first attempt needs no claim of its own."""

from __future__ import annotations

import asyncio
import sqlite3

import orjson
import pytest

from tests.conftest import Daemon, Receiver, new_event, wait_until
from webhookd.config import DeliveryConfig
from webhookd.dispatcher import Dispatcher
from webhookd.store.models import Claimed, Endpoint, NewEvent, StorageError
from webhookd.store.sqlite import SQLiteStore


def statuses(store: SQLiteStore) -> dict[str, str]:
    conn = sqlite3.connect(store.path)
    try:
        return dict(conn.execute("SELECT id, status FROM deliveries").fetchall())
    finally:
        conn.close()


async def test_offered_slots_are_claimed_in_the_publish_transaction(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ep.id: 2})
    payload = '{"amount": 12.50, "name": "Zoë"}'.encode()
    results = await store.publish([new_event(payload=payload), new_event(), new_event()])
    # Two slots offered: two deliveries arrive claimed, with the exact payload bytes; the
    # third is pending and reported as due, for the dispatcher to claim.
    assert [c.delivery_id for c in received] == [
        results[0].delivery_ids[0],
        results[1].delivery_ids[0],
    ]
    assert received[0].event.payload_json == payload
    assert received[0].event.id == results[0].event.id
    assert (received[0].attempt_count, received[0].failures, received[0].manual) == (0, 0, False)
    assert results[0].due == () and results[1].due == ()
    assert [d for d, _ in results[2].due] == [ep.id]
    assert statuses(store) == {
        results[0].delivery_ids[0]: "delivering",
        results[1].delivery_ids[0]: "delivering",
        results[2].delivery_ids[0]: "pending",
    }
    # Settled once committed; the offer is used up.
    assert store.offers.in_transit(ep.id) == 0
    assert not store.offers.take(ep.id)


async def test_no_offer_no_receiver_or_not_due_means_pending(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    received: list[Claimed] = []
    # No offer at all.
    store.offers.receiver = received.extend
    [r1] = await store.publish([new_event()])
    # An offer, but the delivery is not due yet.
    store.offers.replace({ep.id: 5})
    [r2] = await store.publish([new_event(deliver_at=2**42)])
    # An offer, but the dispatcher has stopped.
    store.offers.close()
    store.offers.replace({ep.id: 5})
    [r3] = await store.publish([new_event()])
    assert received == []
    assert set(statuses(store).values()) == {"pending"}
    assert len(r1.due) == len(r2.due) == len(r3.due) == 1


async def test_ordered_and_rate_limited_endpoints_are_never_handed_over(
    store: SQLiteStore,
) -> None:
    ordered = await store.create_endpoint(
        {"url": "https://example.com/o", "secret": "whsec_x", "ordered": True}
    )
    limited = await store.create_endpoint(
        {"url": "https://example.com/l", "secret": "whsec_x", "rate_limit_per_s": 5}
    )
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ordered.id: 5, limited.id: 5})
    [r] = await store.publish([new_event()])
    assert received == []
    assert sorted(d for d, _ in r.due) == sorted([ordered.id, limited.id])
    assert set(statuses(store).values()) == {"pending"}


async def test_a_rolled_back_publish_hands_nothing_over_and_settles(
    store: SQLiteStore,
) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ep.id: 3})
    # Inserting deliveries fails inside the publish transaction.
    conn = sqlite3.connect(store.path)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON deliveries BEGIN "
        "SELECT RAISE(ABORT, 'refused by test'); END"
    )
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError):
        await store.publish([new_event(), new_event()])
    assert received == []
    assert store.offers.in_transit(ep.id) == 0
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    # Nothing of the failed publish was stored; the next publish is handed over again
    # once the dispatcher renews its offer.
    assert statuses(store) == {}
    store.offers.replace({ep.id: 3})
    await store.publish([new_event()])
    assert len(received) == 1


async def test_a_failed_transaction_settles_the_taken_slots(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ep.id: 3})
    assert store.writer is not None

    # A job in the same batch whose error fails the whole transaction (disk trouble).
    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    import asyncio

    results = await asyncio.gather(
        store.publish([new_event()]), store.writer.run(broken), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) for r in results), results
    assert received == []
    assert store.offers.in_transit(ep.id) == 0
    assert statuses(store) == {}


async def test_conflicting_batch_takes_no_slot(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    first = new_event()
    first.body_hash = b"a"
    await store.publish([first])
    store.offers.replace({ep.id: 3})
    again = NewEvent(first.id, first.type, None, b'{"other":1}', b"b", None)
    with pytest.raises(Exception, match="different body"):
        await store.publish([new_event(), again])
    assert received == []
    assert store.offers.in_transit(ep.id) == 0
    # The whole offer is still there for the next publish.
    results = await store.publish([new_event(), new_event(), new_event()])
    assert len(received) == 3
    assert all(r.due == () for r in results)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def test_a_daemon_delivers_fresh_events_without_a_claim_transaction(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    # The first delivery to a new endpoint goes through a claim; after it, the idle
    # endpoint offers its slots to publishing.
    await daemon.publish()
    await receiver.wait_for(1)

    async def transactions() -> float:
        return _metric(
            (await daemon.get("/metrics")).body.decode(), "webhookd_store_transactions_total"
        )

    async def settled(count: int) -> float | None:
        r = await daemon.get(f"/v1/deliveries?endpoint_id={ep['id']}&status=delivered")
        return await transactions() if len(r.json["data"]) == count else None

    before = await wait_until(lambda: settled(1), 10, "the first delivery recorded")
    rounds = 6
    for i in range(rounds):
        ev = await daemon.publish("call.completed", {"i": i})
        [*_, req] = await receiver.wait_for(2 + i)
        assert orjson.loads(req.body)["id"] == ev["id"]
        await wait_until(lambda n=2 + i: settled(n), 10, "the delivery recorded")
    after = await transactions()
    # Per event: the publish and the attempt's outcome (a claim would make it three).
    assert after - before <= 2 * rounds + 1, (before, after)
    r = await daemon.get(f"/v1/deliveries?endpoint_id={ep['id']}")
    assert {d["status"] for d in r.json["data"]} == {"delivered"}


def offered(store: SQLiteStore, endpoint_id: str) -> int:
    n = 0
    while store.offers.take(endpoint_id):
        n += 1
    store.offers.settle({endpoint_id: n})
    return n


async def unstarted_dispatcher(
    store: SQLiteStore, max_in_flight: int
) -> tuple[Endpoint, Dispatcher]:
    """An endpoint, and a dispatcher of 4 workers that is never started (no HTTP client):
    its bookkeeping is driven by hand."""
    ep = await store.create_endpoint(
        {"url": "https://example.com/h", "secret": "whsec_x", "max_in_flight": max_in_flight}
    )
    return ep, Dispatcher(store, None, DeliveryConfig(workers=4))  # type: ignore[arg-type]


async def test_the_dispatcher_offers_only_idle_room_within_its_workers(
    store: SQLiteStore,
) -> None:
    ep, d = await unstarted_dispatcher(store, max_in_flight=3)
    store.offers.receiver = lambda claimed: None
    now = 1_000_000
    st = d._state(ep.id)
    # Nothing pending: its limit plus three times as many claimed ahead.
    d._wants(now)
    assert offered(store, ep.id) == 3 + 9
    # Something pending but due later: the same.
    st.next_due = now + 60_000
    d._touch(ep.id)  # state changed by hand: the dispatcher is told
    d._wants(now)
    assert offered(store, ep.id) == 12
    # Due deliveries are waiting: they are claimed first, in order, and nothing is
    # offered to fresh ones.
    st.next_due = now - 1
    d._touch(ep.id)
    wants, _ = d._wants(now)
    assert wants == {ep.id: 12}
    assert offered(store, ep.id) == 0
    # Requests open and slots in transit count against the room.
    st.next_due = None
    st.in_flight = 2
    d._touch(ep.id)
    store.offers.replace({ep.id: 1})
    assert store.offers.take(ep.id)  # one in transit
    d._wants(now)
    assert offered(store, ep.id) == 9  # 12 - 2 open - 1 in transit
    # Never more than the free workers (four times the pool, less what is busy).
    st.in_flight = 0
    store.offers.settle({ep.id: 1})
    d._attempting = 14
    d._touch(ep.id)
    d._wants(now)
    assert offered(store, ep.id) == 2  # 16 - 14
    # A disabled endpoint offers nothing.
    d._attempting = 0
    store.refresh_endpoint_health(ep.id, active=False)
    d._touch(ep.id)
    d._wants(now)
    assert offered(store, ep.id) == 0
    # Stopping withdraws the dispatcher as the receiver of hand-overs.
    store.subscribe(d)
    assert store.offers.receiver == d.handed_over
    store.unsubscribe(d)
    assert store.offers.receiver is None


async def test_a_disabled_endpoint_gives_back_everything_claimed_ahead_at_once(
    store: SQLiteStore,
) -> None:
    ep, d = await unstarted_dispatcher(store, max_in_flight=1)
    received: list[Claimed] = []
    store.offers.receiver = received.extend
    store.offers.replace({ep.id: 3})
    results = await store.publish([new_event(), new_event(), new_event()])
    assert len(received) == 3
    st = d._state(ep.id)
    st.ready.extend(received)
    d._queued = 3
    # The request that disabled the endpoint still holds the endpoint's only slot.
    st.in_flight = d._attempting = 1
    store.refresh_endpoint_health(ep.id, active=False, disabled_reason="gone")
    d._start_ready(ep.id)
    # All three are given back together, not one per free slot.
    assert not st.ready and d._queued == 0
    assert len(d._tasks) == 3
    await asyncio.gather(*(t.task for t in d._tasks.values()))
    assert statuses(store) == {r.delivery_ids[0]: "skipped" for r in results}
    assert (st.in_flight, d._attempting) == (1, 1)
