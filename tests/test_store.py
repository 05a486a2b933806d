"""The SQLite store on real files: durability settings, group commit, claim cost."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from tests.conftest import new_event
from webhookd.ids import new_id
from webhookd.retention import Retention
from webhookd.store.models import NewEvent, NotFound, StorageError
from webhookd.store.sqlite.store import BUSY_TIMEOUT_MS, SQLiteStore
from webhookd.timefmt import now_ms, use_clock


@pytest.mark.sqlite_only
async def test_pragmas_and_schema_version(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"event_types", "endpoints", "events", "deliveries", "attempts"} <= tables
    conn.close()
    assert store.writer is not None
    level = await store.writer.run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
    assert level == 2  # FULL


async def test_reopen_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    s = SQLiteStore(path)
    await s.open()
    await s.sync_event_types([])
    ep = await s.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    await s.close()
    s2 = SQLiteStore(path)
    await s2.open()
    assert s2.endpoint(ep.id) == ep
    await s2.close()


@pytest.mark.sqlite_only
async def test_concurrent_publishes_share_commits(store: SQLiteStore) -> None:
    await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    assert store.writer is not None
    before = store.writer.commits
    results = await asyncio.gather(*[store.publish([new_event(i)]) for i in range(200)])
    commits = store.writer.commits - before
    assert all(r[0].created and r[0].deliveries == 1 for r in results)
    # Group commit: far fewer transactions (and fsyncs) than publishes.
    assert commits < 50, commits
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 200
    assert conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 200
    conn.close()


@pytest.mark.sqlite_only
async def test_claim_uses_the_due_index(store: SQLiteStore) -> None:
    """The claim's cost does not grow with the backlog: it walks the partial index."""
    conn = sqlite3.connect(store.path)
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE endpoint_id=? AND "
        "status='pending' AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT 10",
        ("ep_x", 0),
    ).fetchall()
    conn.close()
    text = " ".join(str(r[-1]) for r in plan)
    assert "deliveries_due" in text, text
    assert "TEMP B-TREE" not in text, text


