"""The SQLite store on real files: durability settings, group commit, claim cost."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from webhookd.ids import new_id
from webhookd.store.models import NewEvent
from webhookd.store.sqlite import SQLiteStore
from webhookd.timefmt import now_ms


def new_event(n: int = 0, event_type: str = "order.created") -> NewEvent:
    return NewEvent(
        id=new_id("evt"),
        type=event_type,
        tenant=None,
        payload_json=orjson.dumps({"n": n}),
        body_hash=None,
        deliver_at=None,
    )


@pytest.fixture
async def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(str(tmp_path / "t.db"))
    await s.open()
    await s.sync_event_types([])
    yield s  # type: ignore[misc]
    await s.close()


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
    assert ep.id in s2.endpoints
    await s2.close()


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
