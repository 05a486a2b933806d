"""Claims on a database several daemons share: who may attempt which delivery now.

One statement claims, for the dispatcher's wants (endpoint -> how many), due `pending`
deliveries and marks them `delivering` with a lease: the daemon's id, a fencing token
from the sequence `lease_tokens`, and an end (the database's clock + lease_s). Inside
that statement, for all daemons together:

- max_in_flight: each claimed row takes a numbered slot 0..limit-1 of its endpoint, and
  the unique partial index deliveries_slot allows one `delivering` row per slot. Two
  daemons that pick the same free slot from their snapshots collide there (23505 on that
  index): the loser's statement claims nothing and is run again, on a fresh snapshot.
- claimers take turns per endpoint: a transaction-scoped advisory lock per endpoint,
  tried, not waited for. An endpoint another daemon is claiming at that instant is
  skipped (it gets nothing now and is retried shortly), so claimers rarely race for
  slots and never wait on each other's index entries (which could deadlock).
- ordered: only the endpoint's oldest unfinished delivery (by publish order), only while
  it is pending and due, and only with no delivery of the endpoint in flight (its limit
  is one slot).
- disabled, deleted or paused endpoints are never claimed (as the endpoint row is now,
  whatever a daemon's view of it says).
- rate_limit_per_s: a token bucket on the endpoint row (rl_tokens at rl_updated_at),
  read under a row lock so that it is the latest version, refilled by the database's
  clock read after the lock was taken (so buckets are refilled in the order they were
  locked, and rl_updated_at never goes back), and debited by the rows claimed, in the
  same statement. A bucket whose row is locked (an outcome or a change being written) is
  skipped: it fails closed.

Candidates are locked with FOR UPDATE SKIP LOCKED and re-checked on their latest version,
so a row another daemon claimed after this statement's snapshot is passed over.

After the claim, endpoints that got fewer than they asked for (and ordered ones) are told
when to look again: their next pending delivery's due time, pushed back while another
daemon holds every slot, while the bucket is empty, or when another daemon was claiming
the endpoint at that instant (see `_look_again`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors

from webhookd.store.models import Claimed, Event
from webhookd.store.postgres import wakeups
from webhookd.store.postgres.db import Database
from webhookd.timefmt import now_ms

SLOT_INDEX = "deliveries_slot"
# The advisory-lock class (the first of the two int4 keys) of "claiming this endpoint";
# the second key is hashtext(endpoint id). "wc" in ASCII; any constant works.
CLAIM_LOCK_CLASS = 0x7763
# A lost slot race is run again at once (the next snapshot sees the winner's claim); after
# this many losses in a row the claim returns empty-handed and is retried later.
CLAIM_TRIES = 3
# When to look again at an endpoint whose every slot is held with at least one held by
# another daemon (nothing local tells this daemon when that request ends).
SLOT_POLL_MS = 100
# When to look again at an endpoint with due deliveries and room that this claim could not
# take: another daemon was claiming it (or those rows) at that instant.
CONTENDED_RETRY_MS = 20
# The token bucket holds at most this many seconds of the rate (and at least one token):
# with 10 ms, any window of T seconds admits at most rate * (T + 0.01) + 1 attempts.
RATE_BURST_S = 0.01

# Errors after which the statement is simply run again: a lost slot race (checked by index
# name), a deadlock or a serialization failure.
_RETRYABLE = (errors.DeadlockDetected, errors.SerializationFailure)

# _PER_ENDPOINT: the earliest (or oldest) rows of one endpoint are read in the order of a
# per-endpoint index (deliveries_due: endpoint_id, next_attempt_at; deliveries_ordered:
# endpoint_id, seq), so a lookup reads only the rows it returns, however large the backlog.
# The endpoint is matched with `>= x AND <= x` (the same as `= x` under any deterministic
# collation) and named in ORDER BY: with `= x` the planner drops endpoint_id from the
# order it needs, and may then walk deliveries_due_all (every endpoint's rows by due
# time) filtering for this endpoint's, which reads the whole backlog for an endpoint with
# nothing due. It does so whenever there are few endpoints, as the statistics see it.
_CLAIM = """
WITH want AS (
    SELECT w.endpoint_id, w.n FROM unnest(%(ids)s::text[], %(ns)s::int[]) AS w (endpoint_id, n)
    WHERE w.n > 0
),
ep AS MATERIALIZED (
    SELECT e.id, e.ordered, e.rate_limit_per_s AS rate, w.n,
           CASE WHEN e.ordered THEN 1 ELSE COALESCE(e.max_in_flight, %(default_limit)s) END AS lim
    FROM want w JOIN endpoints e ON e.id = w.endpoint_id
    WHERE e.active AND e.deleted_at IS NULL AND NOT e.paused
),
mine AS MATERIALIZED (
    SELECT ep.* FROM ep WHERE pg_try_advisory_xact_lock(%(lock_class)s, hashtext(ep.id))
),
bucket AS MATERIALIZED (
    SELECT e.id, e.rate_limit_per_s AS rate, e.rl_tokens, e.rl_updated_at
    FROM endpoints e WHERE e.id IN (SELECT id FROM mine WHERE rate IS NOT NULL)
    FOR NO KEY UPDATE SKIP LOCKED
),
tokens AS MATERIALIZED (
    SELECT b.id, GREATEST(b.rl_updated_at, c.at) AS at,
           LEAST(c.cap, COALESCE(b.rl_tokens, c.cap)
                 + GREATEST(c.at - COALESCE(b.rl_updated_at, 0), 0) * b.rate / 1000.0) AS tokens
    FROM bucket b CROSS JOIN LATERAL (
        SELECT GREATEST(1.0, b.rate * %(burst_s)s) AS cap,
               (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS at
    ) c
    WHERE b.rate IS NOT NULL
),
room AS MATERIALIZED (
    SELECT m.id, m.ordered, m.lim,
           LEAST(m.n, m.lim - busy.n, COALESCE(floor(t.tokens)::int, m.n)) AS room
    FROM mine m
    LEFT JOIN tokens t ON t.id = m.id
    CROSS JOIN LATERAL (
        SELECT count(*)::int AS n FROM deliveries x
        WHERE x.endpoint_id = m.id AND x.status = 'delivering'
    ) busy
    WHERE m.rate IS NULL OR t.id IS NOT NULL
),
cand AS (
    SELECT r.id AS endpoint_id, c.id, c.next_attempt_at, c.seq
    FROM room r CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at, d.seq FROM deliveries d
        WHERE d.endpoint_id >= r.id AND d.endpoint_id <= r.id AND d.status = 'pending'
          AND d.next_attempt_at <= %(now)s
        ORDER BY d.endpoint_id, d.next_attempt_at LIMIT r.room
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE r.room > 0 AND NOT r.ordered
    UNION ALL
    SELECT r.id, c.id, c.next_attempt_at, c.seq
    FROM room r
    CROSS JOIN LATERAL (
        SELECT h.id FROM deliveries h
        WHERE h.endpoint_id >= r.id AND h.endpoint_id <= r.id
          AND h.status IN ('pending', 'delivering')
        ORDER BY h.endpoint_id, h.seq LIMIT 1
    ) head
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at, d.seq FROM deliveries d
        WHERE d.id = head.id AND d.status = 'pending' AND d.next_attempt_at <= %(now)s
        FOR UPDATE SKIP LOCKED
    ) c
    WHERE r.room > 0 AND r.ordered
),
numbered AS (
    SELECT c.endpoint_id, c.id,
           row_number() OVER (PARTITION BY c.endpoint_id ORDER BY c.next_attempt_at, c.seq) AS rn
    FROM cand c
),
free AS (
    SELECT r.id AS endpoint_id, s.slot, row_number() OVER (PARTITION BY r.id ORDER BY s.slot) AS rn
    FROM room r CROSS JOIN LATERAL (
        SELECT g.slot FROM generate_series(0, r.lim - 1) AS g (slot)
        WHERE NOT EXISTS (
            SELECT 1 FROM deliveries x
            WHERE x.endpoint_id = r.id AND x.status = 'delivering' AND x.slot = g.slot
        )
        ORDER BY g.slot LIMIT r.room
    ) s
    WHERE r.room > 0
),
claimed AS (
    UPDATE deliveries d SET status = 'delivering', slot = f.slot, lease_owner = %(me)s,
           lease_token = nextval('lease_tokens'),
           lease_until = webhookd_now_ms() + %(lease_ms)s, updated_at = %(now)s
    FROM numbered n JOIN free f ON f.endpoint_id = n.endpoint_id AND f.rn = n.rn
    WHERE d.id = n.id
    RETURNING d.id, d.endpoint_id, d.attempt_count, d.failures, d.format_index, d.manual,
              d.resume_at, d.lease_token, d.event_seq
),
spent AS (
    UPDATE endpoints e SET rl_tokens = t.tokens - k.n, rl_updated_at = t.at
    FROM tokens t JOIN (
        SELECT endpoint_id, count(*) AS n FROM claimed GROUP BY endpoint_id
    ) k ON k.endpoint_id = t.id
    WHERE e.id = t.id
)
SELECT c.id, c.endpoint_id, c.attempt_count, c.failures, c.format_index, c.manual,
       c.resume_at, c.lease_token,
       ev.id, ev.type, ev.tenant, ev.payload, ev.deliver_at, ev.created_at, ev.seq, ep.ordered,
       ev.traceparent
