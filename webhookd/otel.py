"""OpenTelemetry spans of publishes and attempts, exported over OTLP/HTTP.

Imported only when `tracing.otlp_endpoint` is set (webhookd.tracing.start): it needs the
`tracing` extra (opentelemetry-sdk, opentelemetry-exporter-otlp-proto-http). The global
tracer provider is left alone: these spans go through a provider of our own.

Spans are exported in the background by the SDK's BatchSpanProcessor (a thread of its
own posting protobuf over HTTP), so a slow or dead collector costs a request nothing; its
OTEL_BSP_* environment variables (schedule delay, queue size) apply. `close` exports what
is queued, bounded by `tracing.timeout_s`, on a clean shutdown.

Attribute names follow the semantic conventions where they have one (http.*, server.*,
url.scheme, error.type); the rest are webhookd.*. The endpoint's URL is not recorded, only
its scheme, host and port: paths and queries of webhook URLs often hold a secret (a Slack
or Discord hook's token, an ?api_key=).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from yarl import URL

from webhookd import __version__, delivery
from webhookd.config import TracingConfig
from webhookd.store.interface import Claimed, Endpoint

log = logging.getLogger("webhookd.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()


def _context(traceparent: str | None) -> Any:
    """The context a stored or received traceparent names (None: a new trace)."""
    if traceparent is None:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def _traceparent(span: trace.Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


class _PublishSpan:
    """One publish request's span (SERVER): a child of the caller's traceparent."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.traceparent = _traceparent(span)

    def published(self, status: int, results: Iterable[Mapping[str, Any]]) -> None:
        span = self._span
        span.set_attribute("http.response.status_code", status)
        if not span.is_recording():
            return
        done = list(results)
        if len(done) == 1:
            [r] = done
            span.update_name(f"publish {r['type']}")
            attributes = {
                "webhookd.event.id": r["id"],
                "webhookd.event.type": r["type"],
                "webhookd.deliveries": r["deliveries"],
            }
            if r.get("tenant") is not None:
                attributes["webhookd.tenant"] = r["tenant"]
        else:
            tenants = sorted({r["tenant"] for r in done if r.get("tenant") is not None})
            attributes = {
                "webhookd.event.count": len(done),
                "webhookd.event.ids": [r["id"] for r in done],
                "webhookd.event.types": sorted({r["type"] for r in done}),
                "webhookd.deliveries": sum(r["deliveries"] for r in done),
            }
            if tenants:
                attributes["webhookd.tenants"] = tenants
        span.set_attributes(attributes)

    def __enter__(self) -> _PublishSpan:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self._span
        if exc is not None:
            # An API error (4xx) is the caller's: the span records its status, and only
            # a server-side failure marks it as an error.
            status = getattr(exc, "status", None)
            if isinstance(status, int):
                span.set_attribute("http.response.status_code", status)
            if not isinstance(status, int) or status >= 500:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", str(status or type(exc).__name__))
        span.end()


class _AttemptSpan:
    """One HTTP attempt's span (CLIENT): a child of the event's stored traceparent."""

    __slots__ = ("_span", "traceparent")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self.traceparent = _traceparent(span)

    def end(self, resp: delivery.Response) -> None:
        span = self._span
        if span.is_recording():
            if resp.status_code is not None:
                span.set_attribute("http.response.status_code", resp.status_code)
            span.set_attribute("webhookd.attempt.duration_ms", resp.duration_ms)
            if not resp.ok:
                kind = resp.error_kind or str(resp.status_code)
                span.set_attribute("error.type", kind)
                span.set_status(Status(StatusCode.ERROR, resp.error_message or kind))
        span.end()


class OtelTracer:
    """webhookd.tracing.Tracer on the OpenTelemetry SDK."""

    def __init__(self, config: TracingConfig) -> None:
        assert config.traces_url is not None
        self._timeout_s = config.timeout_s
        exporter = OTLPSpanExporter(
            endpoint=config.traces_url,
            # None: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS from the environment, if set.
            headers=dict(config.headers) or None,
            timeout=config.timeout_s,
        )
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            shutdown_on_exit=False,  # close() does it, bounded
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("webhookd", __version__)
        # Per endpoint: its URL and the attributes of the host it names.
        self._servers: dict[str, tuple[str, dict[str, Any]]] = {}

    def publish(self, name: str, traceparent: str | None, route: str) -> _PublishSpan:
        span = self._tracer.start_span(
            name,
            context=_context(traceparent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": route},
        )
        return _PublishSpan(span)

    def attempt(self, c: Claimed, ep: Endpoint, fmt: str) -> _AttemptSpan:
        ev = c.event
        number = c.attempt_count + 1
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            **self._server(ep),
            "webhookd.endpoint.id": ep.id,
            "webhookd.delivery.id": c.delivery_id,
            "webhookd.event.id": ev.id,
            "webhookd.event.type": ev.type,
            "webhookd.attempt.number": number,
            "webhookd.attempt.trigger": "manual" if c.manual else "scheduled",
            "webhookd.attempt.format": fmt,
        }
        if number > 1:
            attributes["http.request.resend_count"] = number - 1
        if ev.tenant is not None:
            attributes["webhookd.tenant"] = ev.tenant
        span = self._tracer.start_span(
            f"deliver {ev.type}",
            context=_context(ev.traceparent),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        return _AttemptSpan(span)

    def _server(self, ep: Endpoint) -> dict[str, Any]:
        """server.address, server.port and url.scheme of the endpoint's URL (never its
        path, query or credentials)."""
        cached = self._servers.get(ep.id)
        if cached is not None and cached[0] == ep.url:
            return cached[1]
        attributes: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            url = URL(ep.url)
            if url.host:
                attributes = {
                    "server.address": url.host,
                    "server.port": url.port or 0,
                    "url.scheme": url.scheme,
                }
        if len(self._servers) > 100_000:
            self._servers.clear()
        self._servers[ep.id] = (ep.url, attributes)
        return attributes

    async def close(self) -> None:
        """Export the spans still queued and stop, waiting at most tracing.timeout_s (and
        a second): a collector that does not answer does not hold up the shutdown."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def flush() -> None:
            try:
                self._provider.shutdown()
            except Exception:
                log.exception("flushing the traces failed", extra={"event": "tracing_bug"})
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=flush, name="webhookd-trace-flush", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), self._timeout_s + 1)
        except TimeoutError:
            log.warning(
                "the traces still queued could not be exported in time; they are dropped",
                extra={"event": "tracing_flush_timeout", "timeout_s": self._timeout_s + 1},
            )
