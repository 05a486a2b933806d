"""The store's console queries on both backends: the delivery log's filters, bounded
pages and cursors, counts and bulk requeue, charts, the live marker, the console key and
portal revocations."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import new_event
from webhookd.store import console as queries
from webhookd.store.console import DeliveryQuery
from webhookd.store.models import Attempt, Outcome
from webhookd.timefmt import now_ms

BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


def outcome(c: Any, status_code: int | None, *, ok: bool) -> Outcome:
    return Outcome(
        delivery_id=c.delivery_id,
        endpoint_id=c.endpoint_id,
        attempt=Attempt(
            number=c.attempt_count + 1,
            started_at=now_ms(),
            duration_ms=10 if ok else 40,
            trigger="scheduled",
            format="json",
            request_headers={"webhook-id": c.event.id},
            status_code=status_code,
            response_headers={},
            response_body="",
            error_kind=None if status_code is not None else "connection_refused",
            error_message=None,
        ),
        status="delivered" if ok else "failed",
        next_attempt_at=None,
        failures=0 if ok else 1,
        format_index=0,
        success=ok,
        lease=c.lease,
    )


async def fill(store: Any) -> dict[str, Any]:
    """Two endpoints (tenants a and b); 6 events for a, 3 for b; a's answered 200, 503,
    none (refused), 200, 404, pending; b's delivered."""
    a = await store.create_endpoint(
        {"url": "https://a.example/h", "secret": "whsec_x", "tenant": "a"}
    )
    b = await store.create_endpoint(
        {"url": "https://b.example/h", "secret": "whsec_x", "tenant": "b"}
    )
    evs = [new_event(i, "call.completed" if i % 2 else "invoice.paid") for i in range(6)]
    for ev in evs:
        ev.tenant = "a"
    await store.publish(evs)
    bevs = [new_event(i, "call.completed") for i in range(3)]
    for ev in bevs:
        ev.tenant = "b"
    await store.publish(bevs)
    claimed, _ = await store.claim({a.id: 5, b.id: 3}, now_ms())
    answers = [(200, True), (503, False), (None, False), (200, True), (404, False)]
    mine = sorted((c for c in claimed if c.endpoint_id == a.id), key=lambda c: c.event.seq)
    for c, (code, ok) in zip(mine, answers, strict=True):
        await store.record(outcome(c, code, ok=ok))
    for c in claimed:
        if c.endpoint_id == b.id:
            await store.record(outcome(c, 200, ok=True))
    return {"a": a, "b": b}


async def page_ids(store: Any, q: DeliveryQuery, limit: int = 50) -> list[str]:
    page = await store.console_deliveries(q, cursor=None, limit=limit)
    return [d.id for d in page.data]


@BOTH
async def test_filters_of_the_delivery_log(store: Any) -> None:
    eps = await fill(store)
    a, b = eps["a"], eps["b"]
    every = await page_ids(store, DeliveryQuery())
    assert len(every) == 9
    page = await store.console_deliveries(DeliveryQuery(), cursor=None, limit=50)
    seqs = [d.created_at for d in page.data]
    assert seqs == sorted(seqs, reverse=True)
    assert len(await page_ids(store, DeliveryQuery(endpoint_id=a.id))) == 6
    assert len(await page_ids(store, DeliveryQuery(tenant="b"))) == 3
    assert len(await page_ids(store, DeliveryQuery(tenant="nobody"))) == 0
    assert len(await page_ids(store, DeliveryQuery(statuses=("failed",)))) == 3
    assert len(await page_ids(store, DeliveryQuery(statuses=("failed", "pending")))) == 4
    assert len(await page_ids(store, DeliveryQuery(event_type="invoice.paid"))) == 3
    by_class = {
        k: len(await page_ids(store, DeliveryQuery(status_class=k))) for k in queries.STATUS_CLASSES
    }
    assert by_class == {"2xx": 5, "3xx": 0, "4xx": 1, "5xx": 1, "none": 1}
    assert len(await page_ids(store, DeliveryQuery(tenant="a", status_class="2xx"))) == 2
    assert len(await page_ids(store, DeliveryQuery(endpoint_id=b.id, statuses=("failed",)))) == 0
    future = now_ms() + 60_000
    assert await page_ids(store, DeliveryQuery(since=future)) == []
    assert len(await page_ids(store, DeliveryQuery(since=0, until=future))) == 9
    assert await page_ids(store, DeliveryQuery(until=1)) == []
    assert await store.count_deliveries(DeliveryQuery(tenant="a", statuses=("failed",))) == 3
    assert await store.count_deliveries(DeliveryQuery(status_class="4xx")) == 1