FROM claimed c JOIN events ev ON ev.seq = c.event_seq JOIN ep ON ep.id = c.endpoint_id
"""

# What an endpoint that got less than it asked for looks like now (a fresh snapshot, after
# the claim committed). Each subquery is one probe of a partial index (see _PER_ENDPOINT).
_LOOK = """
SELECT e.id, e.active AND e.deleted_at IS NULL AND NOT e.paused, e.ordered,
       CASE WHEN e.ordered THEN 1 ELSE COALESCE(e.max_in_flight, %(default_limit)s) END,
       (SELECT p.next_attempt_at FROM deliveries p
        WHERE p.endpoint_id >= e.id AND p.endpoint_id <= e.id AND p.status = 'pending'
        ORDER BY p.endpoint_id, p.next_attempt_at LIMIT 1),
       (SELECT p.next_attempt_at FROM deliveries p
        WHERE p.endpoint_id >= e.id AND p.endpoint_id <= e.id AND p.status = 'pending'
        ORDER BY p.endpoint_id, p.seq LIMIT 1),
       busy.n, busy.others, e.rate_limit_per_s,
       LEAST(GREATEST(1.0, e.rate_limit_per_s * %(burst_s)s),
             COALESCE(e.rl_tokens, 1e9)
             + GREATEST(webhookd_now_ms() - COALESCE(e.rl_updated_at, 0), 0)
               * e.rate_limit_per_s / 1000.0)
