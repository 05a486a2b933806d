"""The store's behaviour on both backends (PostgreSQL and SQLite give the same answers),
and what only a database shared by several daemons has: views kept current across
stores, idempotency across daemons, one notification per publish, batched retention."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import new_event, wait_until
from webhookd.store.codec import body_hash
from webhookd.store.models import Conflict, NewEvent, NotFound, StorageError
from webhookd.timefmt import now_ms

EP = {"url": "https://example.com/h", "secret": "whsec_" + "A" * 32}


def keyed(event_id: str, tenant: str | None = None, n: int = 0) -> NewEvent:
    payload = {"n": n}
    import orjson

    return NewEvent(
        id=event_id,
        type="order.created",
        tenant=tenant,
        payload_json=orjson.dumps(payload),
        body_hash=body_hash("order.created", tenant, payload, None),
        deliver_at=None,
    )


async def test_endpoint_crud(store: Any) -> None:
    ep = await store.create_endpoint({**EP, "metadata": {"b": "1", "a": "2"}, "ordered": True})
    assert store.endpoint(ep.id) == ep
    assert (await store.get_endpoint(ep.id)) == ep
    assert list(ep.metadata) == ["b", "a"]  # key order kept
    up = await store.update_endpoint(ep.id, {"description": "x", "active": False})
    assert up.description == "x" and not up.active and up.ordered
    assert store.endpoint(ep.id) == up
    rotated = await store.rotate_secret(ep.id, "whsec_" + "B" * 32, 60)
    assert rotated.secret.endswith("B" * 32)
    assert rotated.previous_secrets[0].secret == ep.secret
    await store.delete_endpoint(ep.id)
    assert store.endpoint(ep.id) is None
    with pytest.raises(NotFound):
        await store.get_endpoint(ep.id)
    with pytest.raises(NotFound):
        await store.delete_endpoint(ep.id)


async def test_publish_fan_out_and_idempotency(store: Any) -> None:
    ep = await store.create_endpoint(EP)
    [first] = await store.publish([keyed("evt_a")])
    assert first.created and first.deliveries == 1 and first.due[0][0] == ep.id
    [again] = await store.publish([keyed("evt_a")])
    assert not again.created and again.deliveries == 1
    assert again.event.seq == first.event.seq
    with pytest.raises(Conflict):
        await store.publish([keyed("evt_a", n=1)])
    # Another tenant's id is another event.
    [other] = await store.publish([keyed("evt_a", tenant="t2")])
    assert other.created and other.deliveries == 0
    event, deliveries = await store.get_event("evt_a", None)
    assert event.payload_json == b'{"n":0}' and [d.endpoint_id for d in deliveries] == [ep.id]


async def test_a_batch_is_all_or_nothing(store: Any) -> None:
    await store.create_endpoint(EP)
    await store.publish([keyed("evt_b")])
    with pytest.raises(Conflict):
        await store.publish([keyed("evt_c"), keyed("evt_b", n=5)])
    with pytest.raises(NotFound):
        await store.get_event("evt_c", None)
    results = await store.publish([new_event(i) for i in range(300)])
    assert [r.deliveries for r in results] == [1] * 300
    page = await store.list_deliveries(cursor=None, limit=250)
    assert len(page.data) == 250 and page.next_cursor is not None


async def test_pages_are_newest_first_with_cursors(store: Any) -> None:
    ep = await store.create_endpoint(EP)
    results = await store.publish([new_event(i) for i in range(7)])
    ids: list[str] = []
    cursor = None
    while True:
        page = await store.list_events(cursor=cursor, limit=3)
        ids += [e.id for e in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert ids == [r.event.id for r in reversed(results)]
    page = await store.list_deliveries(endpoint_id=ep.id, cursor=None, limit=2)
    assert [d.event_id for d in page.data] == [r.event.id for r in results[::-1][:2]]
    by_event = await store.list_deliveries(event_id=results[0].event.id, cursor=None, limit=5)
    assert [d.id for d in by_event.data] == list(results[0].delivery_ids)
    eps = await store.list_endpoints(tenant=None, cursor=None, limit=10)
    assert [e.id for e in eps.data] == [ep.id]


async def test_claim_record_retry_recover_stats(store: Any) -> None:
    from webhookd.store.models import Attempt, Outcome

    ep = await store.create_endpoint(EP)
    [res] = await store.publish([new_event(1)])
    claimed, _ = await store.claim({ep.id: 5}, now_ms())
    assert [c.delivery_id for c in claimed] == list(res.delivery_ids)
    c = claimed[0]
    assert c.event.payload_json == b'{"n":1}'
    attempt = Attempt(
        1,
        now_ms(),
        12,
        "scheduled",
        "json",
        {"a": "b"},
        500,
        {"x": "y"},
        "body\x00with NUL",
        "http_status",
        "oops\x00",
    )
    await store.record(
        Outcome(c.delivery_id, ep.id, attempt, "failed", None, 1, 0, False, lease=c.lease)
    )
    delivery, attempts = await store.get_delivery(c.delivery_id)
    assert delivery.status == "failed" and delivery.attempt_count == 1
    assert attempts[0].response_body == "body\x00with NUL"
    assert attempts[0].request_headers == {"a": "b"}
    stats = await store.endpoint_stats(ep.id, 0)
    assert stats["counts"] == {"failed": 1} and stats["success_rate_24h"] == 0.0
    assert store.endpoint(ep.id).failing_since == attempt.started_at
    assert await store.recover(ep.id, 0, None) == 1
    assert (await store.get_delivery(c.delivery_id))[0].status == "pending"
    retried = await store.retry_delivery(c.delivery_id)
    assert retried.status == "pending"
    pending, oldest = await store.backlog(now_ms() + 1000)
    assert pending == 1 and oldest is not None and oldest >= 1000


async def test_retention_purges_finished_events_only(store: Any) -> None:
    await store.create_endpoint(EP)
    await store.publish([new_event(i) for i in range(3)])
    assert await store.purge_before(now_ms() + 1000, 100) == 0  # all pending
    await store.create_endpoint({**EP, "active": False})
    ep2 = await store.create_endpoint(EP)
    await store.delete_endpoint(ep2.id)
    assert await store.write_problem() is None


# --- several daemons on one PostgreSQL database ---------------------------------------


class Heard:
    """A subscriber that records what the store tells it."""

    def __init__(self) -> None:
        self.due_items: list[tuple[str, int]] = []
        self.changed: list[str] = []
        self.deleted: list[str] = []

    def due(self, items: Any) -> None:
        self.due_items.extend(items)

    def due_ids(self) -> set[str]:
        return {e for e, _ in self.due_items}

    def handed_over(self, claimed: list[Any]) -> None:
        raise AssertionError("PostgreSQL hands nothing over")

    def endpoint_changed(self, endpoint_id: str) -> None:
        self.changed.append(endpoint_id)

    def endpoint_deleted(self, endpoint_id: str) -> None:
        self.deleted.append(endpoint_id)


def _hear(store: Any) -> Heard:
    heard = Heard()
    store.subscribe(heard)
    return heard


@contextlib.asynccontextmanager
async def opened(dsn: str) -> AsyncIterator[Any]:
    from webhookd.store.postgres import PostgresStore

    s = PostgresStore(dsn)
    await s.open()
    try:
        await wait_until(s.listener.connected.is_set, 10, "the LISTEN connection")
        yield s
    finally:
        await s.close()


async def test_views_follow_other_daemons_changes(pg_dsn: str) -> None:
    async with opened(pg_dsn) as a, opened(pg_dsn) as b:
        heard = _hear(b)
        ep = await a.create_endpoint(EP)
        await wait_until(lambda: b.endpoint(ep.id) == ep, 5, "b to see the new endpoint")
        assert ep.id in heard.changed
        up = await a.update_endpoint(ep.id, {"description": "changed on a"})
        await wait_until(lambda: b.endpoint(ep.id) == up, 5, "b to see the change")
        await a.create_event_type("order.shipped", "")
        await wait_until(lambda: b.has_event_type("order.shipped"), 5, "b to see the type")
        await a.delete_endpoint(ep.id)
        await wait_until(lambda: b.endpoint(ep.id) is None, 5, "b to see the deletion")
        assert heard.deleted == [ep.id]
        # b publishes to what it sees: nothing now.
        [res] = await b.publish([new_event(1)])
        assert res.deliveries == 0


async def test_a_publish_on_one_daemon_is_due_on_the_others(pg_dsn: str) -> None:
    async with opened(pg_dsn) as a, opened(pg_dsn) as b:
        ep = await a.create_endpoint(EP)
        await wait_until(lambda: b.endpoint(ep.id) is not None, 5, "b to see the endpoint")
        heard_a, heard_b = _hear(a), _hear(b)
        await a.publish([new_event(1)])
        await wait_until(lambda: ep.id in heard_b.due_ids(), 5, "b to hear of the publish")
        # a heard at once (after its commit), and not a second time through NOTIFY.
        assert heard_a.due_ids() == {ep.id} and len(heard_a.due_items) == 1


async def test_one_notification_per_publish_never_per_row(pg_dsn: str) -> None:
    import psycopg

    from webhookd.store.postgres.wakeups import WAKE_CHANNEL

    async with opened(pg_dsn) as a:
        for _ in range(3):
            await a.create_endpoint(EP)
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as listen:
            await listen.execute(f"LISTEN {WAKE_CHANNEL}")
            await a.publish([new_event(i) for i in range(200)])  # 600 deliveries
            await a.publish([new_event(0)])
            await listen.execute("SELECT 1")
            notes = [n async for n in listen.notifies(timeout=0.5)]
    published = [n for n in notes if '"seq"' in n.payload or '"due"' in n.payload]
    assert len(published) == 2


async def test_idempotency_holds_across_daemons(pg_dsn: str) -> None:
    async with opened(pg_dsn) as a, opened(pg_dsn) as b:
        await a.create_endpoint(EP)
        [first] = await a.publish([keyed("evt_x", tenant=None)])
        [again] = await b.publish([keyed("evt_x", tenant=None)])
        assert not again.created and again.event.seq == first.event.seq
        assert again.deliveries == first.deliveries
        with pytest.raises(Conflict):
            await b.publish([keyed("evt_x", n=2)])
        # Racing: the same new ids published on both daemons at once, many times over.
        for i in range(20):
            results = await asyncio.gather(
                a.publish([keyed(f"evt_r{i}", "t")]), b.publish([keyed(f"evt_r{i}", "t")])
            )
            created = [r[0].created for r in results]
            assert sorted(created) == [False, True]
            assert results[0][0].event.seq == results[1][0].event.seq
        page = await a.list_events(tenant="t", cursor=None, limit=250)
        assert len(page.data) == 20


async def test_stores_opening_together_migrate_once(pg_empty_dsn: str) -> None:
    from webhookd.store.postgres import PostgresStore

    stores = [PostgresStore(pg_empty_dsn) for _ in range(4)]
    await asyncio.gather(*[s.open() for s in stores])
    try:
        await asyncio.gather(*[s.sync_event_types([]) for s in stores])
        ep = await stores[0].create_endpoint(EP)
        assert (await stores[3].get_endpoint(ep.id)) == ep
        assert len(await stores[2].cluster()) == 4
    finally:
        await asyncio.gather(*[s.close() for s in stores])


async def test_a_daemon_leaving_gives_its_claims_back(pg_dsn: str) -> None:
    async with opened(pg_dsn) as a:
        ep = await a.create_endpoint(EP)
        await a.publish([new_event(i) for i in range(3)])
        async with opened(pg_dsn) as b:
            claimed, _ = await b.claim({ep.id: 3}, now_ms())
            assert len(claimed) == 3
            assert await a.requeue_interrupted() == 0  # b is alive: its claims stay
            assert (await a.claim({ep.id: 3}, now_ms()))[0] == []
        # b closed: what it had not attempted is pending again, for a.
        claimed, _ = await a.claim({ep.id: 3}, now_ms())
        assert len(claimed) == 3


async def test_retention_deletes_in_small_batches(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webhookd.store.postgres import store as pg_store

    monkeypatch.setattr(pg_store, "PURGE_BATCH", 4)
    async with opened(pg_dsn) as a:
        ep = await a.create_endpoint(EP)
        await a.publish([new_event(i) for i in range(10)])
        await a.update_endpoint(ep.id, {"active": False})  # all skipped: finished
        await a.publish([new_event(99)])  # skipped too
        kept = await a.create_endpoint(EP)
        [pending] = await a.publish([new_event(100)])
        assert await a.purge_before(now_ms() + 1000, 7) == 7
        assert await a.purge_before(now_ms() + 1000, 100) == 4
        page = await a.list_events(cursor=None, limit=10)
        assert [e.id for e in page.data] == [pending.event.id]
        assert kept.id


async def test_readiness_fails_while_the_database_refuses(pg_dsn: str) -> None:
    import psycopg

    async with opened(pg_dsn) as a:
        assert await a.write_problem() is None
        dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
        admin_dsn = psycopg.conninfo.make_conninfo(pg_dsn, dbname="postgres")
        async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as admin:
            await admin.execute(f"ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS false")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )
            problem = await a.write_problem(timeout_s=10)
            assert problem is not None and problem.startswith("storage cannot write")
            with pytest.raises(StorageError):
                await a.publish([new_event(1)])
            await admin.execute(f"ALTER DATABASE {dbname} WITH ALLOW_CONNECTIONS true")
        await wait_until(lambda: _writes(a), 15, "writes to work again")


async def _writes(store: Any) -> bool:
    return await store.write_problem() is None


async def test_open_store_opens_postgresql_for_a_dsn(pg_dsn: str) -> None:
    from webhookd.config import config_from_mapping
    from webhookd.store import open_store
    from webhookd.store.postgres import PostgresStore

    store = open_store(config_from_mapping({"database": pg_dsn, "delivery": {"timeout_s": 10}}))
    assert isinstance(store, PostgresStore)
    assert store.claims.lease_ms == 70_000  # delivery.timeout_s + 60 s
    await store.open()
    try:
        assert await store.write_problem() is None
    finally:
        await store.close()


async def test_a_full_reload_keeps_changes_made_while_it_reads(pg_dsn: str) -> None:
    # The view is read again whole at every (re)connection of the LISTEN connection; an
    # endpoint created, changed or deleted meanwhile must keep its newer state.
    async with opened(pg_dsn) as a:
        doomed = await a.create_endpoint(EP)
        made, *_ = await asyncio.gather(
            asyncio.gather(*[a.create_endpoint(EP) for _ in range(200)]),
            a.delete_endpoint(doomed.id),
            *[a.reload_view() for _ in range(6)],
        )
        assert all(a.endpoint(ep.id) == ep for ep in made)
        assert a.endpoint(doomed.id) is None
        await a.reload_view()
        assert len(a.endpoints()) == 200


async def test_views_catch_up_after_the_listen_connection_is_lost(pg_dsn: str) -> None:
    import psycopg

    async with opened(pg_dsn) as a, opened(pg_dsn) as b:
        async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
            pids = [a.listener.backend_pid, b.listener.backend_pid]
            assert None not in pids
            cur = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS p(pid)", (pids,)
            )
            assert [r[0] for r in await cur.fetchall()] == [True, True]
        # Made while a is not listening: its notification is lost, the reload finds it.
        ep = await b.create_endpoint(EP)
        await wait_until(lambda: a.endpoint(ep.id) == ep, 10, "a to see b's endpoint")
        await wait_until(a.listener.connected.is_set, 10, "a to listen again")
        up = await b.update_endpoint(ep.id, {"description": "after"})
        await wait_until(lambda: a.endpoint(ep.id) == up, 10, "a to hear of the change")


async def test_receiver_options_and_event_fields_round_trip(store: Any) -> None:
    """The columns of the receiver-facing options and of events' channels, trace context
    and erasure time are stored and read back the same on both backends, and a claim
    carries the event's traceparent to the dispatcher."""
    auth = {"type": "basic", "username": "u", "password": "p"}
    flt = {"data.n": {"$gt": 0}}  # the event below matches it
    ep = await store.create_endpoint({**EP, "auth": auth, "filter": flt, "channels": ["eu"]})
    for got in (ep, await store.get_endpoint(ep.id)):
        assert (got.auth, got.filter, got.channels) == (auth, flt, ("eu",))
    changed = await store.update_endpoint(ep.id, {"auth": None, "channels": None})
    assert (changed.auth, changed.filter, changed.channels) == (None, flt, None)

    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ev = new_event(1)
    ev.channels, ev.traceparent = ("eu", "us"), traceparent
    (res,) = await store.publish([ev])
    assert (res.event.channels, res.event.traceparent) == (("eu", "us"), traceparent)
    stored, _ = await store.get_event(ev.id)
    assert (stored.channels, stored.traceparent, stored.payload_erased_at) == (
        ("eu", "us"),
        traceparent,
        None,
    )
    page = await store.list_events(cursor=None, limit=10)
    assert [e.traceparent for e in page.data] == [traceparent]
    claimed, _ = await store.claim({ep.id: 5}, now_ms())
    assert [c.event.traceparent for c in claimed] == [traceparent]


