"""Claims and outcomes on PostgreSQL shared by several daemons (webhookd/store/postgres/
claims.py and outcomes.py): each daemon its own pool on one real database, claiming at
once; the limits are checked on every claim, not only at the end."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
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
from webhookd.store.models import Claimed
from webhookd.store.postgres import claims
from webhookd.store.postgres.claims import CONTENDED_RETRY_MS, SLOT_POLL_MS
from webhookd.timefmt import now_ms

# The concurrency test: the limits of its three endpoints, and how long it runs.
LIMIT = 3
RATE_PER_S = 25.0
RATE_LIMIT = 4
MIN_RUN_S = 2.0  # long enough for the rate limit's windows
DEADLINE_S = 30.0

# Every claim of a delivery, with the database's clock when it happened (the claim
# statement's own updates), for the rate limit's windows.
_CLAIM_LOG = """
CREATE TABLE claim_log (endpoint_id text, delivery_id text, at_ms bigint, slot smallint);
CREATE FUNCTION log_claim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO claim_log VALUES (NEW.endpoint_id, NEW.id,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, NEW.slot);
    RETURN NEW;
END $$;
CREATE TRIGGER log_claim AFTER UPDATE ON deliveries FOR EACH ROW
    WHEN (NEW.status = 'delivering' AND OLD.status <> 'delivering') EXECUTE FUNCTION log_claim();
"""


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


async def test_a_claim_takes_a_slot_and_a_lease_with_a_fencing_token(
    pg_dsn: str, fleet: Any
) -> None:
    (d,) = await fleet(1, lease_s=90.0)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a", max_in_flight=2)
        await add_deliveries(conn, ["ep_a"], 3)
        claimed, next_due = await d.claims.claim({"ep_a": 5}, now_ms())
        assert [c.delivery_id for c in claimed] == ["dlv_ep_a_0", "dlv_ep_a_1"]
        assert claimed[0].event.payload_json == b'{"n": 0}'
        tokens = [int(c.lease or 0) for c in claimed]
        assert tokens[0] < tokens[1]
        got = await rows(
            conn,
            "SELECT id, slot, lease_owner, lease_token, lease_until - webhookd_now_ms() "
            "FROM deliveries WHERE status = 'delivering' ORDER BY id",
        )
        assert [(r[0], r[1], r[2], r[3]) for r in got] == [
            ("dlv_ep_a_0", 0, d.id, tokens[0]),
            ("dlv_ep_a_1", 1, d.id, tokens[1]),
        ]
        assert all(80_000 < r[4] <= 90_000 for r in got)
        # Both slots are this daemon's: the dispatcher hears of them itself, so the due
        # time is the third delivery's, not pushed back.
        assert next_due["ep_a"] is not None and next_due["ep_a"] <= now_ms()


async def test_six_daemons_hold_every_limit_together(pg_dsn: str, fleet: Any) -> None:
    """6 daemons claim at once from 3 endpoints: max_in_flight 3, ordered, and 25/s. On
    every claim no endpoint is over its limit (counted here and in the database); the
    ordered endpoint is claimed strictly in publish order; the rate holds over all of them
    in every window."""
    daemons = await fleet(6)
    conn = await connect(pg_dsn)
    async with conn:
        await conn.execute(_CLAIM_LOG.encode())
        await add_endpoint(conn, "ep_lim", max_in_flight=LIMIT)
        await add_endpoint(conn, "ep_ord", ordered=True, max_in_flight=5)
        await add_endpoint(conn, "ep_rate", rate_limit_per_s=RATE_PER_S, max_in_flight=RATE_LIMIT)
        seqs = await add_deliveries(conn, ["ep_lim", "ep_ord"], 60)
        # Later events due earlier: by due time alone the ordered endpoint would go backwards.
        await conn.execute(
            "UPDATE deliveries SET next_attempt_at = next_attempt_at - event_seq "
            "WHERE endpoint_id = 'ep_ord'"
        )
        await add_deliveries(conn, ["ep_rate"], 400)
        run = _Run(pg_dsn, {"ep_lim": LIMIT, "ep_ord": 1, "ep_rate": RATE_LIMIT})
        await asyncio.gather(*(run.claimer(d) for d in daemons))
        await asyncio.gather(*run.requests)
        for d in daemons:
            await d.outcomes.close()

        assert run.violations == []
        assert run.ordered == seqs, "the ordered endpoint went out of publish order"
        assert run.peak["ep_lim"] == LIMIT and run.peak["ep_ord"] == 1
        done = await rows(
            conn,
            "SELECT endpoint_id, count(*) FROM deliveries WHERE status = 'delivered' "
            "GROUP BY endpoint_id ORDER BY 1",
        )
        assert dict(done)["ep_lim"] == 60 and dict(done)["ep_ord"] == 60
        times = [
            r[0]
            for r in await rows(
                conn, "SELECT at_ms FROM claim_log WHERE endpoint_id = 'ep_rate' ORDER BY at_ms"
            )
        ]
    _check_rate(times, RATE_PER_S)
    # It was kept busy: most of what the rate allows over the run was claimed.
    assert len(times) >= 0.6 * RATE_PER_S * (times[-1] - times[0]) / 1000


def _check_rate(times: list[int], rate_per_s: float) -> None:
    """No window of any length holds more claims than the bucket allows: one token at
    the start (its capacity) and the rate's refill over the window (+5 ms for the gap
    between a claim's bucket time and its logged time)."""
    assert len(times) > 20
    for window_ms in (100, 250, 1000):
        allowed = 1 + int(rate_per_s * (window_ms + 5) / 1000)
        worst = max(
            sum(1 for t in times[i:] if t < start + window_ms) for i, start in enumerate(times)
        )
        assert worst <= allowed, f"{worst} claims within {window_ms} ms (allowed {allowed})"