@pytest.mark.sqlite_only
async def test_claim_is_bounded_by_batch_not_backlog(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    # 20,000 pending deliveries, all due.
    for chunk in range(20):
        await store.publish([new_event(chunk * 1000 + i) for i in range(1000)])
    now = now_ms()
    claimed, next_due = await store.claim({ep.id: 5}, now)
    assert len(claimed) == 5
    assert next_due == {}
    conn = sqlite3.connect(store.path)
    counts = dict(conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
    conn.close()
    assert counts == {"delivering": 5, "pending": 19995}
    # Claimed oldest-due first, each exactly once.
    again, _ = await store.claim({ep.id: 5}, now)
    assert not {c.delivery_id for c in claimed} & {c.delivery_id for c in again}


async def test_requeue_interrupted(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    await store.publish([new_event(i) for i in range(3)])
    claimed, _ = await store.claim({ep.id: 3}, now_ms())
    assert len(claimed) == 3
    assert await store.requeue_interrupted() == 3
    claimed, _ = await store.claim({ep.id: 3}, now_ms())
    assert len(claimed) == 3


def _plan(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str:
    return " ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))


@pytest.mark.sqlite_only
async def test_bulk_statements_look_deliveries_up_by_id(store: SQLiteStore) -> None:
    """The per-batch statements find each delivery through its id, never by walking the
    table or every row in one state (which would make a batch cost grow with the backlog
    or with the number of open requests)."""
    from webhookd.store.sqlite.batches import (
        MARK_DELIVERING,
        SKIP_IF_DISABLED,
        UPDATE_RECORDED,
        claim_select,
    )

    conn = sqlite3.connect(store.path)
    part = (
        "SELECT id FROM (SELECT id FROM deliveries WHERE endpoint_id=? AND "
        "status='pending' AND next_attempt_at<=? ORDER BY next_attempt_at LIMIT ?)"
    )
    plans = {
        "record": _plan(conn, UPDATE_RECORDED, (0, "[]")),
        "skip": _plan(conn, SKIP_IF_DISABLED, (0, "[]")),
        "mark": _plan(conn, MARK_DELIVERING, (0, "[]")),
        "claim": _plan(conn, claim_select([part, part]), ("a", 0, 1, "b", 0, 1)),
    }
    conn.close()
    for name, text in plans.items():
        assert "SCAN deliveries" not in text and "SCAN d " not in text, (name, text)
        assert "deliveries_delivering" not in text, (name, text)
        assert "sqlite_autoindex_deliveries_1" in text, (name, text)
    assert "SCAN e " not in plans["claim"], plans["claim"]
    assert "deliveries_due" in plans["claim"], plans["claim"]


async def test_claim_returns_payload_bytes_exactly(store: SQLiteStore) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    payloads = [
        '{"text":"caf\u00e9 \U0001f600 \\u0000 \\"quoted\\" back\\\\slash"}'.encode(),
        b'{"big":123456789012345678901234567890,"neg":-0.0,"e":1E+300}',
        b'{"raw":"tab\\there","nl":"\\n","sep":"\xe2\x80\xa8"}',
        b"[]",
    ]
    events = [
        NewEvent(
            id=new_id("evt"),
            type="order.created",
            tenant=None,
            payload_json=p,
            body_hash=None,
            deliver_at=None,
        )
        for p in payloads
    ]
    await store.publish(events)
    claimed, _ = await store.claim({ep.id: 10}, now_ms())
    got = {c.event.id: c.event.payload_json for c in claimed}
    assert got == {e.id: e.payload_json for e in events}


@pytest.mark.sqlite_only
async def test_a_batch_of_outcomes_is_a_few_statements(store: SQLiteStore) -> None:
    """300 outcomes queued together are written by a constant number of statements, not
    one or more per outcome; and each lands: attempt row, new delivery state."""
    from webhookd.store.models import Attempt, Outcome

    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_x"})
    await store.publish([new_event(i) for i in range(300)])
    claimed, _ = await store.claim({ep.id: 300}, now_ms())
    assert len(claimed) == 300
    statements: list[str] = []
    assert store.writer is not None
    conn = store.writer._conn
    assert conn is not None
    await store.writer.run(lambda c: c.set_trace_callback(statements.append))

    def outcome(i: int, delivery_id: str) -> Outcome:
        ok = i % 3 != 0
        return Outcome(
            delivery_id=delivery_id,
            endpoint_id=ep.id,
            attempt=Attempt(
                number=1,
                started_at=now_ms(),
                duration_ms=i,
                trigger="scheduled",
                format="json",
                request_headers={"webhook-id": f"evt_{i}", "X-Quote": 'a "b" \\ c'},
                status_code=200 if ok else 503,
                response_headers={"Content-Type": "text/plain"},
                response_body=f"body {i} \u00e9",
                error_kind=None,
                error_message=None,
            ),
            status="delivered" if ok else "pending",
            next_attempt_at=None if ok else now_ms() + 60_000,
            failures=0 if ok else 1,
            format_index=0,
            success=ok,
        )

    await asyncio.gather(*[store.record(outcome(i, c.delivery_id)) for i, c in enumerate(claimed)])
    await store.writer.run(lambda c: c.set_trace_callback(None))
    assert len(statements) < 40, statements
    check = sqlite3.connect(store.path)
    counts = dict(check.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"))
    assert counts == {"delivered": 200, "pending": 100}
    by_id = {c.delivery_id: i for i, c in enumerate(claimed)}
    rows = check.execute(
        "SELECT delivery_id, number, duration_ms, status_code, request_headers, "
        "response_body FROM attempts"
    ).fetchall()
    assert len(rows) == 300
    for delivery_id, number, duration, code, headers, body in rows:
        i = by_id[delivery_id]
        assert (number, duration, code) == (1, i, 200 if i % 3 else 503)
        assert orjson.loads(headers) == {"webhook-id": f"evt_{i}", "X-Quote": 'a "b" \\ c'}
        assert body == f"body {i} \u00e9"
    pending = check.execute(
        "SELECT failures, attempt_count, next_attempt_at > ? FROM deliveries "
        "WHERE status='pending'",
        (now_ms(),),
    ).fetchall()
    assert set(pending) == {(1, 1, 1)}
    check.close()


@dataclass
class ManualClock:
    """A clock a test moves forward instead of waiting."""

    ms: int

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.mark.sqlite_only
async def test_busy_timeout_is_per_store_and_a_locked_database_fails_fast(
    store: SQLiteStore, tmp_path: Path
) -> None:
    assert store.writer is not None
    default = await store.writer.run(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
    assert default == BUSY_TIMEOUT_MS == 5000
    quick = SQLiteStore(str(tmp_path / "quick.db"), busy_timeout_ms=50)
    await quick.open()
    await quick.sync_event_types([])
    try:
        assert quick.writer is not None
        set_ms = await quick.writer.run(lambda c: c.execute("PRAGMA busy_timeout").fetchone()[0])
        assert set_ms == 50
        # Another process holds the write lock: the store says it cannot write after its
        # own 50 ms, not the default 5 s.
        blocker = sqlite3.connect(quick.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        try:
            assert not await quick.writable()
            with pytest.raises(StorageError, match="storage cannot write"):
                await quick.publish([new_event()])
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert time.monotonic() - started < 2.5
        assert await quick.writable()
        [res] = await quick.publish([new_event()])
        assert res.created
    finally:
        await quick.close()


async def test_retention_purges_by_the_clock(store: SQLiteStore) -> None:
    active = {"url": "https://example.com/a", "secret": "whsec_x", "events": ["order.created"]}
    await store.create_endpoint(active)
    off = {"url": "https://example.com/b", "secret": "whsec_y", "events": ["order.paid"]}
    await store.create_endpoint({**off, "active": False})
    [waiting] = await store.publish([new_event(1, "order.created")])  # pending
    [finished] = await store.publish([new_event(2, "order.paid")])  # skipped
    retention = Retention(store, lambda: 1.0)
    assert await retention.purge_once() == 0  # younger than a day
    clock = ManualClock(now_ms())
    with use_clock(clock):
        clock.advance(86400 - 5)
        assert await retention.purge_once() == 0
        clock.advance(10)
        assert await retention.purge_once() == 1
    with pytest.raises(NotFound):
        await store.get_event(finished.event.id)
    # Still trying: never lost to retention.
    _, [delivery] = await store.get_event(waiting.event.id)
    assert delivery.status == "pending"
    assert retention.purged_total == 1


@pytest.mark.parametrize("busy_share", [0.5, 1.0])
async def test_retention_rests_between_batches_by_its_busy_share(
    store: SQLiteStore, busy_share: float
) -> None:
    """A pass over several batches rests between them, in proportion to the time the
    batches took (BUSY_SHARE), so that the purge's writes leave room to publishing."""
    await store.publish([new_event(n) for n in range(450)])  # 3 batches of up to 200
    retention = Retention(store, lambda: 1.0, busy_share=busy_share)
    clock = ManualClock(now_ms())
    with use_clock(clock):
        clock.advance(86400 + 5)
        assert await retention.purge_once() == 450
    assert retention.busy_s > 0
    if busy_share == 1.0:
        assert retention.rested_s < 0.01 * retention.busy_s + 0.005  # a yield, no rest
    else:  # as long as the two batches that were followed by another, give or take
        assert 0.5 * retention.busy_s <= retention.rested_s <= 3 * retention.busy_s + 0.05


async def test_a_rotated_secret_signs_until_its_grace_ends_by_the_clock(
    store: SQLiteStore,
) -> None:
    ep = await store.create_endpoint({"url": "https://example.com/h", "secret": "whsec_old"})
    clock = ManualClock(now_ms())
    with use_clock(clock):
        rotated = await store.rotate_secret(ep.id, "whsec_new", grace_s=600)
        assert rotated.signing_secrets(now_ms()) == ["whsec_new", "whsec_old"]
        clock.advance(599)
        current = await store.get_endpoint(ep.id)
        assert current.signing_secrets(now_ms()) == ["whsec_new", "whsec_old"]
        clock.advance(2)
        current = await store.get_endpoint(ep.id)
        assert current.signing_secrets(now_ms()) == ["whsec_new"]
        # A later rotation drops the expired secret for good.
        again = await store.rotate_secret(ep.id, "whsec_newer", grace_s=0)
    assert [p.secret for p in again.previous_secrets] == []
