"""Operational events: webhookd telling a tenant's own endpoints how delivery is going.

This module owns the three event types webhookd publishes by itself, and who gets them:

- `webhookd.endpoint.disabled` `{"endpoint_id", "url", "reason", "tenant"}`: webhookd
  disabled an endpoint, `reason` `"gone"` (a 410 or a `webhook-delivery: disable`
  header) or `"failing"` (no success for `delivery.disable_after_s`). An operator's
  `PATCH {"active": false}` is not announced.
- `webhookd.delivery.failed` `{"delivery_id", "event_id", "event_type", "endpoint_id",
  "attempt_count", "last_status_code", "last_error_kind"}`: a delivery used up its retry
  schedule. A manual retry that fails is not announced (it is never retried, and the
  operator who asked for it sees the answer).
- `webhookd.delivery.recovered` `{"delivery_id", "event_id", "event_type",
  "endpoint_id", "attempt_count"}`: a delivery succeeded after failed attempts. Attempts
  that only walked the format fallback chain (form refused, multipart accepted) are format
  negotiation, not failure: otherwise every delivery to a multipart-only receiver would
  announce a recovery. A manual resend counts only if the delivery was still pending.

Rules:

- Same tenant: an event about an endpoint (or one of its deliveries) is published to
  that endpoint's tenant (null for null) and reaches only endpoints of that tenant.
- Explicit subscription: an endpoint receives operational events only when its `events`
  name them, exactly (`webhookd.delivery.failed`) or by a prefix pattern (`webhookd.*`,
  `webhookd.delivery.*`). The catch-all `*`, which is the default, does not include
  them: it means "all of my application's events", and a customer endpoint should not
  start receiving webhookd's internal notices about its neighbours (Svix likewise keeps
  operational webhooks apart from application events). The rule lives in
  `matching.pattern_matches`, so the store's ordinary fan-out applies it: one event per
  occurrence, with one delivery per subscribed endpoint. With no subscriber nothing is
  stored.
- No loops: deliveries of `webhookd.*` events never trigger further operational events,
  so an operations endpoint that is itself failing cannot feed itself.
- Otherwise they are ordinary events: stored, signed with the recipient's scheme and
  secret, retried on its schedule, listed in the log. A disabled recipient gets a
  `skipped` delivery (recoverable), including the endpoint that was just disabled when
  it subscribes to its own notice.
- Ownership: the dispatcher's outcome callback is synchronous; it queues the event and
  makes sure the one named flush task owned here is running. The daemon drains it after
  the dispatcher has stopped and before the store closes. The store tells the
  dispatcher what became due once a publish commits, as for any event. Publishing that
  fails (the store cannot write) is logged and dropped: these events are advisory, and
  the delivery log remains the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webhookd import jsonio
from webhookd.ids import new_id
from webhookd.matching import subscribed
from webhookd.store.interface import Claimed, Endpoint, NewEvent, Outcome, Store

log = logging.getLogger("webhookd.opevents")

PREFIX = "webhookd."
ENDPOINT_DISABLED = "webhookd.endpoint.disabled"
DELIVERY_FAILED = "webhookd.delivery.failed"
DELIVERY_RECOVERED = "webhookd.delivery.recovered"


@dataclass(frozen=True)
class _Pending:
    type: str
    tenant: str | None
    payload: dict[str, Any]


def wants(patterns: Iterable[str], event_type: str) -> bool:
    """Whether an endpoint's `events` subscribe it to an operational event type."""
    return subscribed(patterns, event_type)


def events_for(claimed: Claimed, endpoint: Endpoint, outcome: Outcome) -> list[_Pending]:
    """The operational events one recorded attempt gives rise to (pure)."""
    if claimed.event.type.startswith(PREFIX):
        return []
    out: list[_Pending] = []
    tenant = endpoint.tenant
    if outcome.disable_reason is not None:
        out.append(
            _Pending(
                ENDPOINT_DISABLED,
                tenant,
                {
                    "endpoint_id": endpoint.id,
                    "url": endpoint.url,
                    "reason": outcome.disable_reason,
                    "tenant": tenant,
                },
            )
        )
    about = {
        "delivery_id": claimed.delivery_id,
        "event_id": claimed.event.id,
        "event_type": claimed.event.type,
        "endpoint_id": endpoint.id,
        "attempt_count": outcome.attempt.number,
    }
    if outcome.status == "failed" and not claimed.manual:
        out.append(
            _Pending(
                DELIVERY_FAILED,
                tenant,
                {
                    **about,
                    "last_status_code": outcome.attempt.status_code,
                    "last_error_kind": outcome.attempt.error_kind,
                },
            )
        )
    if outcome.status == "delivered" and _failed_before(claimed):
        out.append(_Pending(DELIVERY_RECOVERED, tenant, about))
    return out


def _failed_before(c: Claimed) -> bool:
    if not c.had_failures:
        return False
    if c.manual and c.resume_at is None:
        # A manual resend of a delivery that was not pending: it may have been delivered
        # already, so a success says nothing about recovering.
        return False
    # Each fallback hop adds one attempt and one format step and no failure; attempts
    # beyond those (or a failure) mean the delivery really failed before.
    return c.failures > 0 or c.attempt_count > c.format_index


class OpEvents:
    """Queues operational events from delivery outcomes and publishes them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # endpoint id -> updated_at of the endpoint version already announced as disabled:
        # several open requests can each see the 410 before the first outcome is stored.
        self._announced: dict[str, int] = {}
        self.published = 0

    def on_outcome(self, claimed: Claimed, endpoint: Endpoint, outcome: Outcome) -> None:
        """The dispatcher's callback, after an outcome is stored. Never raises."""
        try:
            pending = events_for(claimed, endpoint, outcome)
            if outcome.disable_reason is not None:
                if self._announced.get(endpoint.id) == endpoint.updated_at:
                    pending = [p for p in pending if p.type != ENDPOINT_DISABLED]
                self._announced[endpoint.id] = endpoint.updated_at
        except Exception:
            log.exception("could not build operational events", extra={"event": "opevent_bug"})
            return
        if not pending:
            return
        if self._closed:
            log.warning(
                "operational events after shutdown were dropped",
                extra={"event": "opevent_dropped", "count": len(pending)},
            )
            return
        self._queue.extend(pending)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush(), name="webhookd-opevents")

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued, then accept nothing more (shutdown)."""
        self._closed = True
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            log.warning(
                "operational events not published before shutdown",
                extra={"event": "opevent_drain_timeout", "count": len(self._queue)},
            )
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            events = [ev for p in batch for ev in self._new_events(p)]
            if not events:
                continue
            try:
                results = await self.store.publish(events)
            except Exception as exc:
                log.error(
                    "could not publish operational events",
                    extra={
                        "event": "opevent_publish_failed",
                        "count": len(events),
                        "error": str(exc),
                    },
                )
                continue
            self.published += len(results)
            for ev in events:
                log.info(
                    "operational event published",
                    extra={
                        "event": "opevent_published",
                        "event_id": ev.id,
                        "event_type": ev.type,
                    },
                )

    def _new_events(self, p: _Pending) -> list[NewEvent]:
        """One event, fanned out by the store, if any endpoint of the tenant subscribes."""
        if not any(
            ep.tenant == p.tenant and wants(ep.events, p.type) for ep in self.store.endpoints()
        ):
            return []
        return [
            NewEvent(
                id=new_id("evt"),
                type=p.type,
                tenant=p.tenant,
                payload_json=jsonio.dumps(p.payload),
                body_hash=None,
                deliver_at=None,
            )
        ]