class _Run:
    """The claimers of the concurrency test and what they saw."""

    def __init__(self, dsn: str, limits: dict[str, int]) -> None:
        self.dsn = dsn
        self.limits = limits
        self.held: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.delivered: Counter[str] = Counter()
        self.violations: list[str] = []
        self.ordered: list[int] = []
        self.requests: list[asyncio.Task[None]] = []
        self.started = time.monotonic()

    def done(self) -> bool:
        elapsed = time.monotonic() - self.started
        if elapsed > DEADLINE_S:
            self.violations.append(f"not finished within {DEADLINE_S} s: {self.delivered}")
            return True
        finished = self.delivered["ep_lim"] == 60 and self.delivered["ep_ord"] == 60
        return finished and elapsed >= MIN_RUN_S

    async def claimer(self, d: Daemon) -> None:
        check = await connect(self.dsn)
        async with check:
            while not self.done():
                wants = {"ep_lim": LIMIT, "ep_ord": 1, "ep_rate": 2}
                claimed, next_due = await d.claims.claim(wants, now_ms())
                await self._check(check, claimed)
                for c in claimed:
                    self.requests.append(asyncio.create_task(self._request(d, c)))
                if not claimed:
                    # As the dispatcher does: look again when the claim said to (bounded).
                    due = [at for at in next_due.values() if at is not None]
                    wait_ms = min(max(min(due, default=now_ms() + 50) - now_ms(), 1), 50)
                    await asyncio.sleep(wait_ms / 1000)

    async def _check(self, check: Any, claimed: list[Claimed]) -> None:
        for c in claimed:
            self.held[c.endpoint_id] += 1
            self.peak[c.endpoint_id] = max(self.peak[c.endpoint_id], self.held[c.endpoint_id])
            if c.endpoint_id == "ep_ord":
                self.ordered.append(c.event.seq)
        for e, n in self.held.items():
            if n > self.limits[e]:
                self.violations.append(f"{e}: {n} held at once (limit {self.limits[e]})")
        for e, n in await rows(
            check,
            "SELECT endpoint_id, count(*) FROM deliveries WHERE status = 'delivering' "
            "GROUP BY endpoint_id",
        ):
            if n > self.limits[e]:
                self.violations.append(f"{e}: {n} delivering in the database")

    async def _request(self, d: Daemon, c: Claimed) -> None:
        # The request's own duration (a receiver answering in 1-8 ms).
        await asyncio.sleep(random.uniform(0.001, 0.008))
        self.held[c.endpoint_id] -= 1  # before the outcome frees the slot: never over-counts
        assert await d.outcomes.record(outcome(c))
        self.delivered[c.endpoint_id] += 1


