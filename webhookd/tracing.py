"""Trace context: the W3C `traceparent` of a publish, kept with its event and carried by
every request sent for it; and, when `tracing.otlp_endpoint` is set, OpenTelemetry spans
for each publish and each attempt (webhookd/otel.py, loaded only then).

With tracing off nothing of OpenTelemetry is imported and a request costs one check: a
publish keeps the caller's valid `traceparent` as it came, and each attempt forwards it
unchanged (the receiver's trace then continues from the publisher's span).

With tracing on, the publish span is a child of the caller's `traceparent` (or starts a
trace), the event keeps the publish span's context, and each attempt's span is a child
of that; the request carries the attempt span's `traceparent`. The OpenTelemetry names
are in webhookd/otel.py; this module holds what does not need the packages.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from webhookd.config import TracingConfig

if TYPE_CHECKING:
    from webhookd import delivery
    from webhookd.store.interface import Claimed, Endpoint

log = logging.getLogger("webhookd.tracing")

INSTALL_HINT = "pip install 'webhookd[tracing]'"
# version-traceid-parentid-flags, lowercase hex (W3C Trace Context, level 1). A later
# version may append fields after a dash; version ff is invalid.
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def valid_traceparent(values: Iterable[str]) -> str | None:
    """The traceparent a request's header values give, or None when it has none or an
    invalid one (several values included), which is then ignored as W3C says. A later
    version's value is kept as version 00 of its first four fields, the form we send."""
    found = list(values)
    if len(found) != 1:
        return None
    value = found[0].strip(" \t")
    m = _TRACEPARENT_RE.fullmatch(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
        return None
    if version == "00":
        return None if rest else value
    return f"00-{trace_id}-{span_id}-{flags}"


def put_traceparent(headers: MutableMapping[str, str], traceparent: str | None) -> None:
    """Set the request's `traceparent`, in place of any the endpoint's own headers give."""
    if traceparent is None:
        return
    for name in [k for k in headers if k.lower() == "traceparent"]:
        del headers[name]
    headers["traceparent"] = traceparent


# --- spans ----------------------------------------------------------------------------


class PublishSpan(Protocol):
    """The trace of one publish request (one span, or nothing with tracing off)."""

    @property
    def traceparent(self) -> str | None:
        """What the published events keep, for their attempts."""
        ...

    def published(self, status: int, results: Iterable[Mapping[str, Any]]) -> None:
        """The answer's status and results (serialize.publish_result: id, type, tenant,
        deliveries)."""
        ...

    def __enter__(self) -> PublishSpan: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class AttemptSpan(Protocol):
    """The span of one HTTP attempt, ended with its response."""

    @property
    def traceparent(self) -> str | None: ...

    def end(self, resp: delivery.Response) -> None: ...


class Tracer(Protocol):
    """Spans of publishes and attempts (webhookd.otel.OtelTracer)."""

    def publish(self, name: str, traceparent: str | None, route: str) -> PublishSpan: ...

    def attempt(self, c: Claimed, ep: Endpoint, fmt: str) -> AttemptSpan: ...

    async def close(self) -> None:
        """Export what is still queued (bounded by tracing.timeout_s), then stop."""
        ...


class _Untraced:
    """A publish with tracing off: the caller's traceparent, kept as it came."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str | None) -> None:
        self.traceparent = traceparent

    def published(self, status: int, results: Iterable[Mapping[str, Any]]) -> None:
        pass

    def __enter__(self) -> _Untraced:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


# Where the API finds the tracer: State.extra[TRACER] (absent with tracing off).
TRACER = "tracer"


def publishing(request: web.Request, tracer: Tracer | None, name: str) -> PublishSpan:
    """The trace of a publish request: a span when tracing is on."""
    traceparent = valid_traceparent(request.headers.getall("traceparent", ()))
    if tracer is None:
        return _Untraced(traceparent)
    return tracer.publish(name, traceparent, request.path)


def start(config: TracingConfig) -> Tracer | None:
    """The tracer `config` asks for, or None: tracing off, or on without the packages
    (then one warning says what to install, and the daemon runs untraced)."""
    if config.otlp_endpoint is None:
        return None
    try:
        from webhookd.otel import OtelTracer
    except ImportError as exc:
        log.warning(
            f"tracing.otlp_endpoint is set but OpenTelemetry cannot be imported ({exc}); "
            f"traces are off. Install them with: {INSTALL_HINT}",
            extra={"event": "tracing_unavailable"},
        )
        return None
    try:
        tracer = OtelTracer(config)
    except Exception as exc:  # e.g. a bad OTEL_* variable: deliver anyway, untraced
        log.error(
            f"tracing could not start ({type(exc).__name__}: {str(exc)[:200]}); traces are off",
            extra={"event": "tracing_unavailable"},
        )
        return None
    log.info(
        "tracing on",
        extra={
            "event": "tracing_on",
            "traces_url": config.traces_url,  # no credentials: refused in the URL
            "service_name": config.service_name,
            "sample_ratio": config.sample_ratio,
            "headers": ",".join(name for name, _ in config.headers) or "none",
        },
    )
    return tracer
