"""The store's one subscription: after each commit, the SQLite store tells its subscriber
what became due and which endpoints changed; nothing is told of work rolled back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

import pytest

from tests.conftest import new_event
from webhookd.store.interface import Claimed, Conflict, DueListener, Store
from webhookd.store.sqlite import SQLiteStore
from webhookd.timefmt import now_ms


class Recorder:
    """A subscriber that writes down what it hears, and checks at each call that the
    change is already committed: a separate connection to the file must see it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.heard: list[tuple[str, Any]] = []

    def _committed(self, sql: str, *args: Any) -> Any:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def due(self, items: Iterable[tuple[str, int]]) -> None:
        items = list(items)
        for endpoint_id, _ in items:
            pending = self._committed(
                "SELECT COUNT(*) FROM deliveries WHERE endpoint_id=? AND status='pending'",
                endpoint_id,
            )
            assert pending[0][0] > 0, "told before the commit"
        self.heard.append(("due", items))

    def handed_over(self, claimed: list[Claimed]) -> None:
        self.heard.append(("handed_over", [c.delivery_id for c in claimed]))

    def endpoint_changed(self, endpoint_id: str) -> None:
        [(updated_at,)] = self._committed(
            "SELECT updated_at FROM endpoints WHERE id=?", endpoint_id
        )
        self.heard.append(("changed", (endpoint_id, updated_at)))

    def endpoint_deleted(self, endpoint_id: str) -> None:
        [(deleted_at,)] = self._committed(
            "SELECT deleted_at FROM endpoints WHERE id=?", endpoint_id
        )
        assert deleted_at is not None, "told before the commit"
        self.heard.append(("deleted", endpoint_id))

    def take(self) -> list[tuple[str, Any]]:
        heard, self.heard = self.heard, []
        return heard


@pytest.fixture
def recorder(store: SQLiteStore) -> Recorder:
    r = Recorder(store.path)
    listener: DueListener = r
    as_store: Store = store
    as_store.subscribe(listener)
    return r


async def test_publishing_tells_what_became_due(store: SQLiteStore, recorder: Recorder) -> None:
    a = await store.create_endpoint({"url": "https://example.com/a", "secret": "whsec_x"})
    b = await store.create_endpoint({"url": "https://example.com/b", "secret": "whsec_x"})
    assert recorder.take() == []  # a new endpoint has nothing due yet
    later = now_ms() + 60_000
    # Two concurrent publishes share a transaction: one call with everything that came due.
    results = await store.publish([new_event(1), new_event(2, deliver_at=later)])
    heard = recorder.take()
    assert [kind for kind, _ in heard] == ["due"]
    items = heard[0][1]
    assert sorted(items) == sorted(d for r in results for d in r.due)
    assert {e for e, _ in items} == {a.id, b.id} and len(items) == 4
    assert sorted(at for e, at in items if e == a.id)[-1] == later


async def test_a_publish_refused_tells_nothing(store: SQLiteStore, recorder: Recorder) -> None:
    await store.create_endpoint({"url": "https://example.com/a", "secret": "whsec_x"})
    ev = new_event()
    ev.body_hash = b"1" * 32
    await store.publish([ev])
    recorder.take()
    other = new_event(9)
    other.id, other.body_hash = ev.id, b"2" * 32
    with pytest.raises(Conflict):
        await store.publish([other])
    assert recorder.take() == []
    # An idempotent repeat stores nothing new, and tells nothing.
    await store.publish([ev])
    assert recorder.take() == []


async def test_retry_recover_update_rotate_and_delete_are_told(
    store: SQLiteStore, recorder: Recorder
) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/a", "secret": "whsec_x"})
    [res] = await store.publish([new_event()])
    recorder.take()
    [delivery_id] = res.delivery_ids
    # retry: due now
    before = now_ms()
    retried = await store.retry_delivery(delivery_id)
    [(kind, [(endpoint_id, at)])] = recorder.take()
    assert (kind, endpoint_id) == ("due", ep.id)
    assert before <= at == retried.next_attempt_at
    # recover: due now when anything came back, nothing told otherwise
    assert await store.recover(ep.id, 0, None) == 0
    assert recorder.take() == []
    # disabling skips the pending delivery (in the same transaction); recover brings it back
    disabled = await store.update_endpoint(ep.id, {"active": False})
    assert recorder.take() == [("changed", (ep.id, disabled.updated_at))]
    assert store.endpoint(ep.id) == disabled  # the view changed before it was told
    await store.update_endpoint(ep.id, {"active": True})
    recorder.take()
    assert await store.recover(ep.id, 0, None) == 1
    [(kind, [(endpoint_id, _)])] = recorder.take()
    assert (kind, endpoint_id) == ("due", ep.id)
    rotated = await store.rotate_secret(ep.id, "whsec_new", 0)
    assert recorder.take() == [("changed", (ep.id, rotated.updated_at))]
    await store.delete_endpoint(ep.id)
    assert recorder.take() == [("deleted", ep.id)]
    assert store.endpoint(ep.id) is None


async def test_an_unsubscribed_listener_hears_nothing(
    store: SQLiteStore, recorder: Recorder
) -> None:
    await store.create_endpoint({"url": "https://example.com/a", "secret": "whsec_x"})
    store.unsubscribe(recorder)
    await store.publish([new_event()])
    assert recorder.take() == []