FROM endpoints e CROSS JOIN LATERAL (
    SELECT count(*)::int AS n,
           (count(*) FILTER (WHERE x.lease_owner IS DISTINCT FROM %(me)s))::int AS others
    FROM deliveries x WHERE x.endpoint_id = e.id AND x.status = 'delivering'
) busy
WHERE e.id = ANY(%(ids)s::text[])
"""

_NEXT_DUE = """
SELECT i.id, (SELECT d.next_attempt_at FROM deliveries d
              WHERE d.endpoint_id >= i.id AND d.endpoint_id <= i.id AND d.status = 'pending'
              ORDER BY d.endpoint_id, d.next_attempt_at LIMIT 1)
FROM unnest(%s::text[]) AS i (id)
"""

# Fenced: only the claim that holds this token gives the delivery back.
_RELEASE_PENDING = """
UPDATE deliveries d SET status = 'pending',
       next_attempt_at = LEAST(COALESCE(d.next_attempt_at, %(now)s), %(now)s),
       slot = NULL, lease_owner = NULL, lease_token = NULL, lease_until = NULL,
       updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS v (id, token)
WHERE d.id = v.id AND d.lease_token = v.token AND d.status = 'delivering'
RETURNING d.endpoint_id, d.next_attempt_at
"""
_RELEASE_SKIPPED = """
UPDATE deliveries d SET status = 'skipped', next_attempt_at = NULL, manual = false,
       slot = NULL, lease_owner = NULL, lease_token = NULL, lease_until = NULL,
       updated_at = %(now)s
FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS v (id, token)
WHERE d.id = v.id AND d.lease_token = v.token AND d.status = 'delivering'
RETURNING d.endpoint_id, d.next_attempt_at
"""


def lease_token(lease: str | None) -> int | None:
    """The fencing token a Claimed/Outcome carries (its text form), as the column holds it;
    None for a claim without one, which no row matches."""
    if lease is None:
        return None
    try:
        return int(lease)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class _Look:
    """An endpoint's state after a claim, from _LOOK."""

    active: bool  # and not paused: it may be claimed
    ordered: bool
    limit: int
    next_due: int | None  # the earliest pending delivery
    head_due: int | None  # the oldest pending delivery by publish order
    busy: int  # delivering rows (slots held)
    others: int  # of them, held by other daemons
    rate: float | None
    tokens: float | None


def _look_again(look: _Look | None, now: int) -> int | None:
    """When a claim for this endpoint may next get something (ms), or None if it has
    nothing pending (or is gone, disabled or paused)."""
    if look is None or not look.active:
        return None
    due = look.head_due if look.ordered else look.next_due
    if due is None:
        return None
    at = due
    full = look.busy >= look.limit
    if full and look.others > 0:
        # Only another daemon's outcome frees a slot, and nothing tells this one.
        at = max(at, now + SLOT_POLL_MS)
    if look.rate and look.tokens is not None and look.tokens < 1:
        at = max(at, now + math.ceil((1 - look.tokens) * 1000 / look.rate))
    if at <= now and not full:
        # Due, with room, yet not claimed: another daemon was claiming it just then.
        at = now + CONTENDED_RETRY_MS
    return at


def _claimed_from_row(r: Sequence[Any], events: dict[int, Event]) -> Claimed:
    event = events.get(r[14])
    if event is None:
        event = events[r[14]] = Event(
            r[8], r[9], r[10], bytes(r[11]), r[12], r[13], r[14], traceparent=r[16]
        )
    return Claimed(
        delivery_id=r[0],
        endpoint_id=r[1],
        event=event,
        attempt_count=r[2],
        failures=r[3],
        format_index=r[4],
        manual=bool(r[5]),
        resume_at=r[6],
        had_failures=r[2] > 0,
        lease=str(r[7]),
    )


def _is_lost_race(exc: psycopg.Error) -> bool:
    if isinstance(exc, _RETRYABLE):
        return True
    return isinstance(exc, errors.UniqueViolation) and exc.diag.constraint_name == SLOT_INDEX