async def test_a_lost_slot_race_is_run_again_on_a_fresh_snapshot(pg_dsn: str, fleet: Any) -> None:
    """Another transaction takes slot 0 after the claim's snapshot: the claim's update
    waits on that index entry, gets 23505 on deliveries_slot when it commits, and the
    claim runs again and takes slot 1."""
    (d,) = await fleet(1)
    conn, other = await connect(pg_dsn), await connect(pg_dsn)
    async with conn, other:
        await add_endpoint(conn, "ep_a", max_in_flight=2)
        await add_deliveries(conn, ["ep_a"], 2)
        await other.execute("BEGIN")
        await other.execute(
            "UPDATE deliveries SET status = 'delivering', slot = 0, lease_owner = 'x', "
            "lease_token = nextval('lease_tokens') WHERE id = 'dlv_ep_a_0'"
        )
        claim = asyncio.ensure_future(d.claims.claim({"ep_a": 1}, now_ms()))

        async def waiting_on_the_index() -> bool:
            r = await row(
                conn,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%%WITH want AS%%'",
            )
            return bool(r[0])

        await wait_until(waiting_on_the_index, what="the claim waiting on slot 0")
        await other.execute("COMMIT")
        claimed, _ = await claim
        assert d.claims.lost_races == 1
        assert [c.delivery_id for c in claimed] == ["dlv_ep_a_1"]
        r = await row(conn, "SELECT slot FROM deliveries WHERE id = 'dlv_ep_a_1'")
        assert r[0] == 1


async def test_an_ordered_endpoint_waits_for_a_head_in_flight_on_another_daemon(
    pg_dsn: str, fleet: Any
) -> None:
    a, b = await fleet(2)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_o", ordered=True)
        await add_deliveries(conn, ["ep_o"], 3)
        got_a, due_a = await a.claims.claim({"ep_o": 3}, now_ms())
        assert [c.delivery_id for c in got_a] == ["dlv_ep_o_0"]
        assert due_a["ep_o"] is not None  # its next one is due (after this one)
        now = now_ms()
        got_b, due_b = await b.claims.claim({"ep_o": 1}, now)
        assert got_b == []
        # Nothing on b ends a's request: look again after the slot poll.
        assert due_b["ep_o"] is not None and due_b["ep_o"] >= now + SLOT_POLL_MS
        # A retry of the head keeps the others waiting until it is due and delivered.
        later = now_ms() + 60_000
        assert await a.outcomes.record(outcome(got_a[0], "pending", next_attempt_at=later))
        got_b, due_b = await b.claims.claim({"ep_o": 1}, now_ms())
        assert got_b == [] and due_b["ep_o"] == later
        await conn.execute("UPDATE deliveries SET next_attempt_at = 0 WHERE id = 'dlv_ep_o_0'")
        got_b, _ = await b.claims.claim({"ep_o": 1}, now_ms())
        assert [c.delivery_id for c in got_b] == ["dlv_ep_o_0"]


