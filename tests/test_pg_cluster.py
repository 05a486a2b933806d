"""Daemons sharing PostgreSQL (webhookd/store/postgres/cluster.py and wakeups.py): the
heartbeat and listing, the reaper of dead daemons' and expired claims, a clean departure,
and wake-ups across daemons over LISTEN/NOTIFY; and the `cluster` config section."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.pg_fleet import (
    Daemon,
    add_deliveries,
    add_endpoint,
    close_daemon,
    connect,
    open_daemon,
    outcome,
    row,
    rows,
)
from webhookd.config import ClusterConfig, ConfigError, config_from_mapping
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.wakeups import Listener
from webhookd.timefmt import now_ms


@pytest.fixture
async def fleet(pg_dsn: str) -> Any:
    daemons: list[Daemon] = []

    async def make(n: int, **kwargs: Any) -> list[Daemon]:
        for _ in range(n):
            daemons.append(await open_daemon(pg_dsn, **kwargs))
        return daemons[-n:]

    yield make
    for d in daemons:
        await close_daemon(d)


async def _age(conn: Any, daemon: Daemon, by_ms: int) -> None:
    """The daemon stopped beating `by_ms` ago (as if killed then)."""
    await conn.execute(
        "UPDATE daemons SET heartbeat_at = webhookd_now_ms() - %s WHERE id = %s",
        (by_ms, daemon.id),
    )


# --- membership ------------------------------------------------------------------------


async def test_the_heartbeat_keeps_a_row_and_the_listing_shows_live_daemons(
    pg_dsn: str, fleet: Any
) -> None:
    a, b = await fleet(2, lease_s=90.0, heartbeat_s=0.2)
    conn = await connect(pg_dsn)
    async with conn:
        first = (await row(conn, "SELECT heartbeat_at FROM daemons WHERE id = %s", a.id))[0]
        a.in_flight = 7
        await a.cluster.start()
        try:

            async def beaten() -> bool:
                r = await row(
                    conn, "SELECT heartbeat_at, in_flight FROM daemons WHERE id = %s", a.id
                )
                return bool(r[0] > first and r[1] == 7)

            await wait_until(beaten, what="a heartbeat with the open requests")
        finally:
            await a.cluster.stop()
        b.in_flight = 3
        listed = await a.cluster.daemons()
        assert [(i.member.id, i.member.host, i.member.pid, i.in_flight) for i in listed] == [
            (a.id, "test-host", 4242, 7),
            (b.id, "test-host", 4242, 0),  # another daemon's: as its row says
        ]
        assert all(i.member.version == "test" and i.heartbeat_at > 0 for i in listed)
        # A daemon silent for longer than its lease is not listed (and is reaped).
        await _age(conn, b, 90_000)
        assert [i.member.id for i in await a.cluster.daemons()] == [a.id]


# --- the reaper --------------------------------------------------------------------------


async def test_a_killed_daemons_claims_are_reaped_and_claimed_by_another(
    pg_dsn: str, fleet: Any
) -> None:
    """a dies holding 3 claims; c is alive holding 2. b starting up reaps only a's: they
    are pending again, due now, and b claims them; a's row is gone; c's claims stay c's.
    a's late outcome is dropped; b's is recorded."""
    a, b, c = await fleet(3, lease_s=90.0)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_endpoint(conn, "ep_c")
        await add_deliveries(conn, ["ep_a", "ep_c"], 3)
        held_by_a, _ = await a.claims.claim({"ep_a": 3}, now_ms())
        held_by_c, _ = await c.claims.claim({"ep_c": 2}, now_ms())
        assert len(held_by_a) == 3 and len(held_by_c) == 2
        await _age(conn, a, 90_000)

        before = now_ms()
        assert await b.cluster.reap() == 3
        assert sorted(e for e, _ in b.reaped) == ["ep_a"] * 3
        assert all(at >= before for _, at in b.reaped)
        states = await rows(
            conn,
            "SELECT endpoint_id, status, lease_owner, slot IS NULL, next_attempt_at <= %s "
            "FROM deliveries WHERE status IN ('pending', 'delivering') ORDER BY id",
            now_ms(),
        )
        assert states == [
            ("ep_a", "pending", None, True, True),
            ("ep_a", "pending", None, True, True),
            ("ep_a", "pending", None, True, True),
            ("ep_c", "delivering", c.id, False, True),
            ("ep_c", "delivering", c.id, False, True),
            ("ep_c", "pending", None, True, True),
        ]
        assert (await row(conn, "SELECT count(*) FROM daemons WHERE id = %s", a.id))[0] == 0
        assert await b.cluster.reap() == 0  # nothing more: c is alive

        taken, _ = await b.claims.claim({"ep_a": 3}, now_ms())
        assert sorted(x.delivery_id for x in taken) == sorted(x.delivery_id for x in held_by_a)
        assert not await a.outcomes.record(outcome(held_by_a[0]))
        assert a.outcomes.stale == 1
        mine = next(x for x in taken if x.delivery_id == held_by_a[0].delivery_id)
        assert await b.outcomes.record(outcome(mine))
        r = await row(
            conn,
            "SELECT d.status, d.attempt_count, (SELECT count(*) FROM attempts a "
            "WHERE a.delivery_id = d.id) FROM deliveries d WHERE d.id = %s",
            mine.delivery_id,
        )
        assert r == ("delivered", 1, 1)


async def test_a_claim_whose_lease_ran_out_is_reaped_though_its_daemon_lives(
    pg_dsn: str, fleet: Any
) -> None:
    a, b = await fleet(2, lease_s=90.0)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_deliveries(conn, ["ep_a"], 2)
        held, _ = await a.claims.claim({"ep_a": 2}, now_ms())
        await conn.execute(
            "UPDATE deliveries SET lease_until = webhookd_now_ms() - 1 WHERE id = %s",
            (held[0].delivery_id,),
        )
        assert await b.cluster.reap() == 1
        r = await rows(conn, "SELECT id, status FROM deliveries ORDER BY id")
        assert r == [(held[0].delivery_id, "pending"), (held[1].delivery_id, "delivering")]
        # The fencing token of the lost claim no longer matches, even for a release.
        assert await a.claims.release([held[0]]) == []
        retaken, _ = await b.claims.claim({"ep_a": 1}, now_ms())
        assert [x.delivery_id for x in retaken] == [held[0].delivery_id]
        assert retaken[0].lease != held[0].lease


async def test_a_clean_shutdown_gives_its_claims_back_and_leaves(pg_dsn: str, fleet: Any) -> None:
    a, b = await fleet(2)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_deliveries(conn, ["ep_a"], 2, due=now_ms() - 1000)
        await conn.execute(f"LISTEN {wakeups.WAKE_CHANNEL}")
        held, _ = await a.claims.claim({"ep_a": 2}, now_ms())
        assert len(held) == 2
        given = await a.cluster.leave()
        assert sorted(e for e, _ in given) == ["ep_a", "ep_a"]
        assert (await row(conn, "SELECT count(*) FROM daemons WHERE id = %s", a.id))[0] == 0
        r = await rows(conn, "SELECT status, lease_owner, slot FROM deliveries")
        assert r == [("pending", None, None)] * 2
        notices = [n async for n in conn.notifies(timeout=2.0, stop_after=1)]
        assert len(notices) == 1 and '"due":[["ep_a"' in notices[0].payload
        retaken, _ = await b.claims.claim({"ep_a": 2}, now_ms())
        assert len(retaken) == 2


# --- wake-ups ------------------------------------------------------------------------------


async def _publish(conn: Any, daemon: Daemon, endpoint_ids: list[str], events: int) -> list[int]:
    """Deliveries inserted and announced in one transaction, as a publish does."""
    async with conn.transaction():
        seqs = await add_deliveries(conn, endpoint_ids, events)
        await wakeups.notify_published(conn, daemon.id, seqs)
    return seqs


async def test_listen_hears_other_daemons_and_recovers_after_its_connection_is_killed(
    pg_dsn: str, fleet: Any
) -> None:
    a, b = await fleet(2)
    heard: list[tuple[str, int]] = []
    listener = Listener(b.db, b.id, heard.extend, check_s=0.3, ping_timeout_s=2.0, poll_s=None)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_endpoint(conn, "ep_b")
        listener.start()
        try:
            await wait_until(listener.connected.is_set, what="the listener connected")
            await _publish(conn, a, ["ep_a"], 3)
            await wait_until(lambda: [e for e, _ in heard] == ["ep_a"], what="a's publish")
            # Its own publish it knows already: not reported.
            await _publish(conn, b, ["ep_b"], 1)
            await wait_until(lambda: listener.pings >= 2, what="two self-NOTIFY round trips")
            assert [e for e, _ in heard] == ["ep_a"]

            # A delivery whose notice is lost (none sent) is found by the rescan that
            # follows a reconnection.
            await add_deliveries(conn, ["ep_b"], 1)
            heard.clear()
            pid = listener.backend_pid
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await wait_until(
                lambda: listener.connections == 2 and listener.connected.is_set(),
                what="the listener reconnected",
            )
            assert listener.backend_pid != pid
            assert sorted(e for e, _ in heard) == ["ep_a", "ep_b"]
            heard.clear()
            await _publish(conn, a, ["ep_b"], 2)
            await wait_until(lambda: [e for e, _ in heard] == ["ep_b"], what="a publish after")
        finally:
            await listener.stop()


async def test_a_retry_scheduled_by_one_daemon_is_heard_by_another(pg_dsn: str, fleet: Any) -> None:
    a, b = await fleet(2)
    heard: list[tuple[str, int]] = []
    listener = Listener(b.db, b.id, heard.extend, poll_s=None)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_deliveries(conn, ["ep_a"], 2)
        held, _ = await a.claims.claim({"ep_a": 2}, now_ms())
        listener.start()
        try:
            await wait_until(listener.connected.is_set, what="the listener connected")
            heard.clear()  # the rescan on connecting
            later = now_ms() + 60_000
            await asyncio.gather(
                a.outcomes.record(outcome(held[0], "pending", next_attempt_at=later)),
                a.outcomes.record(outcome(held[1], "pending", next_attempt_at=later + 5)),
            )
            await wait_until(lambda: heard, what="the retry's notice")
            assert heard == [("ep_a", later)]  # the earliest per endpoint, one notice
        finally:
            await listener.stop()


def test_a_notice_too_large_for_notify_becomes_a_rescan() -> None:
    few = wakeups.due_notice("d1", [("ep_1", 5), ("ep_1", 3), ("ep_2", 9)])
    assert few == '{"from":"d1","due":[["ep_1",3],["ep_2",9]]}'
    many = wakeups.due_notice("d1", [(f"ep_{i:026d}", 1_796_000_000_000) for i in range(300)])
    assert many == '{"from":"d1","rescan":true}'
    assert wakeups.published_notice("d1", [7, 3, 5]) == '{"from":"d1","seq":[3,7]}'
    assert wakeups.due_notice("d1", []) is None and wakeups.published_notice("d1", []) is None


async def test_due_soon_probes_each_endpoint_through_the_due_index(pg_dsn: str) -> None:
    conn = await connect(pg_dsn)
    async with conn:
        now = now_ms()
        for e in ("ep_soon", "ep_later", "ep_off"):
            await add_endpoint(conn, e, active=e != "ep_off")
        await add_deliveries(conn, ["ep_soon", "ep_off"], 3, due=now + 1000)
        await add_deliveries(conn, ["ep_later"], 3, due=now + 60_000)
        # A backlog large enough that the planner would rather not read it all.
        await conn.execute(
            "INSERT INTO deliveries (id, event_seq, event_id, event_type, endpoint_id, status, "
            "next_attempt_at, created_at, updated_at) SELECT 'dlv_bulk_' || g, e.seq, e.id, "
            "e.type, 'ep_later', 'pending', %s + g, 0, 0 FROM generate_series(1, 20000) g, "
            "(SELECT seq, id, type FROM events LIMIT 1) e",
            (now + 120_000,),
        )
        await conn.execute("ANALYZE deliveries")
        assert await wakeups.due_soon(conn, 5000, now) == [("ep_soon", now + 1000)]
        assert sorted(await wakeups.due_soon(conn, None, now)) == [
            ("ep_later", now + 60_000),
            ("ep_soon", now + 1000),
        ]
        plan = "\n".join(r[0] for r in await rows(conn, "EXPLAIN " + wakeups._DUE_SOON, now + 5000))
        assert "deliveries_due " in plan + " " and "Seq Scan on deliveries" not in plan


# --- configuration ---------------------------------------------------------------------


def test_cluster_config_defaults_follow_the_request_timeout() -> None:
    assert config_from_mapping({}).cluster == ClusterConfig(lease_s=90.0, heartbeat_s=10.0)
    short = config_from_mapping({"delivery": {"timeout_s": 10}})
    assert short.cluster == ClusterConfig(lease_s=70.0, heartbeat_s=10.0)
    given = config_from_mapping({"cluster": {"lease_s": 40, "heartbeat_s": 2.5}})
    assert given.cluster == ClusterConfig(lease_s=40.0, heartbeat_s=2.5)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"lease_s": 20}, "cluster.lease_s: expected a number of seconds 35-86400"),
        ({"lease_s": "x"}, "cluster.lease_s: expected a number"),
        ({"heartbeat_s": 0}, "cluster.heartbeat_s: expected a number of seconds 0.1-3600"),
        ({"heartbeat_s": 40}, "cluster.heartbeat_s: expected at most a third of cluster.lease_s"),
        ({"leases": 3}, "cluster.leases: unknown key"),
        (5, "cluster: expected a mapping"),
    ],
)
def test_cluster_config_errors_name_the_key(section: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_mapping({"cluster": section})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


async def test_the_listener_rescans_on_a_marker_polls_as_a_backstop_and_shrugs_off_garbage(
    pg_dsn: str, fleet: Any
) -> None:
    (b,) = await fleet(1)
    heard: list[tuple[str, int]] = []
    listener = Listener(b.db, b.id, heard.extend, poll_s=0.3)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_endpoint(conn, "ep_b")
        listener.start()
        try:
            await wait_until(listener.connected.is_set, what="the listener connected")
            # Unreadable notices are logged and ignored; the session stays up.
            for payload in ("not json", '{"from": "x", "seq": "bad"}', "[1, 2]"):
                await conn.execute("SELECT pg_notify(%s, %s)", (wakeups.WAKE_CHANNEL, payload))
            # Pending work announced by nobody: the backstop poll finds it when it comes due
            # within the poll's horizon.
            await add_deliveries(conn, ["ep_a"], 1, due=now_ms() + 200)
            await wait_until(lambda: heard, what="the backstop poll")
            assert {e for e, _ in heard} == {"ep_a"}
            heard.clear()
            await add_deliveries(conn, ["ep_b"], 1, due=now_ms() + 3_600_000)
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (wakeups.WAKE_CHANNEL, '{"from":"x","rescan":true}')
            )
            await wait_until(lambda: "ep_b" in {e for e, _ in heard}, what="the rescan")
            assert {e for e, _ in heard} == {"ep_a", "ep_b"}
            assert listener.connections == 1
        finally:
            await listener.stop()