async def test_a_batch_mixing_plain_events_and_events_with_channels_keeps_each(
    store: Any,
) -> None:
    """SQLite inserts events without channels or trace context apart from the others:
    in one batch, every event keeps its own fields and its place in publish order."""
    evs = [new_event(n) for n in range(6)]
    evs[1].channels = ("eu",)
    evs[4].traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    results = await store.publish(evs)
    assert [r.event.seq for r in results] == sorted(r.event.seq for r in results)
    for ev, res in zip(evs, results, strict=True):
        stored, _ = await store.get_event(ev.id)
        assert (stored.seq, stored.channels, stored.traceparent, stored.payload_json) == (
            res.event.seq,
            ev.channels,
            ev.traceparent,
            ev.payload_json,
        )
    page = await store.list_events(cursor=None, limit=10)
    assert [e.id for e in page.data] == [ev.id for ev in reversed(evs)]


async def test_an_erased_events_id_cannot_be_published_again_and_says_why(store: Any) -> None:
    """Erasure drops the body hash, so no later publish can be an idempotent repeat: the
    same id is a Conflict that names the erasure, not a "different body"."""
    (first,) = await store.publish([keyed("evt_kept")])
    assert first.created
    await store.erase_payload("evt_kept")
    with pytest.raises(Conflict, match="payload has been erased; publish with a new id"):
        await store.publish([keyed("evt_kept")])
    with pytest.raises(Conflict, match=r"evt_kept \(events\[1\]\) was already used, and"):
        await store.publish([keyed("evt_other"), keyed("evt_kept")])
    with pytest.raises(Conflict, match="different body"):
        await store.publish([keyed("evt_other"), keyed("evt_other", n=1)])
