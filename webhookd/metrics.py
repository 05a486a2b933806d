"""Prometheus metrics at /metrics, all named `webhookd_…`.

Counters and histograms are updated as things happen (publishing, each attempt, each
finished delivery); the backlog gauges are read from the store when scraped, so they cost
nothing between scrapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from webhookd.store.models import Claimed, Endpoint, Outcome
from webhookd.timefmt import now_ms

if TYPE_CHECKING:
    from webhookd.api.context import State

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400)
FINAL = ("delivered", "failed", "skipped")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.events_published = Counter(
            "webhookd_events_published", "Events accepted and committed.", registry=r
        )
        self.attempts = Counter(
            "webhookd_attempts",
            "Delivery attempts by outcome (success, http_error or an error kind) and status class.",
            ["outcome", "status_class"],
            registry=r,
        )
        self.finished = Counter(
            "webhookd_deliveries_finished",
            "Deliveries that reached a final state.",
            ["status"],
            registry=r,
        )
        self.attempt_duration = Histogram(
            "webhookd_attempt_duration_seconds",
            "Duration of one HTTP attempt.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "webhookd_delivery_latency_seconds",
            "From publish to the successful attempt's start.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
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
        if n:
            self.events_published.inc(n)

    def outcome(self, c: Claimed, ep: Endpoint, o: Outcome) -> None:
        a = o.attempt
        code = a.status_code
        status_class = f"{code // 100}xx" if code is not None else "none"
        kind = "success" if o.success else a.error_kind or "http_error"
        self.attempts.labels(kind, status_class).inc()
        self.attempt_duration.observe(a.duration_ms / 1000)
        if o.status in FINAL:
            self.finished.labels(o.status).inc()
        if o.success:
            self.latency.observe(max(a.started_at - c.event.created_at, 0) / 1000)

    async def refresh(self, state: State) -> None:
        store = state.store
        pending, oldest = await store.backlog(now_ms())
        self.pending.set(pending)
        self.oldest_due.set(oldest / 1000 if oldest else 0)
        endpoints = list(store.endpoints.values())
        self.endpoints.set(len(endpoints))
        self.disabled.set(sum(1 for e in endpoints if not e.active))
        self.in_flight.set(state.dispatcher.stats.in_flight if state.dispatcher else 0)

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