async def test_disabled_and_deleted_endpoints_are_never_claimed(pg_dsn: str, fleet: Any) -> None:
    (d,) = await fleet(1)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_off", active=False)
        await add_endpoint(conn, "ep_gone")
        await add_endpoint(conn, "ep_on")
        await add_deliveries(conn, ["ep_off", "ep_gone", "ep_on"], 2)
        await conn.execute("UPDATE endpoints SET deleted_at = 1 WHERE id = 'ep_gone'")
        wants = {"ep_off": 2, "ep_gone": 2, "ep_on": 2, "ep_unknown": 2}
        claimed, next_due = await d.claims.claim(wants, now_ms())
        assert sorted(c.endpoint_id for c in claimed) == ["ep_on", "ep_on"]
        assert next_due == {"ep_off": None, "ep_gone": None, "ep_unknown": None}


async def test_a_rate_limited_endpoint_fails_closed_while_its_bucket_is_locked(
    pg_dsn: str, fleet: Any
) -> None:
    (d,) = await fleet(1)
    conn, other = await connect(pg_dsn), await connect(pg_dsn)
    async with conn, other:
        await add_endpoint(conn, "ep_r", rate_limit_per_s=100.0)
        await add_deliveries(conn, ["ep_r"], 3)
        await other.execute("BEGIN")
        await other.execute("SELECT 1 FROM endpoints WHERE id = 'ep_r' FOR UPDATE")
        now = now_ms()
        claimed, next_due = await d.claims.claim({"ep_r": 1}, now)
        assert claimed == []
        assert next_due["ep_r"] == now + CONTENDED_RETRY_MS
        await other.execute("COMMIT")
        claimed, _ = await d.claims.claim({"ep_r": 3}, now_ms())
        # One token (the bucket's capacity at 100/s): one claim now, the rest later.
        assert len(claimed) == 1
        claimed, next_due = await d.claims.claim({"ep_r": 3}, now_ms())
        assert claimed == [] or len(claimed) == 1
        r = await row(conn, "SELECT rl_tokens, rl_updated_at FROM endpoints WHERE id = 'ep_r'")
        assert r[0] < 1 and r[1] is not None


async def test_outcomes_arriving_together_share_a_transaction(pg_dsn: str, fleet: Any) -> None:
    (d,) = await fleet(1)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a", max_in_flight=10)
        await add_endpoint(conn, "ep_b", max_in_flight=10)
        await add_deliveries(conn, ["ep_a", "ep_b"], 10)
        claimed, _ = await d.claims.claim({"ep_a": 10, "ep_b": 10}, now_ms())
        assert len(claimed) == 20
        before = d.outcomes.transactions
        results = await asyncio.gather(
            *(
                d.outcomes.record(
                    outcome(
                        c,
                        "delivered" if c.endpoint_id == "ep_a" else "pending",
                        next_attempt_at=now_ms() + 5000,
                    )
                )
                for c in claimed
            )
        )
        assert results == [True] * 20
        assert d.outcomes.transactions - before <= 2
        counts = dict(await rows(conn, "SELECT status, count(*) FROM deliveries GROUP BY status"))
        assert counts == {"delivered": 10, "pending": 10}
        r = await row(conn, "SELECT count(*) FROM attempts")
        assert r[0] == 20
        health = {
            r[0]: (r[1], r[2])
            for r in await rows(
                conn,
                "SELECT id, last_success_at IS NOT NULL, failing_since IS NOT NULL FROM endpoints",
            )
        }
        assert health == {"ep_a": (True, False), "ep_b": (False, True)}
        seen = {e for e, _ in d.health}
        assert seen == {"ep_a", "ep_b"}
        # Slots and leases are cleared with the outcome.
        r = await row(
            conn,
            "SELECT count(*) FROM deliveries WHERE slot IS NOT NULL OR lease_token IS NOT NULL",
        )
        assert r[0] == 0


