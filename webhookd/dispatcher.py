"""The dispatcher: claim due deliveries, deliver them with bounded concurrency, record
what happened, and reschedule failures.

Scheduling state is kept per endpoint, not per delivery: for each endpoint, how many
requests are open, a short queue of deliveries claimed ahead, and when its next pending
delivery is due. The backlog itself stays on disk; claims ask the store for at most an
endpoint's free slots plus its queue's room (CLAIM_AHEAD times its limit), so one slow or
dead endpoint holds only its own slots and never delays the others.

Where a claim holds one of the endpoint's slots for every daemon sharing the database
(`Store.claims_hold_slots`, PostgreSQL), nothing is claimed ahead: a row waiting in this
daemon's queue would keep another daemon from sending. A slot is then this daemon's from
the claim until the outcome is stored, and only the free ones are asked for, so a claim
answering "due now" for an endpoint whose slots are all this daemon's is not asked again
until one of its requests is settled.
Publishing wakes the loop; otherwise it sleeps until the earliest due time.

A wake-up never walks every endpoint: it looks at the endpoints whose state changed since
the last one (a notify, a claim, a request started or over, new settings), those whose
time came (a heap of when each endpoint next has something to do, stale entries skipped),
and as many of the endpoints with deliveries due now as it has free workers for, taken in
turn. With 50,000 endpoints and one of them busy, a wake-up costs what it costs with one.

An endpoint with free slots and nothing due offers them to publishing (store/handoff.py):
a delivery published then is inserted already claimed and handed over when its publish
commits, so its request starts without a claim transaction of its own. Its offer is
updated whenever its room changes, and all offers together are bounded by the free
workers at every wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from webhookd import delivery, formats, http1, signing, tracing
from webhookd.attemptlog import AttemptLog
from webhookd.config import DeliveryConfig
from webhookd.receiver_auth import AUTH_TOKEN, ReceiverAuth
from webhookd.retry import next_delay_s, parse_retry_after
from webhookd.store.interface import (
    Attempt,
    Claimed,
    Endpoint,
    EndpointTLS,
    Outcome,
    StorageError,
    Store,
)
from webhookd.timefmt import now_ms, to_rfc3339

log = logging.getLogger("webhookd.dispatcher")
# Deliveries claimed ahead per endpoint, as a multiple of its limit: under sustained load
# a claim waits for the writer's current transaction (outcomes being recorded) and then
# its own commit, several milliseconds in all. With one limit's worth ahead, an endpoint
# at 64 open requests sat at its limit only a quarter of the time; with three, about
# three quarters (bench/RESULTS.md, sixth round).
CLAIM_AHEAD = 3
# All attempts, open or waiting for their outcome to be written, as a multiple of workers.
RECORDING_FACTOR = 6
# An outcome storage refused (a full disk, an I/O error) is written again after this,
# doubling up to the maximum, and at once when any other write succeeds.
RECORD_RETRY_FIRST_S = 0.05
RECORD_RETRY_MAX_S = 1.0
# Tries of an outcome write that fails for another reason than storage (see _record).
RECORD_TRIES = 3
# Where claims hold slots: an endpoint that got nothing though it had room and was said
# to be due now (a slot of this daemon's that it does not know of, such as the claim of a
# statement whose answer was lost, or a limit its view has not caught up with yet) is
# asked again after this, not at once.
EMPTY_CLAIM_RETRY_MS = 100


@dataclass
class _EndpointState:
    in_flight: int = 0
    # Requests over whose outcome is not stored yet: where claims hold slots
    # (Store.claims_hold_slots), each still holds one of the endpoint's.
    settling: int = 0
    next_due: int | None = None  # ms; None: nothing pending that we know of
    next_send: float = 0.0  # ms; the rate limit's next free slot
    notified: int = 0  # bumped by every notify, to spot one that raced a claim
    # Claimed ahead, waiting for a free slot: a finished request is followed at once by
    # the next one, without waiting for a claim to commit.
    ready: deque[Claimed] = field(default_factory=deque)
    # When the loop looks at this endpoint again by itself (its live entry in the
    # dispatcher's heap); None: only a change brings it back. Other entries are stale.
    look_at: float | None = None


@dataclass
class _Task:
    claimed: Claimed
    task: asyncio.Task[None]
    attempting: bool = True


@dataclass
class Stats:
    attempts: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    in_flight: int = 0
    # Loop wake-ups, and endpoint states looked at by them: the visits per wake-up follow
    # the endpoints with something to do, not all endpoints.
    wakeups: int = 0
    state_visits: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _offer(st: _EndpointState, now: int, room: int, prefetch: int) -> int:
    """Slots an endpoint with nothing due offers to publishing: what is published for it
    now may come straight here, within the free workers (see store/handoff.py)."""
    if (st.next_due is None or st.next_due > now) and prefetch and room > 0:
        return room
    return 0


def _claim_due(ep: Endpoint, st: _EndpointState, room: int, queue_cap: int) -> float | None:
    """When this endpoint's next claim may happen, or None if it has nothing to claim or no
    room (its claimed-ahead queue is full)."""
    if st.next_due is None or room <= 0 or len(st.ready) >= queue_cap:
        return None
    due: float = st.next_due
    if ep.rate_limit_per_s:
        due = max(due, st.next_send)
    return due


def _attempt_record(c: Claimed, resp: delivery.Response, fmt: str, started_at: int) -> Attempt:
    return Attempt(
        number=c.attempt_count + 1,
        started_at=started_at,
        duration_ms=resp.duration_ms,
        trigger="manual" if c.manual else "scheduled",
        format=fmt,
        request_headers=resp.request_headers,
        status_code=resp.status_code,
        response_headers=resp.headers,
        response_body=resp.body,
        error_kind=resp.error_kind,
        error_message=resp.error_message,
    )


def _outcome(
    c: Claimed,
    attempt: Attempt,
    success: bool,
    status: str,
    *,
    next_at: int | None = None,
    failures: int | None = None,
    format_index: int | None = None,
    disable: str | None = None,
) -> Outcome:
    return Outcome(
        delivery_id=c.delivery_id,
        endpoint_id=c.endpoint_id,
        attempt=attempt,
        status=status,
        next_attempt_at=next_at,
        failures=c.failures if failures is None else failures,
        format_index=c.format_index if format_index is None else format_index,
        success=success,
        disable_reason=disable,
        lease=c.lease,
    )


def _without_proxy_auth(headers: dict[str, str]) -> dict[str, str]:
    """The proxy's credentials are not part of what the receiver got: keep them out of
    the attempt log."""
    if not any(k.lower() == "proxy-authorization" for k in headers):
        return headers
    return {k: v for k, v in headers.items() if k.lower() != "proxy-authorization"}


def _internal_failure(
    c: Claimed,
    resp: delivery.Response,
    fmt: str,
    started_at: int,
    what: str,
    schedule_s: tuple[float, ...],
) -> Outcome:
    """A failed attempt of ours: what came back is kept, and the delivery follows the
    schedule as after any failure, without jitter or Retry-After (they may be what
    failed). Only plain arithmetic here: this is the answer when deciding raised."""
    attempt = Attempt(
        number=c.attempt_count + 1,
        started_at=started_at,
        duration_ms=resp.duration_ms,
        trigger="manual" if c.manual else "scheduled",
        format=fmt,
        request_headers=resp.request_headers,
        status_code=resp.status_code,
        response_headers=resp.headers,
        response_body=resp.body,
        error_kind="internal_error",
        error_message=what,
    )
    if c.manual:
        if c.resume_at is not None:
            return _outcome(c, attempt, False, "pending", next_at=c.resume_at)
        return _outcome(c, attempt, False, "failed")
    failures = c.failures + 1
    delay = next_delay_s(schedule_s, failures, 0)
    if delay is None:
        return _outcome(c, attempt, False, "failed", failures=failures)
    next_at = now_ms() + int(delay * 1000)
    return _outcome(c, attempt, False, "pending", next_at=next_at, failures=failures)


def _without_details(o: Outcome) -> Outcome:
    """The outcome with the attempt's recorded request and response left out, for when
    storing them failed: what became of the delivery matters more than the details."""
    a = o.attempt
    bare = Attempt(
        number=a.number,
        started_at=a.started_at,
        duration_ms=a.duration_ms,
        trigger=a.trigger,
        format=a.format,
        request_headers={},
        status_code=a.status_code,
        response_headers={},
        response_body="",
        error_kind=a.error_kind,
        error_message=a.error_message,
    )
    return dataclasses.replace(o, attempt=bare)


class Dispatcher:
    def __init__(
        self,
        store: Store,
        client: http1.Client,
        config: DeliveryConfig,
        *,
        rand: random.Random | None = None,
        on_outcome: Callable[[Claimed, Endpoint, Outcome], None] | None = None,
        attempt_log: AttemptLog | None = None,
        tracer: tracing.Tracer | None = None,
    ) -> None:
        self.store = store
        self.tracer = tracer  # None: tracing off (a stored traceparent is still sent)
        self.client = client
        self.config = config
        self.rand = rand or random.Random()
        self.receiver_auth = ReceiverAuth(client)  # the receivers' credentials and tokens
        self.on_outcome = on_outcome
        # The `attempt_failed` lines, a few a minute per endpoint.
        self.attempt_log = attempt_log or AttemptLog(log)
        # A claimed delivery holds a slot for all daemons until its outcome is stored: no
        # claiming ahead, and a slot is free only once settled.
        self._slots_held = store.claims_hold_slots
        self._ahead = 0 if self._slots_held else CLAIM_AHEAD
        self._states: dict[str, _EndpointState] = {}
        # Endpoints to file again at the next wake-up: their state, their room or their
        # settings changed.
        self._changed: set[str] = set()
        # Endpoints with deliveries to claim now, in the order they are served: the first
        # ones go to the back once looked at, so that all are served in turn.
        self._due: OrderedDict[str, None] = OrderedDict()
        # (when, endpoint id): endpoints to look at again later (see _EndpointState.look_at).
        self._later: list[tuple[float, str]] = []
        # Endpoints holding claimed-ahead deliveries that wait for a worker or a slot.
        self._holding: set[str] = set()
        self._tasks: dict[str, _Task] = {}
        # endpoint id -> (its proxy, its tls, the Route built from them and delivery.proxy)
        self._routes: dict[str, tuple[str | None, EndpointTLS | None, http1.Route]] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._attempting = 0
        self._queued = 0
        # Deliveries whose outcome storage refused, waiting in _write to be written.
        self._unwritten: set[str] = set()
        # Deliveries whose task exists but that the store cancelled (their event's payload
        # was erased): a task that has not started its request yet does not send it.
        self._cancelled: set[str] = set()
        self._written = asyncio.Event()  # replaced after each set: wakes waiting writes
        self._abandon = False  # stop(): storage had its grace; one last try each
        self.stats = Stats()

    # --- control --------------------------------------------------------------------

    async def start(self) -> None:
        due = await self.store.next_due(e.id for e in self.store.endpoints())
        for endpoint_id, at in due.items():
            self._state(endpoint_id).next_due = at
        self._changed.update(self._states)  # filed once, at the first wake-up
        self._event_loop = asyncio.get_running_loop()
        self.store.subscribe(self)
        self._loop_task = asyncio.create_task(self._run(), name="webhookd-dispatcher")

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done() and not self._stopping

    def update_config(self, config: DeliveryConfig) -> None:
        if config.proxy != self.config.proxy:
            self._routes.clear()  # endpoints without their own proxy now use the new one
        self.config = config
        # The default per-endpoint limit may have changed: every endpoint's room with it.
        self._changed.update(self._states)
        self._wake.set()

    def _notify(self, endpoint_id: str, due_ms: int) -> None:
        """A delivery for this endpoint is pending from `due_ms` on (publish, retry, recover,
        a retry of our own); with 0, look at it again now (its settings changed)."""
        st = self._state(endpoint_id)
        st.notified += 1
        if st.next_due is None or due_ms < st.next_due:
            st.next_due = due_ms
        self._changed.add(endpoint_id)
        self._wake.set()

    # --- what the store tells us (interface.DueListener), after each commit ------------

    def due(self, items: Iterable[tuple[str, int]]) -> None:
        """Deliveries of these endpoints are pending from these times on."""
        for endpoint_id, due_ms in items:
            self._notify(endpoint_id, due_ms)

    def endpoint_changed(self, endpoint_id: str) -> None:
        """Its settings changed (disabled too: a disabled one gives back what it claimed
        ahead): look at it again now."""
        self._notify(endpoint_id, 0)

    def endpoint_deleted(self, endpoint_id: str) -> None:
        """The endpoint was deleted: no more offers or claims for it; its claimed-ahead
        deliveries (already cancelled by the store) leave the queue; its state goes once
        its open requests are over."""
        self._routes.pop(endpoint_id, None)
        self.receiver_auth.forget(endpoint_id)
        self.store.offer(endpoint_id, 0)
        self._due.pop(endpoint_id, None)
        st = self._states.get(endpoint_id)
        if st is None:
            return
        st.look_at = None
        if st.ready:
            self._start_ready(endpoint_id)
        if st.in_flight == 0:
            del self._states[endpoint_id]
            self._holding.discard(endpoint_id)

    def deliveries_cancelled(self, items: Sequence[tuple[str, str]]) -> None:
        """Their event's payload was erased and the store cancelled them: those claimed
        and waiting leave the queue unsent, one whose task has not started its request
        yet sends nothing; a request already under way finishes (its outcome leaves the
        delivery cancelled)."""
        by_endpoint: dict[str, set[str]] = {}
        for endpoint_id, delivery_id in items:
            by_endpoint.setdefault(endpoint_id, set()).add(delivery_id)
            if delivery_id in self._tasks:
                self._cancelled.add(delivery_id)
        for endpoint_id, ids in by_endpoint.items():
            st = self._states.get(endpoint_id)
            if st is None or not st.ready:
                continue
            kept = deque(c for c in st.ready if c.delivery_id not in ids)
            self._queued -= len(st.ready) - len(kept)
            st.ready = kept
            self._start_ready(endpoint_id)

    def in_flight_for(self, endpoint_id: str) -> int:
        st = self._states.get(endpoint_id)
        return st.in_flight if st else 0

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let open requests finish within `grace_s`; give the rest back."""
        self._stopping = True
        self.store.unsubscribe(self)
        self._wake.set()
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        # Claimed ahead but never started.
        give_back = [c for st in self._states.values() for c in st.ready]
        for st in self._states.values():
            st.ready.clear()
        self._queued = 0
        tasks = [t.task for t in self._tasks.values()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            cut = [t for t in self._tasks.values() if t.task in pending and t.attempting]
            give_back += [t.claimed for t in cut]
            for t in cut:
                t.task.cancel()
            # Outcomes still waiting for storage get one more try, then stay `delivering`
            # on disk, to be requeued at the next start.
            self._abandon = True
            self._wake_writers()
            if pending:
                await asyncio.wait(pending)
        self.attempt_log.flush()  # what it left out of the log, said before exiting
        if not give_back:
            return
        try:
            await self.store.release(give_back)
        except StorageError:
            log.exception("could not give back deliveries; they are requeued at startup")
            return
        log.info(
            "returned unfinished deliveries to pending",
            extra={"event": "shutdown_requeued", "count": len(give_back)},
        )

    # --- the loop -------------------------------------------------------------------

    def _state(self, endpoint_id: str) -> _EndpointState:
        st = self._states.get(endpoint_id)
        if st is None:
            st = self._states[endpoint_id] = _EndpointState()
            self._changed.add(endpoint_id)  # filed at the next wake-up
        return st

    def _limit(self, ep: Endpoint) -> int:
        if ep.ordered:
            return 1
        return ep.max_in_flight or self.config.max_in_flight_per_endpoint

    def _room(self, ep: Endpoint, st: _EndpointState) -> tuple[int, int, int]:
        """(room for more claims, how many it may claim ahead, its queue's capacity)."""
        limit = self._limit(ep)
        prefetch = 0 if ep.ordered or ep.rate_limit_per_s else self._ahead * limit
        held = st.in_flight + len(st.ready) + (st.settling if self._slots_held else 0)
        return limit + prefetch - held, prefetch, max(prefetch, limit)

    def _touch(self, endpoint_id: str) -> None:
        """This endpoint's state changed: file it again at the next wake-up."""
        self._changed.add(endpoint_id)
        self._wake.set()

    def _wants(self, now: int) -> tuple[dict[str, int], float | None]:
        """How many deliveries to claim per endpoint now, and when to look again."""
        self.stats.wakeups += 1
        # A worker is busy while its request is open; writing the outcome happens after it
        # is free again (batched with other outcomes), bounded so that a slow disk pushes
        # back instead of piling up outcomes in memory.
        free = (1 + self._ahead) * self.config.workers - self._attempting - self._queued
        if len(self._tasks) >= RECORDING_FACTOR * self.config.workers or self._unwritten:
            free = 0  # (while storage refuses outcomes, nothing more is claimed)
        self._come_due(now)
        changed, self._changed = self._changed, set()
        for endpoint_id in changed:
            self._file(endpoint_id, now)
        self.store.offer_budget(max(free, 0))
        if free <= 0:
            return {}, None
        wants = self._take_due(now, free)
        if sum(wants.values()) > free:
            wants = self._share(wants, free)
        return wants, self._next_look()

    def _come_due(self, now: int) -> None:
        """Endpoints whose time came (a delivery or the rate limit's next slot) are filed
        again, like changed ones."""
        later = self._later
        while later and later[0][0] <= now:
            at, endpoint_id = heapq.heappop(later)
            st = self._states.get(endpoint_id)
            if st is not None and st.look_at == at:
                st.look_at = None
                self._changed.add(endpoint_id)

    def _next_look(self) -> float | None:
        """When the loop must look again by itself: the earliest live entry of the heap."""
        later = self._later
        while later:
            at, endpoint_id = later[0]
            st = self._states.get(endpoint_id)
            if st is not None and st.look_at == at:
                return at
            heapq.heappop(later)
        return None

    def _file(self, endpoint_id: str, now: int) -> None:
        """File one endpoint after a change: its offer to publishing, and whether it has
        deliveries to claim now (the due set), later (the heap) or not until a change."""
        st = self._states.get(endpoint_id)
        if st is None:
            self.store.offer(endpoint_id, 0)
            self._due.pop(endpoint_id, None)
            return
        self.stats.state_visits += 1
        ep = self.store.endpoint(endpoint_id)
        if ep is None or not ep.active or ep.paused:
            self.store.offer(endpoint_id, 0)
            self._due.pop(endpoint_id, None)
            st.look_at = None
            self._idle(endpoint_id, st, ep)
            return
        room, prefetch, queue_cap = self._room(ep, st)
        offer = _offer(st, now, room, prefetch)
        self.store.offer(endpoint_id, offer)
        at = _claim_due(ep, st, room, queue_cap)
        if at is not None and at <= now:
            self._due.setdefault(endpoint_id)  # a due endpoint keeps its turn
            st.look_at = None
            return
        self._due.pop(endpoint_id, None)
        if offer and st.next_due is not None:
            # Its pending deliveries come due then: the offer is withdrawn, so that they
            # go before fresh ones.
            at = st.next_due if at is None else min(at, st.next_due)
        self._look_at(endpoint_id, st, at)

    def _look_at(self, endpoint_id: str, st: _EndpointState, at: float | None) -> None:
        if at == st.look_at:
            return
        st.look_at = at
        if at is None:
            return
        later = self._later
        heapq.heappush(later, (at, endpoint_id))
        if len(later) > 2 * len(self._states) + 64:
            # Mostly stale entries (an endpoint's time moved often): keep the live ones.
            self._later = [(s.look_at, e) for e, s in self._states.items() if s.look_at is not None]
            heapq.heapify(self._later)

    def _take_due(self, now: int, free: int) -> dict[str, int]:
        """What the due endpoints want, taken in turn from where the last wake-up stopped
        until every free worker has an endpoint: with more due endpoints than free
        workers, a wake-up looks at only as many as it can serve."""
        wants: dict[str, int] = {}
        due = self._due
        for _ in range(len(due)):
            if len(wants) >= free:
                break
            endpoint_id, _ = due.popitem(last=False)
            st = self._states.get(endpoint_id)
            ep = self.store.endpoint(endpoint_id)
            if st is None or ep is None or not ep.active or ep.paused:
                self._file(endpoint_id, now)
                continue
            self.stats.state_visits += 1
            room, _, queue_cap = self._room(ep, st)
            at = _claim_due(ep, st, room, queue_cap)
            if at is None or at > now:
                self._file(endpoint_id, now)
                continue
            due[endpoint_id] = None  # to the back: the next wake-up starts with others
            wants[endpoint_id] = min(room, 1) if ep.rate_limit_per_s else room
        return wants

    def _idle(self, endpoint_id: str, st: _EndpointState, ep: Endpoint | None) -> None:
        """An endpoint that takes no deliveries: forget a deleted one once its requests are
        over; give back its, a disabled or a paused one's claimed-ahead deliveries (they
        are cancelled, skipped, or pending again)."""
        if st.ready:
            self._start_ready(endpoint_id)
        elif ep is None and st.in_flight == 0:
            del self._states[endpoint_id]
            self._routes.pop(endpoint_id, None)
            self._holding.discard(endpoint_id)

    def _share(self, wants: dict[str, int], free: int) -> dict[str, int]:
        """Spread the free workers over the due endpoints, one at a time round robin."""
        order = list(wants)
        self.rand.shuffle(order)
        out: dict[str, int] = {}
        while free > 0:
            progressed = False
            for endpoint_id in order:
                if free == 0:
                    break
                if out.get(endpoint_id, 0) < wants[endpoint_id]:
                    out[endpoint_id] = out.get(endpoint_id, 0) + 1
                    free -= 1
                    progressed = True
            if not progressed:
                break
        return out

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            now = now_ms()
            wants, wake_at = self._wants(now)
            if wants:
                seen = {e: self._state(e).notified for e in wants}
                try:
                    claimed, next_due = await self.store.claim(wants, now)
                except StorageError:
                    log.exception("claim failed; retrying in 1 s")
                    await self._sleep(1.0)
                    continue
                self._after_claim(seen, claimed, next_due)
                continue
            timeout = None if wake_at is None else max((wake_at - now_ms()) / 1000, 0.0)
            await self._sleep(timeout)

    async def _sleep(self, delay_s: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay_s)

    def _after_claim(
        self,
        seen: dict[str, int],
        claimed: list[Claimed],
        next_due: dict[str, int | None],
    ) -> None:
        now = now_ms()
        got = {c.endpoint_id for c in claimed} if self._slots_held else set()
        for endpoint_id, due in next_due.items():
            st = self._state(endpoint_id)
            if self._slots_held and due is not None and due <= now and endpoint_id not in got:
                due = now + EMPTY_CLAIM_RETRY_MS  # (see EMPTY_CLAIM_RETRY_MS)
            if st.notified == seen.get(endpoint_id):
                st.next_due = due
            elif due is not None and (st.next_due is None or due < st.next_due):
                # A notify arrived while the claim ran: its delivery may not have been
                # visible to the claim, so keep what it said as well.
                st.next_due = due
        # Each endpoint asked got deliveries, a new due time, or both: file it again.
        self._changed.update(seen)
        self._changed.update(next_due)
        touched: set[str] = set()
        for c in claimed:
            ep = self.store.endpoint(c.endpoint_id)
            st = self._state(c.endpoint_id)
            if ep is not None and ep.rate_limit_per_s:
                st.next_send = max(float(now), st.next_send) + 1000.0 / ep.rate_limit_per_s
            st.ready.append(c)
            self._queued += 1
            touched.add(c.endpoint_id)
        for endpoint_id in touched:
            self._start_ready(endpoint_id)

    def handed_over(self, claimed: list[Claimed]) -> None:
        """Deliveries a publish transaction claimed for us has just committed."""
        touched: set[str] = set()
        for c in claimed:
            self._state(c.endpoint_id).ready.append(c)
            self._queued += 1
            touched.add(c.endpoint_id)
        for endpoint_id in touched:
            self._start_ready(endpoint_id)
        self._wake.set()

    def _start_ready(self, endpoint_id: str) -> None:
        """Start claimed deliveries of this endpoint while it and the pool have room; all of
        them at once if it is disabled, paused or deleted, since they are only given back
        then."""
        st = self._states.get(endpoint_id)
        if st is None:
            return
        # Called whenever its queue or its open requests change: its room changed.
        self._touch(endpoint_id)
        if not st.ready:
            self._holding.discard(endpoint_id)
            return
        ep = self.store.endpoint(endpoint_id)
        give_back = ep is None or not ep.active or ep.paused
        limit = self._limit(ep) if ep is not None else 1
        while st.ready and (
            give_back or (st.in_flight < limit and self._attempting < self.config.workers)
        ):
            c = st.ready.popleft()
            self._queued -= 1
            st.in_flight += 1
            self._attempting += 1
            # The loop kept from start(): asyncio.create_task would ask for the running
            # loop, a getpid() system call per delivery on Python 3.11.
            loop = self._event_loop or asyncio.get_running_loop()
            task = loop.create_task(self._deliver(c))
            self._tasks[c.delivery_id] = _Task(claimed=c, task=task)
        if st.ready:
            self._holding.add(endpoint_id)
        else:
            self._holding.discard(endpoint_id)
        self.stats.in_flight = self._attempting

    # --- one delivery -----------------------------------------------------------------

    async def _deliver(self, c: Claimed) -> None:
        try:
            ep = self.store.endpoint(c.endpoint_id)
            if ep is None or c.delivery_id in self._cancelled:
                # Deleted after the claim, or its payload erased: the store already
                # cancelled the delivery.
                return
            if not ep.active or ep.paused:
                await self._give_back(c, ep)
                return
            resp, fmt, started_at = await self._attempt_safely(c, ep)
            outcome = self._decide_safely(c, ep, resp, fmt, started_at)
            if outcome.disable_reason is not None:
                # Nothing more may go to this endpoint: mark it disabled in memory now, and
                # keep its slot until the disable is on disk, so no claimed-ahead delivery
                # starts in between.
                self.store.disable_in_view(c.endpoint_id, outcome.disable_reason)
                # Its deliveries claimed ahead are given back as skipped, queued right
                # behind this outcome: the same transaction, or the next.
                self._start_ready(c.endpoint_id)
            else:
                self._attempt_done(c)
            if not await self._record(c, outcome):
                return
            self._count(outcome)
            if outcome.status == "pending" and outcome.next_attempt_at is not None:
                self._notify(c.endpoint_id, outcome.next_attempt_at)
            if self.on_outcome is not None:
                self.on_outcome(c, ep, outcome)
        finally:
            self._attempt_done(c)
            self._settled_slot(c)
            self._tasks.pop(c.delivery_id, None)
            self._cancelled.discard(c.delivery_id)
            # The recording backlog shrank: the loop may claim again.
            self._wake.set()

    async def _give_back(self, c: Claimed, ep: Endpoint) -> None:
        """A delivery claimed before its endpoint was disabled is skipped like its other
        pending deliveries; one claimed before its endpoint was paused goes back to
        pending, unattempted, to be claimed again once it is unpaused."""
        status, event = (
            ("skipped", "skip_failed") if not ep.active else ("pending", "put_back_failed")
        )
        give = functools.partial(self.store.release, [c], status=status)
        if (err := await self._write(c, give)) is not None:
            log.error(
                "could not give back a delivery; it is requeued at startup",
                exc_info=err,
                extra={"event": event, "delivery_id": c.delivery_id},
            )

    async def _attempt_safely(self, c: Claimed, ep: Endpoint) -> tuple[delivery.Response, str, int]:
        """The HTTP attempt; a bug in making it is a failed attempt (recorded, retried on
        the schedule, shown in the log), never a delivery stranded in `delivering`."""
        try:
            return await self._attempt(c, ep)
        except Exception as exc:
            log.exception(
                "delivery attempt crashed",
                extra={"event": "attempt_crashed", "delivery_id": c.delivery_id},
            )
            resp = delivery.Response(
                status_code=None,
                headers={},
                body="",
                error_kind="internal_error",
                error_message=f"webhookd failed to make the request ({type(exc).__name__}).",
                duration_ms=0,
                request_headers={},
            )
            return resp, ep.formats[0], now_ms()

    def _decide_safely(
        self, c: Claimed, ep: Endpoint, resp: delivery.Response, fmt: str, started_at: int
    ) -> Outcome:
        """The outcome of an attempt; whatever goes wrong in deciding it (a receiver's
        answer we failed to read, a bug), the attempt is still recorded and the delivery
        rescheduled on the plain schedule."""
        try:
            return self._decide(c, ep, resp, fmt, started_at)
        except Exception as exc:
            log.exception(
                "deciding the outcome of an attempt failed",
                extra={"event": "decide_crashed", "delivery_id": c.delivery_id},
            )
            what = (
                f"webhookd failed to evaluate the response ({type(exc).__name__}); "
                "the delivery follows its retry schedule."
            )
            return _internal_failure(c, resp, fmt, started_at, what, self.config.retry_schedule_s)

    async def _record(self, c: Claimed, outcome: Outcome) -> bool:
        """Store the outcome; False if it could not be (the delivery is then put back to
        `pending`, or requeued at the next start after a shutdown during an outage).

        A failure that is not storage's (a bug, or an attempt whose details SQLite will
        not take, which fails every outcome batched with it) is tried again alone, then
        with the attempt's details left out, then the delivery is put back to pending."""
        for tries in range(RECORD_TRIES):
            err = await self._write(c, functools.partial(self.store.record, outcome))
            if err is None:
                return True
            if isinstance(err, StorageError):
                return False  # stopping during an outage: requeued at startup
            log.error(
                "could not record an attempt",
                exc_info=err,
                extra={"event": "record_failed", "delivery_id": c.delivery_id},
            )
            if tries == 0:
                outcome = _without_details(outcome)
        put_back = functools.partial(self.store.release, [c])
        if (err := await self._write(c, put_back)) is not None:
            log.error(
                "could not put a delivery back; it is requeued at startup",
                exc_info=err,
                extra={"event": "put_back_failed", "delivery_id": c.delivery_id},
            )
        else:
            self._notify(c.endpoint_id, now_ms())
        return False

    async def _write(self, c: Claimed, write: Callable[[], Awaitable[None]]) -> Exception | None:
        """Run a write about delivery `c` until storage takes it, and return None; or the
        exception when it fails for another reason, or when storage still fails on the
        last try after stop() gave up waiting.

        While storage fails (a full disk, an I/O error) the write waits here with backoff,
        woken at once when any other write succeeds; the waiting writes are at most one
        per claimed delivery, and the dispatcher claims nothing meanwhile (_wants)."""
        delay_s = RECORD_RETRY_FIRST_S
        try:
            while True:
                last = self._abandon
                try:
                    await write()
                except StorageError as exc:
                    if last:
                        return exc
                    self._defer(c, exc)
                except Exception as exc:
                    return exc
                else:
                    self._wake_writers()
                    return None
                waiter = self._written
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), delay_s)
                delay_s = min(delay_s * 2, RECORD_RETRY_MAX_S)
        finally:
            self._settled(c)

    def _defer(self, c: Claimed, exc: StorageError) -> None:
        if c.delivery_id in self._unwritten:
            return
        if not self._unwritten:
            # Once per outage, not per outcome or per try.
            log.error(
                "storage cannot write; outcomes are kept and written when it can",
                extra={"event": "outcomes_deferred", "error": str(exc)},
            )
        self._unwritten.add(c.delivery_id)

    def _settled(self, c: Claimed) -> None:
        if c.delivery_id not in self._unwritten:
            return
        self._unwritten.discard(c.delivery_id)
        if not self._unwritten:
            log.info(
                "outcomes held during the outage are settled", extra={"event": "outcomes_settled"}
            )
            self._wake.set()  # claiming may resume

    def _wake_writers(self) -> None:
        """A write succeeded (or stop() gives up): waiting writes try again now."""
        if self._unwritten or self._abandon:
            self._written.set()
            self._written = asyncio.Event()

    def _attempt_done(self, c: Claimed) -> None:
        """The request is over (or never happens): free the endpoint slot and the worker."""
        entry = self._tasks.get(c.delivery_id)
        if entry is None or not entry.attempting:
            return
        entry.attempting = False
        st = self._state(c.endpoint_id)
        st.in_flight -= 1
        st.settling += 1
        self._attempting -= 1
        self.stats.in_flight = self._attempting
        self._start_ready(c.endpoint_id)
        if self._attempting < self.config.workers and self._queued:
            # Other endpoints may have been waiting for a worker: only those holding
            # claimed deliveries, not every endpoint.
            for endpoint_id in list(self._holding):
                if self._attempting >= self.config.workers:
                    break
                self._start_ready(endpoint_id)
        self._wake.set()

    def _settled_slot(self, c: Claimed) -> None:
        """The delivery's outcome is stored (or it was given back): where claims hold
        slots, its endpoint has one more free now."""
        entry = self._tasks.get(c.delivery_id)
        st = self._states.get(c.endpoint_id)
        if entry is None or entry.attempting or st is None or st.settling <= 0:
            return  # never counted (see _attempt_done), or its endpoint is forgotten
        st.settling -= 1
        if self._slots_held:
            self._touch(c.endpoint_id)

    def _route(self, ep: Endpoint) -> http1.Route:
        """How `ep` is reached: its proxy, else delivery.proxy, and its TLS material. Built
        once per endpoint version, not per delivery: the endpoint object is replaced on
        every health update, but its proxy and tls objects are carried over unchanged, so
        they are what the cache compares (by identity)."""
        cached = self._routes.get(ep.id)
        if cached is not None and cached[0] is ep.proxy and cached[1] is ep.tls:
            return cached[2]
        tls = ep.tls
        route = http1.Route(
            proxy=ep.proxy or self.config.proxy,
            client_cert=tls.client_cert if tls else None,
            client_key=tls.client_key if tls else None,
            ca=tls.ca if tls else None,
        )
        if route == http1.DIRECT:
            route = http1.DIRECT
        self._routes[ep.id] = (ep.proxy, ep.tls, route)
        return route

    async def _attempt(self, c: Claimed, ep: Endpoint) -> tuple[delivery.Response, str, int]:
        fmt = ep.formats[min(c.format_index, len(ep.formats) - 1)]
        ev = c.event
        body, content_type = formats.render(
            fmt,
            event_id=ev.id,
            event_type=ev.type,
            timestamp=to_rfc3339(ev.created_at) or "",
            tenant=ev.tenant,
            payload_json=ev.payload_json,
        )
        started_at = now_ms()
        headers = {
            "Content-Type": content_type,
            "User-Agent": delivery.USER_AGENT,
            "webhook-id": ev.id,
        }
        headers.update(ep.headers)
        span = self.tracer.attempt(c, ep, fmt) if self.tracer is not None else None
        tracing.put_traceparent(headers, ev.traceparent if span is None else span.traceparent)
        headers.update(
            signing.sign(
                ep.signature, ep.signing_secrets(started_at), ev.id, started_at // 1000, body
            )
        )
        route = self._route(ep)
        send = functools.partial(
            delivery.send,
            self.client,
            ep.url,
            body,
            max_response_bytes=self.config.max_response_bytes,
            route=route,
        )
        # The endpoint's `auth`, if any, adds its Authorization header (see receiver_auth).
        resp = await self.receiver_auth.send(ep, route, headers, send, self.config.timeout_s)
        if route.proxy is not None:
            resp.request_headers = _without_proxy_auth(resp.request_headers)
        if ep.signature.scheme == "token":
            resp.request_headers = signing.redact(ep.signature, resp.request_headers)
        if span is not None:
            span.end(resp)
        return resp, fmt, started_at

    def _decide(
        self, c: Claimed, ep: Endpoint, resp: delivery.Response, fmt: str, started_at: int
    ) -> Outcome:
        now = now_ms()
        made = functools.partial(_outcome, c, _attempt_record(c, resp, fmt, started_at), resp.ok)
        gone = resp.status_code == 410 or (
            (resp.header("webhook-delivery") or "").strip().lower() == "disable"
        )
        # The endpoint as it is now, not as it was when the request started: another
        # attempt or an operator may have disabled it meanwhile. A disabled endpoint is
        # not disabled twice, and its failed delivery is skipped instead of rescheduled.
        current = self.store.endpoint(c.endpoint_id)
        disabled = current is not None and not current.active
        if resp.ok:
            return made("delivered", disable="gone" if gone and not disabled else None)
        if gone or disabled:
            return made("skipped", disable="gone" if gone and not disabled else None)
        if (
            ep.failing_since is not None
            and now - ep.failing_since >= self.config.disable_after_s * 1000
        ):
            return made("skipped", disable="failing")
        if c.manual:
            # A manual attempt that fails is not retried; a delivery that was waiting for
            # its next scheduled attempt keeps that appointment.
            if c.resume_at is not None:
                return made("pending", next_at=c.resume_at)
            return made("failed")
        if c.format_index + 1 < len(ep.formats) and resp.error_kind != AUTH_TOKEN:
            # (No token is no fault of the format: the next one would fare no better.)
            return made("pending", next_at=now, format_index=c.format_index + 1)
        failures = c.failures + 1
        retry_after = parse_retry_after(resp.header("Retry-After"), time.time())
        delay = next_delay_s(
            self.config.retry_schedule_s, failures, self.config.jitter, retry_after, self.rand
        )
        if delay is None:
            return made("failed", failures=failures)
        return made("pending", next_at=now + int(delay * 1000), failures=failures)

    def _count(self, o: Outcome) -> None:
        self.attempt_log.outcome(o)
        self.stats.attempts += 1
        if o.status == "delivered":
            self.stats.delivered += 1
        if not o.success:
            self.stats.failed_attempts += 1
        a = o.attempt
        # One line per attempt, at debug level only (and not even built otherwise).
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "attempt",
                extra={
                    "event": "attempt",
                    "delivery_id": o.delivery_id,
                    "endpoint_id": o.endpoint_id,
                    "number": a.number,
                    "status_code": a.status_code,
                    "error_kind": a.error_kind,
                    "duration_ms": a.duration_ms,
                    "next_status": o.status,
                },
            )
        if o.status == "failed":
            log.info(
                "delivery failed",
                extra={
                    "event": "delivery_failed",
                    "delivery_id": o.delivery_id,
                    "endpoint_id": o.endpoint_id,
                    "attempts": a.number,
                    "status_code": a.status_code,
                    "error_kind": a.error_kind,
                },
            )
