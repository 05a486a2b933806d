"""Prometheus metrics at /metrics, all named `webhookd_…`.

Counters and histograms are updated as things happen (publishing, each attempt, each
finished delivery); the backlog gauges are read from the store when scraped, so they cost
nothing between scrapes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from webhookd.store.models import Claimed, Endpoint, Outcome
from webhookd.store.writer import COMMIT_BUCKETS
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.api.context import State

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400)
FINAL = ("delivered", "failed", "skipped")
_STATUS_CLASS = {code: f"{code // 100}xx" for code in range(100, 600)}


class _Histogram:
    """A histogram kept as plain numbers: one bisect and two additions per observation,
    where prometheus_client's takes a lock per bucket step. Read by _PerAttempt."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, self.sum)
        return family


class _PerAttempt(Collector):
    """The metrics that change on every publish and attempt, counted in plain dicts and
    numbers on the event loop and turned into Prometheus families only when scraped."""

    def __init__(self) -> None:
        self.published = 0
        # The database writer's counters, copied in at scrape time.
        self.transactions = 0
        self.transaction_s = 0.0
        self.commit = _Histogram(
            "webhookd_store_commit_seconds",
            "Duration of each COMMIT of a write transaction (mostly waiting for the disk to sync).",
            COMMIT_BUCKETS,
        )
        self.attempts: dict[tuple[str, str], int] = {}
        self.finished: dict[str, int] = {}
        self.duration = _Histogram(
            "webhookd_attempt_duration_seconds", "Duration of one HTTP attempt.", DURATION_BUCKETS
        )
        self.latency = _Histogram(
            "webhookd_delivery_latency_seconds",
            "From publish to the successful attempt's start.",
            LATENCY_BUCKETS,
        )

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "webhookd_events_published", "Events accepted and committed.", self.published
        )
        attempts = CounterMetricFamily(
            "webhookd_attempts",
            "Delivery attempts by outcome (success, http_error or an error kind) and status class.",
            labels=["outcome", "status_class"],
        )
        for (outcome, status_class), n in sorted(self.attempts.items()):
            attempts.add_metric([outcome, status_class], n)
        yield attempts
        finished = CounterMetricFamily(
            "webhookd_deliveries_finished",
            "Deliveries that reached a final state.",
            labels=["status"],
        )
        for status, n in sorted(self.finished.items()):
            finished.add_metric([status], n)
        yield finished
        yield self.duration.family()
        yield self.latency.family()
        yield CounterMetricFamily(
            "webhookd_store_transactions",
            "Write transactions committed (each holds every write queued meanwhile).",
            self.transactions,
        )
        yield CounterMetricFamily(
            "webhookd_store_transaction_seconds",
            "Time the database thread spent in write transactions; its rate is how busy "
            "the one writer is (1 = always).",
            self.transaction_s,
        )
        yield self.commit.family()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.per_attempt = _PerAttempt()
        r.register(self.per_attempt)
        self.pending = Gauge("webhookd_pending_deliveries", "Deliveries waiting.", registry=r)
        self.oldest_due = Gauge(
            "webhookd_oldest_due_delivery_age_seconds",
            "How long the oldest delivery that is due has been waiting (0 if none).",
            registry=r,
        )
        self.disabled = Gauge(
            "webhookd_endpoints_disabled", "Endpoints that are not active.", registry=r
        )
        self.endpoints = Gauge("webhookd_endpoints", "Endpoints configured.", registry=r)
        self.in_flight = Gauge(
            "webhookd_in_flight_requests", "HTTP requests open to endpoints.", registry=r
        )

    def published(self, n: int) -> None:
        self.per_attempt.published += n

    def outcome(self, c: Claimed, ep: Endpoint, o: Outcome) -> None:
        a = o.attempt
        code = a.status_code
        status_class = _STATUS_CLASS.get(code, "none") if code is not None else "none"
        kind = "success" if o.success else a.error_kind or "http_error"
        per = self.per_attempt
        key = (kind, status_class)
        per.attempts[key] = per.attempts.get(key, 0) + 1
        per.duration.observe(a.duration_ms / 1000)
        if o.status in FINAL:
            per.finished[o.status] = per.finished.get(o.status, 0) + 1
        if o.success:
            per.latency.observe(max(a.started_at - c.event.created_at, 0) / 1000)

    async def refresh(self, state: State) -> None:
        store = state.store
        pending, oldest = await store.backlog(now_ms())
        self.pending.set(pending)
        self.oldest_due.set(oldest / 1000 if oldest else 0)
        endpoints = list(store.endpoints.values())
        self.endpoints.set(len(endpoints))
        self.disabled.set(sum(1 for e in endpoints if not e.active))
        self.in_flight.set(state.dispatcher.stats.in_flight if state.dispatcher else 0)
        writer = store.writer
        if writer is not None:
            per = self.per_attempt
            per.transactions = writer.commits
            per.transaction_s = writer.busy_s
            per.commit.counts = list(writer.commit_counts)
            per.commit.sum = writer.commit_s

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def handler(request: web.Request) -> web.Response:
    from webhookd.api.context import state

    st = state(request)
    metrics: Metrics | None = st.extra.get("metrics")
    if metrics is None:
        return web.Response(status=404, text="metrics are off\n")
    await metrics.refresh(st)
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