async def test_a_disabling_outcome_skips_pending_and_tells_the_other_daemons(
    pg_dsn: str, fleet: Any
) -> None:
    (d,) = await fleet(1)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a", max_in_flight=1)
        await add_deliveries(conn, ["ep_a"], 3)
        await conn.execute("LISTEN webhookd_endpoints")
        claimed, _ = await d.claims.claim({"ep_a": 1}, now_ms())
        gone = outcome(claimed[0], "failed", disable_reason="gone")
        assert await d.outcomes.record(gone)
        r = await row(conn, "SELECT active, disabled_reason FROM endpoints WHERE id = 'ep_a'")
        assert r == (False, "gone")
        counts = dict(await rows(conn, "SELECT status, count(*) FROM deliveries GROUP BY 1"))
        assert counts == {"failed": 1, "skipped": 2}
        notices = [n async for n in conn.notifies(timeout=2.0, stop_after=1)]
        assert [n.payload for n in notices] == [f"{d.id} ep_a"]
        assert (
            "ep_a",
            {
                "last_success_at": None,
                "failing_since": gone.attempt.started_at,
                "active": False,
                "disabled_reason": "gone",
            },
        ) in d.health


async def test_release_is_fenced_by_the_lease(pg_dsn: str, fleet: Any) -> None:
    a, b = await fleet(2)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_a")
        await add_deliveries(conn, ["ep_a"], 1)
        (mine,), _ = await a.claims.claim({"ep_a": 1}, now_ms())
        # Taken from a (its lease reaped) and claimed by b.
        await conn.execute(
            "UPDATE deliveries SET status = 'pending', slot = NULL, lease_owner = NULL, "
            "lease_token = NULL, lease_until = NULL"
        )
        (theirs,), _ = await b.claims.claim({"ep_a": 1}, now_ms())
        assert await a.claims.release([mine]) == []
        r = await row(conn, "SELECT status, lease_owner FROM deliveries")
        assert r == ("delivering", b.id)
        given = await b.claims.release([theirs])
        assert [e for e, _ in given] == ["ep_a"] and given[0][1] <= now_ms()
        r = await row(conn, "SELECT status, slot, lease_token FROM deliveries")
        assert r == ("pending", None, None)


async def test_a_claim_reads_only_its_endpoints_rows_however_large_the_backlog(
    pg_dsn: str, fleet: Any
) -> None:
    """Two endpoints, one with a backlog of 20,000 deliveries due later: a claim for the
    other reads its rows through the per-endpoint index, not the whole backlog by due
    time (which the planner prefers when it sees few endpoints)."""
    (d,) = await fleet(1)
    conn = await connect(pg_dsn)
    async with conn:
        await add_endpoint(conn, "ep_big")
        await add_endpoint(conn, "ep_small")
        await add_deliveries(conn, ["ep_small"], 1)
        await conn.execute(
            "INSERT INTO deliveries (id, event_seq, event_id, event_type, endpoint_id, status, "
            "next_attempt_at, created_at, updated_at) SELECT 'dlv_bulk_' || g, e.seq, e.id, "
            "e.type, 'ep_big', 'pending', %s + g, 0, 0 FROM generate_series(1, 20000) g, "
            "(SELECT seq, id, type FROM events LIMIT 1) e",
            (now_ms() - 30_000,),
        )
        await conn.execute("ANALYZE deliveries")
        params = {
            "ids": ["ep_small"],
            "ns": [5],
            "default_limit": 10,
            "lock_class": claims.CLAIM_LOCK_CLASS,
            "burst_s": claims.RATE_BURST_S,
            "now": now_ms(),
            "me": d.id,
            "lease_ms": 90_000,
        }
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute("EXPLAIN ANALYZE " + claims._CLAIM, params)
            plan = "\n".join(r[0] for r in await cur.fetchall())
        assert "Index Scan using deliveries_due on deliveries" in plan
        assert "deliveries_due_all" not in plan
        claimed, _ = await d.claims.claim({"ep_small": 5, "ep_big": 5}, now_ms())
        assert sorted(c.endpoint_id for c in claimed) == ["ep_big"] * 5 + ["ep_small"]