class Claims:
    """Claims, next-due lookups and releases of one daemon (`member_id`) on `db`.

    `default_limit` is delivery.max_in_flight_per_endpoint, for endpoints without their
    own max_in_flight; it and `member_id` may be changed between calls (a reload, join)."""

    def __init__(self, db: Database, member_id: str, *, lease_s: float, default_limit: int) -> None:
        self.db = db
        self.member_id = member_id
        self.lease_ms = int(lease_s * 1000)
        self.default_limit = default_limit
        # Claims that lost a slot race and were run again, for tests and metrics.
        self.lost_races = 0

    async def claim(
        self, wants: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], dict[str, int | None]]:
        """Claim up to wants[e] due deliveries of each endpoint e, within its limits over all
        daemons. Returns them, and for each endpoint that got fewer than it asked for or is
        ordered, when to look again (None: nothing pending)."""
        wanted = {e: n for e, n in wants.items() if n > 0}
        if not wanted:
            return [], {}
        claimed, ordered = await self._claim_rows(wanted, now)
        counts = dict.fromkeys(wanted, 0)
        for c in claimed:
            counts[c.endpoint_id] += 1
        # An ordered endpoint that got its head is told when its next one is due, as on
        # SQLite; the others only when they got less than they asked for.
        look_at = [e for e, n in wanted.items() if counts[e] < n or e in ordered]
        if not look_at:
            return claimed, {}
        looks = await self._look(look_at)
        return claimed, {e: _look_again(looks[e], now) for e in look_at}

    async def _claim_rows(
        self, wanted: Mapping[str, int], now: int
    ) -> tuple[list[Claimed], set[str]]:
        """The claim statement, run again after a lost race; the claimed deliveries and
        which of their endpoints are ordered."""
        params = {
            "ids": list(wanted),
            "ns": list(wanted.values()),
            "default_limit": self.default_limit,
            "lock_class": CLAIM_LOCK_CLASS,
            "burst_s": RATE_BURST_S,
            "now": now,
            "me": self.member_id,
            "lease_ms": self.lease_ms,
        }
        # The retry is inside the connection's block: the pool's wrapper turns a deadlock
        # (an OperationalError) into StorageError on its way out.
        async with self.db.connection() as conn:
            for _ in range(CLAIM_TRIES):
                try:
                    cur = await conn.execute(_CLAIM, params)
                    rows = await cur.fetchall()
                except psycopg.Error as exc:
                    if not _is_lost_race(exc):
                        raise
                    self.lost_races += 1
                    continue
                events: dict[int, Event] = {}
                ordered = {r[1] for r in rows if r[15]}
                return [_claimed_from_row(r, events) for r in rows], ordered
        return [], set()

    async def _look(self, endpoint_ids: list[str]) -> dict[str, _Look | None]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                _LOOK,
                {
                    "ids": endpoint_ids,
                    "default_limit": self.default_limit,
                    "burst_s": RATE_BURST_S,
                    "me": self.member_id,
                },
            )
            rows = await cur.fetchall()
        looks: dict[str, _Look | None] = dict.fromkeys(endpoint_ids)
        for r in rows:
            looks[r[0]] = _Look(
                active=bool(r[1]),
                ordered=bool(r[2]),
                limit=int(r[3]),
                next_due=r[4],
                head_due=r[5],
                busy=int(r[6]),
                others=int(r[7]),
                rate=r[8],
                tokens=None if r[9] is None else float(r[9]),
            )
        return looks

    async def next_due(self, endpoint_ids: Iterable[str]) -> dict[str, int | None]:
        """Per endpoint, when its earliest pending delivery is due (None: none pending):
        one index probe each, however large the backlog."""
        ids = list(dict.fromkeys(endpoint_ids))
        if not ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute(_NEXT_DUE, (ids,))
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def release(
        self, claimed: Sequence[Claimed], status: str = "pending"
    ) -> list[tuple[str, int]]:
        """Give claimed deliveries back unattempted, fenced by their lease tokens:
        "pending" (due now, keeping an earlier due time; the other daemons are told) or
        "skipped". A delivery whose claim was lost meanwhile (reaped, claimed again) is
        left to its new owner. Returns the (endpoint id, due ms) of those now pending."""
        if not claimed:
            return []
        assert status in ("pending", "skipped")
        params = {
            "ids": [c.delivery_id for c in claimed],
            "tokens": [lease_token(c.lease) for c in claimed],
            "now": now_ms(),
        }
        sql = _RELEASE_PENDING if status == "pending" else _RELEASE_SKIPPED
        async with self.db.transaction() as conn:
            cur = await conn.execute(sql, params)
            given = [(r[0], r[1]) for r in await cur.fetchall() if r[1] is not None]
            await wakeups.notify_due(conn, self.member_id, given)
        return given
