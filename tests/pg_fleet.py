"""Several "daemons" on one PostgreSQL test database, without the dispatcher: each is its own
pool, claims, outcome writer and membership, as a daemon's store holds them. Rows are
inserted with SQL, so the tests control seq order, due times and endpoint settings."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from webhookd.store.interface import Member
from webhookd.store.models import Attempt, Claimed, Outcome
from webhookd.store.postgres.claims import Claims
from webhookd.store.postgres.cluster import Cluster
from webhookd.store.postgres.db import Database
from webhookd.store.postgres.outcomes import Outcomes
from webhookd.timefmt import now_ms


@dataclass
class Daemon:
    member: Member
    db: Database
    claims: Claims
    outcomes: Outcomes
    cluster: Cluster
    in_flight: int = 0
    health: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    reaped: list[tuple[str, int]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.member.id


async def open_daemon(
    dsn: str, *, lease_s: float = 90.0, heartbeat_s: float = 10.0, default_limit: int = 10
) -> Daemon:
    """A daemon that has joined (its row in `daemons`) and whose outcome writer runs; its
    heartbeat task is not started (the tests beat and reap by hand)."""
    member = Member(str(uuid.uuid4()), "test-host", 4242, "test", now_ms())
    db = Database(dsn)
    await db.open()
    d = Daemon(
        member=member,
        db=db,
        claims=Claims(db, member.id, lease_s=lease_s, default_limit=default_limit),
        outcomes=Outcomes(db, member.id),
        cluster=Cluster(db, member, lease_s=lease_s, heartbeat_s=heartbeat_s),
    )
    d.outcomes.on_health = lambda e, changes: d.health.append((e, changes))
    d.cluster.in_flight = lambda: d.in_flight
    d.cluster.on_reaped = d.reaped.extend
    d.outcomes.start()
    await d.cluster.beat()
    return d


async def close_daemon(d: Daemon) -> None:
    await d.outcomes.close()
    await d.cluster.stop()
    await d.db.close()


async def connect(dsn: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True)


async def add_endpoint(
    conn: psycopg.AsyncConnection[Any],
    endpoint_id: str,
    *,
    ordered: bool = False,
    max_in_flight: int | None = None,
    rate_limit_per_s: float | None = None,
    active: bool = True,
) -> None:
    now = now_ms()
    await conn.execute(
        "INSERT INTO endpoints (id, url, secret, created_at, updated_at, ordered, "
        "max_in_flight, rate_limit_per_s, active) "
        "VALUES (%s, 'https://receiver.example/hook', 'whsec_test', %s, %s, %s, %s, %s, %s)",
        (endpoint_id, now, now, ordered, max_in_flight, rate_limit_per_s, active),
    )


async def add_deliveries(
    conn: psycopg.AsyncConnection[Any],
    endpoint_ids: list[str],
    events: int,
    *,
    due: int | None = None,
) -> list[int]:
    """`events` events, each with one pending delivery per endpoint, due at `due` (now);
    returns the events' seqs, in publish order. Delivery ids are dlv_<endpoint>_<i>, i
    counting the endpoint's deliveries from 0."""
    now = now_ms()
    at = now if due is None else due
    seqs: list[int] = []
    async with conn.transaction():
        first = {}
        for e in endpoint_ids:
            cur = await conn.execute("SELECT count(*) FROM deliveries WHERE endpoint_id = %s", (e,))
            counted = await cur.fetchone()
            first[e] = int(counted[0]) if counted else 0
        for i in range(events):
            cur = await conn.execute(
                "INSERT INTO events (id, type, payload, created_at) "
                "VALUES (%s, 'order.created', %s, %s) RETURNING seq",
                (f"evt_{uuid.uuid4().hex}", b'{"n": %d}' % i, now),
            )
            row = await cur.fetchone()
            assert row is not None
            seqs.append(int(row[0]))
            for e in endpoint_ids:
                await conn.execute(
                    "INSERT INTO deliveries (id, event_seq, event_id, event_type, endpoint_id, "
                    "status, next_attempt_at, created_at, updated_at) "
                    "SELECT %s, seq, id, type, %s, 'pending', %s, %s, %s FROM events "
                    "WHERE seq = %s",
                    (f"dlv_{e}_{first[e] + i}", e, at, now, now, row[0]),
                )
    return seqs


def outcome(
    c: Claimed,
    status: str = "delivered",
    *,
    next_attempt_at: int | None = None,
    disable_reason: str | None = None,
    lease: str | None = "",
) -> Outcome:
    """The outcome of one attempt of `c` (a 200, or a 500 when not delivered)."""
    ok = status == "delivered"
    attempt = Attempt(
        number=c.attempt_count + 1,
        started_at=now_ms(),
        duration_ms=3,
        trigger="scheduled",
        format="json",
        request_headers={"content-type": "application/json"},
        status_code=200 if ok else 500,
        response_headers={},
        response_body="ok" if ok else "boom",
        error_kind=None,
        error_message=None,
    )
    return Outcome(
        delivery_id=c.delivery_id,
        endpoint_id=c.endpoint_id,
        attempt=attempt,
        status=status,
        next_attempt_at=next_attempt_at,
        failures=0 if ok else 1,
        format_index=0,
        success=ok,
        disable_reason=disable_reason,
        lease=c.lease if lease == "" else lease,
    )


async def row(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> Any:
    cur = await conn.execute(sql, args)
    return await cur.fetchone()


async def rows(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> list[Any]:
    cur = await conn.execute(sql, args)
    return list(await cur.fetchall())