@BOTH
async def test_cursor_pages_cover_everything_once(store: Any) -> None:
    await fill(store)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await store.console_deliveries(DeliveryQuery(), cursor=cursor, limit=4)
        seen += [d.id for d in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == 9 == len(set(seen))


@BOTH
async def test_a_sparse_filter_stops_at_the_scan_budget_and_goes_on(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of 3 index entries, a status-class page comes back short with a
    cursor, and following the cursors still finds every match exactly once."""
    await fill(store)
    from webhookd.store.postgres import console as pg_console
    from webhookd.store.sqlite import console as sqlite_console

    monkeypatch.setattr(sqlite_console, "SCAN_BUDGET", 3)
    monkeypatch.setattr(pg_console, "SCAN_BUDGET", 3)
    q = DeliveryQuery(status_class="2xx")
    found: list[str] = []
    cursor = None
    pages = 0
    for _ in range(10):
        page = await store.console_deliveries(q, cursor=cursor, limit=50)
        pages += 1
        found += [d.id for d in page.data]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(found) == 5 == len(set(found))
    assert pages >= 3


@BOTH
async def test_requeue_what_the_filter_matches(store: Any) -> None:
    eps = await fill(store)
    a = eps["a"]
    q = DeliveryQuery(endpoint_id=a.id, status_class="5xx")
    assert await store.count_deliveries(q) == 1
    assert await store.requeue_deliveries(q) == 1
    assert await store.count_deliveries(DeliveryQuery(statuses=("failed",))) == 2
    # A disabled endpoint's deliveries stay where they are.
    await store.update_endpoint(a.id, {"active": False})
    assert await store.requeue_deliveries(DeliveryQuery(tenant="a")) == 0
    await store.update_endpoint(a.id, {"active": True, "disabled_reason": None})
    assert await store.requeue_deliveries(DeliveryQuery(tenant="a")) >= 2
    assert await store.count_deliveries(DeliveryQuery(statuses=("failed", "skipped"))) == 0


@BOTH
async def test_chart_and_marker(store: Any) -> None:
    before = await store.change_marker()
    eps = await fill(store)
    after = await store.change_marker()
    assert after[0] > before[0] and after[1] > before[1]
    now = now_ms()
    chart = await store.attempt_chart(
        endpoint_id=eps["a"].id, tenant=..., since=now - 3_600_000, until=now + 1, bucket_ms=60_000
    )
    assert len(chart.buckets) == 61
    assert sum(b.attempts for b in chart.buckets) == 5
    assert sum(b.successes for b in chart.buckets) == 2
    assert chart.outcomes == {"200": 2, "404": 1, "503": 1, "connection_refused": 1}
    last = [b for b in chart.buckets if b.attempts]
    assert last and last[-1].p95_ms == 40
    overall = await store.attempt_chart(
        endpoint_id=None, tenant="b", since=now - 3_600_000, until=now + 1, bucket_ms=600_000
    )
    assert sum(b.attempts for b in overall.buckets) == 3


@BOTH
async def test_endpoint_health_for_the_board(store: Any) -> None:
    eps = await fill(store)
    a, b = eps["a"], eps["b"]
    now = now_ms()
    health = await store.endpoint_health([a.id, b.id, "ep_none"], now - 86_400_000)
    # a: 2 delivered, 3 failed, 1 pending (never attempted); b: 3 delivered.
    assert (health[a.id].pending, health[a.id].delivered, health[a.id].finished) == (1, 2, 5)
    assert health[a.id].success_rate == 0.4
    assert (health[b.id].pending, health[b.id].delivered, health[b.id].finished) == (0, 3, 3)
    assert health["ep_none"].success_rate is None
    later = await store.endpoint_health([a.id], now + 60_000)
    assert later[a.id].finished == 0 and later[a.id].pending == 1


@BOTH
async def test_console_key_and_revocations(store: Any) -> None:
    key = await store.console_key()
    assert len(key) == 32
    assert await store.console_key() == key
    assert await store.portal_revoked_at("acme") is None
    await store.revoke_portal("acme", 1000)
    await store.revoke_portal("acme", 500)
    assert await store.portal_revoked_at("acme") == 1000
    assert await store.portal_revoked_at("other") is None


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert queries.percentile(values, 0.5) == 50
    assert queries.percentile(values, 0.95) == 95
    assert queries.percentile([], 0.5) is None
