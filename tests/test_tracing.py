"""Tracing: the W3C traceparent of a publish is kept with its event and carried by every
request sent for it; with `tracing.otlp_endpoint`, OpenTelemetry spans of the publish and
of each attempt reach an OTLP/HTTP collector.

A real daemon process, real receivers, and a real collector: an aiohttp server on
127.0.0.1 decoding what the exporter posts with opentelemetry-proto's own messages.
"""

from __future__ import annotations

import os
import signal
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.conftest import Daemon, Receiver, wait_until
from tests.pg import BACKENDS
from webhookd.config import ConfigError, config_from_mapping
from webhookd.tracing import put_traceparent, valid_traceparent

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT_ID}-01"
COLLECTOR_KEY = "collector-key-4d9c1e0b7a"
# Spans leave every 100 ms instead of the SDK's 5 s (its own environment variable).
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


# --- a collector ----------------------------------------------------------------------


@dataclass
class Exported:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int
    message: str
    resource: dict[str, Any]


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Collector:
    """POST /v1/traces: OTLP protobuf, decoded and kept."""

    spans: list[Exported] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> Collector:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def _traces(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        req = ExportTraceServiceRequest.FromString(await request.read())
        for rs in req.resource_spans:
            resource = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Exported(
                            name=s.name,
                            kind=s.kind,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes=_attrs(s.attributes),
                            status=s.status.code,
                            message=s.status.message,
                            resource=resource,
                        )
                    )
        body = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    def named(self, prefix: str) -> list[Exported]:
        return [s for s in self.spans if s.name.startswith(prefix)]

    async def wait_spans(self, prefix: str, count: int) -> list[Exported]:
        await wait_until(lambda: len(self.named(prefix)) >= count, 15, f"{count} {prefix!r} spans")
        return self.named(prefix)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    c = await Collector().start()
    yield c
    await c.stop()


def traced(collector: Collector, **extra: Any) -> dict[str, Any]:
    return {
        "tracing": {
            "otlp_endpoint": collector.url,
            "service_name": "webhookd-test",
            "headers": {"X-Collector-Key": COLLECTOR_KEY},
            **extra,
        }
    }


def fields_of(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    return version, trace_id, span_id, flags


def traceparents(headers: dict[str, str]) -> list[str]:
    return [v for k, v in headers.items() if k.lower() == "traceparent"]


async def attempts(d: Daemon, event_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The attempts of the event's one delivery, once `count` of them are recorded."""
    [dlv] = (await d.get(f"/v1/deliveries?event_id={event_id}")).json["data"]

    async def recorded() -> list[dict[str, Any]] | None:
        found = (await d.get(f"/v1/deliveries/{dlv['id']}")).json["attempts"]
        return found if len(found) >= count else None

    return await wait_until(recorded, 10, f"{count} attempts of {event_id}")  # type: ignore[no-any-return]


# --- spans end to end -----------------------------------------------------------------


@BOTH
async def test_a_publish_and_its_attempts_are_spans_in_the_callers_trace(
    make_daemon: MakeDaemon,
    make_receiver: MakeReceiver,
    collector: Collector,
    backend: str,
) -> None:
    d = await make_daemon(traced(collector), env=FAST_EXPORT)
    rx = await make_receiver(statuses=[503])  # the first attempt fails, the retry succeeds
    ep = await d.endpoint(rx.url, tenant="acme")
    r = await d.post(
        "/v1/events",
        {"type": "call.completed", "payload": {"n": 1}, "tenant": "acme"},
        headers={"traceparent": INCOMING},
    )
    assert r.status == 202, r
    ev = r.json
    sent = await rx.wait_for(2)
    [publish] = await collector.wait_spans("publish", 1)
    tried = sorted(
        await collector.wait_spans("deliver", 2),
        key=lambda s: s.attributes["webhookd.attempt.number"],
    )

    # The publish span continues the caller's trace, as a child of the caller's span.
    assert (publish.trace_id, publish.parent_id) == (TRACE_ID, PARENT_ID)
    assert publish.name == "publish call.completed"
    assert publish.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert publish.attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/events",
        "http.response.status_code": 202,
        "webhookd.event.id": ev["id"],
        "webhookd.event.type": "call.completed",
        "webhookd.tenant": "acme",
        "webhookd.deliveries": 1,
    }
    assert publish.resource["service.name"] == "webhookd-test"

    # Each attempt is a child of the publish span, in the same trace, and each request
    # carried that attempt's own span as its traceparent.
    port = int(rx.url.split(":")[2].split("/")[0])
    for number, (span, req) in enumerate(zip(tried, sent, strict=True), start=1):
        assert (span.trace_id, span.parent_id) == (TRACE_ID, publish.span_id)
        assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
        assert span.name == "deliver call.completed"
        assert req.headers["traceparent"] == f"00-{TRACE_ID}-{span.span_id}-01"
        a = span.attributes
        assert a["webhookd.attempt.number"] == number
        assert (a["webhookd.endpoint.id"], a["webhookd.event.id"]) == (ep["id"], ev["id"])
        assert a["webhookd.delivery.id"].startswith("dlv_")
        assert (a["webhookd.event.type"], a["webhookd.tenant"]) == ("call.completed", "acme")
        assert (a["server.address"], a["server.port"], a["url.scheme"]) == (
            "127.0.0.1",
            port,
            "http",
        )
        assert isinstance(a["webhookd.attempt.duration_ms"], int)
        assert not any(k.startswith("url.full") for k in a)  # a URL may hold a secret
    first, second = tried
    assert first.attributes["http.response.status_code"] == 503
    assert first.attributes["error.type"] == "503"
    assert first.status == Status.StatusCode.STATUS_CODE_ERROR
    assert first.message == "the endpoint answered HTTP 503"
    assert second.attributes["http.response.status_code"] == 200
    assert "error.type" not in second.attributes
    assert second.status == Status.StatusCode.STATUS_CODE_UNSET
    assert second.attributes["http.request.resend_count"] == 1

    # The delivery log shows exactly the traceparent each request carried.
    logged = await attempts(d, ev["id"], 2)
    assert [a["request_headers"]["traceparent"] for a in logged] == [
        req.headers["traceparent"] for req in sent
    ]
    # The collector got its key; the daemon's log never shows it.
    assert all(h.get("x-collector-key") == COLLECTOR_KEY for h in collector.headers)
    assert COLLECTOR_KEY not in d.log_text()
    assert "event=tracing_on" in d.log_text()


async def test_without_a_traceparent_the_publish_starts_the_trace_and_a_batch_is_one_span(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, collector: Collector
) -> None:
    d = await make_daemon(traced(collector), env=FAST_EXPORT)
    rx = await make_receiver()
    await d.endpoint(rx.url)
    ev = await d.publish()
    [req] = await rx.wait_for(1)
    [publish] = await collector.wait_spans("publish", 1)
    [attempt] = await collector.wait_spans("deliver", 1)
    assert publish.parent_id == ""  # a root span: the trace starts here
    assert (attempt.trace_id, attempt.parent_id) == (publish.trace_id, publish.span_id)
    version, trace_id, span_id, flags = fields_of(req.headers["traceparent"])
    assert (version, trace_id, span_id) == ("00", publish.trace_id, attempt.span_id)
    assert int(flags, 16) & 1  # sampled (and 2, W3C level 2's "random trace id", is set)
    assert publish.attributes["webhookd.event.id"] == ev["id"]

    # A batch: one span for the request, naming its events; each event's attempt is
    # its child, in the caller's trace.
    r = await d.post(
        "/v1/events/batch",
        {
            "events": [
                {"type": "call.started", "payload": {}},
                {"type": "invoice.paid", "payload": {}},
            ]
        },
        headers={"traceparent": INCOMING},
    )
    assert r.status == 202, r
    ids = [e["id"] for e in r.json["data"]]
    await rx.wait_for(3)
    [batch] = await collector.wait_spans("publish batch", 1)
    assert (batch.trace_id, batch.parent_id) == (TRACE_ID, PARENT_ID)
    assert batch.attributes["http.route"] == "/v1/events/batch"
    assert batch.attributes["webhookd.event.ids"] == ids
    assert batch.attributes["webhookd.event.types"] == ["call.started", "invoice.paid"]
    assert (batch.attributes["webhookd.event.count"], batch.attributes["webhookd.deliveries"]) == (
        2,
        2,
    )
    children = await collector.wait_spans("deliver", 3)
    in_batch = [s for s in children if s.trace_id == TRACE_ID]
    assert sorted(s.attributes["webhookd.event.id"] for s in in_batch) == sorted(ids)
    assert all(s.parent_id == batch.span_id for s in in_batch)
    # A refused publish is a span too, with its status code (a 4xx is not our error).
    r = await d.post("/v1/events", {"type": "no.such.type", "payload": {}})
    assert r.status == 422
    [refused] = [s for s in await collector.wait_spans("publish", 3) if s.name == "publish"]
    assert refused.attributes["http.response.status_code"] == 422
    assert refused.status == Status.StatusCode.STATUS_CODE_UNSET


async def test_spans_still_queued_are_exported_on_sigterm(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, collector: Collector
) -> None:
    # An export a minute away: only the shutdown's flush can bring them before that.
    d = await make_daemon(traced(collector), env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})
    rx = await make_receiver()
    await d.endpoint(rx.url)
    ev = await d.publish()
    await rx.wait_for(1)
    [dlv] = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
    await d.wait_status(dlv["id"], "delivered")
    assert collector.spans == []
    d.signal(signal.SIGTERM)
    assert await d.wait_exit() == 0
    names = sorted(s.name for s in collector.spans)
    assert names == ["deliver call.completed", "publish call.completed"]


async def test_sampled_out_traces_export_nothing_but_still_propagate(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, collector: Collector
) -> None:
    d = await make_daemon(traced(collector, sample_ratio=0), env=FAST_EXPORT)
    rx = await make_receiver()
    await d.endpoint(rx.url)
    ours = await d.publish()
    # A caller's sampled flag wins over the ratio (the trace is the caller's to sample).
    r = await d.post(
        "/v1/events",
        {"type": "call.started", "payload": {}},
        headers={"traceparent": INCOMING},
    )
    got = {req.headers["webhook-id"]: req.headers for req in await rx.wait_for(2)}
    version, trace_id, _, flags = fields_of(got[ours["id"]]["traceparent"])
    assert version == "00" and trace_id != TRACE_ID
    assert not int(flags, 16) & 1  # not sampled
    assert fields_of(got[r.json["id"]]["traceparent"])[1::2] == (TRACE_ID, "01")
    assert await d.stop() == 0
    assert sorted(s.name for s in collector.spans) == [
        "deliver call.started",
        "publish call.started",
    ]


# --- without the packages, and with tracing off --------------------------------------


def stub_opentelemetry(tmp_path: Path) -> tuple[Path, Path]:
    """A PYTHONPATH directory whose `opentelemetry` package notes that it was imported
    and then fails as a missing one would: (the directory, the note's path)."""
    root = tmp_path / "stub"
    note = tmp_path / "opentelemetry-imported"
    (root / "opentelemetry").mkdir(parents=True)
    (root / "opentelemetry" / "__init__.py").write_text(
        textwrap.dedent(
            f"""\
            open({str(note)!r}, "a").write("imported\\n")
            raise ImportError("No module named 'opentelemetry' (test stub)")
            """
        )
    )
    return root, note


def stub_env(root: Path) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": f"{root}{os.pathsep}{path}" if path else str(root)}


async def test_configured_without_the_packages_the_daemon_says_so_once_and_runs(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, tmp_path: Path
) -> None:
    root, note = stub_opentelemetry(tmp_path)
    d = await make_daemon({"tracing": {"otlp_endpoint": "http://127.0.0.1:9"}}, env=stub_env(root))
    rx = await make_receiver()
    await d.endpoint(rx.url)
    await d.post(
        "/v1/events", {"type": "call.completed", "payload": {}}, headers={"traceparent": INCOMING}
    )
    [req] = await rx.wait_for(1)
    assert req.headers["traceparent"] == INCOMING  # untraced: forwarded as it came
    assert note.exists()
    warnings = [line for line in d.log_text().splitlines() if "tracing_unavailable" in line]
    assert len(warnings) == 1, d.log_text()
    assert " warning " in warnings[0]
    assert "pip install 'webhookd[tracing]'" in warnings[0]


@BOTH
async def test_tracing_off_keeps_and_forwards_the_callers_traceparent_importing_nothing(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, tmp_path: Path, backend: str
) -> None:
    root, note = stub_opentelemetry(tmp_path)
    d = await make_daemon(env=stub_env(root))
    rx = await make_receiver()
    # The endpoint's own header is replaced when the event has a trace context.
    await d.endpoint(rx.url, headers={"Traceparent": "custom"})
    later = "01-" + INCOMING[3:] + "-what-a-later-version-adds"
    sent = {
        "kept": INCOMING,
        "later version": later,
        "uppercase": INCOMING.upper(),
        "zero trace id": f"00-{'0' * 32}-{PARENT_ID}-01",
        "version ff": "ff" + INCOMING[2:],
        "extra field in version 00": INCOMING + "-00",
        "garbage": "not a traceparent",
    }
    ids: dict[str, str] = {}
    for what, value in sent.items():
        r = await d.post(
            "/v1/events",
            {"type": "call.completed", "payload": {"case": what}},
            headers={"traceparent": value},
        )
        assert r.status == 202, (what, r)  # an invalid traceparent is ignored, not refused
        ids[what] = r.json["id"]
    got = {r.headers["webhook-id"]: r for r in await rx.wait_for(len(sent))}
    named = {what: traceparents(got[ids[what]].headers) for what in sent}
    assert all(len(found) == 1 for found in named.values()), named  # never two
    carried = {what: found[0] for what, found in named.items()}
    assert carried == {
        "kept": INCOMING,
        "later version": INCOMING,  # sent as the version we speak
        "uppercase": "custom",
        "zero trace id": "custom",
        "version ff": "custom",
        "extra field in version 00": "custom",
        "garbage": "custom",
    }
    for what in ("kept", "garbage"):
        [a] = await attempts(d, ids[what])
        assert traceparents(a["request_headers"]) == [carried[what]]
    assert not note.exists(), "tracing is off, yet opentelemetry was imported"


# --- the pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([INCOMING], INCOMING),
        ([f" {INCOMING}\t"], INCOMING),
        ([f"cc-{TRACE_ID}-{PARENT_ID}-09-more"], f"00-{TRACE_ID}-{PARENT_ID}-09"),
        ([f"cc-{TRACE_ID}-{PARENT_ID}-09.more"], None),
        ([INCOMING, INCOMING], None),  # several are invalid
        ([], None),
        ([INCOMING[:-1]], None),
        ([f"00-{TRACE_ID}-{'0' * 16}-01"], None),
    ],
)
def test_traceparent_validation(values: list[str], expected: str | None) -> None:
    assert valid_traceparent(values) == expected


def test_put_traceparent_replaces_the_endpoints_header_whatever_its_case() -> None:
    headers = {"TraceParent": "custom", "X-Other": "1"}
    put_traceparent(headers, None)
    assert headers == {"TraceParent": "custom", "X-Other": "1"}
    put_traceparent(headers, INCOMING)
    assert headers == {"X-Other": "1", "traceparent": INCOMING}


def test_tracing_config_defaults_and_problems() -> None:
    t = config_from_mapping({}).tracing
    assert (t.otlp_endpoint, t.traces_url, t.service_name, t.sample_ratio) == (
        None,
        None,
        "webhookd",
        1.0,
    )
    t = config_from_mapping(
        {"tracing": {"otlp_endpoint": "https://otel.example.com:4318/", "headers": {"a": "b"}}}
    ).tracing
    assert t.traces_url == "https://otel.example.com:4318/v1/traces"
    assert t.headers == (("a", "b"),)
    assert "b" not in repr(t).replace("webhookd", "")
    for bad, problem in [
        ({"otlp_endpoint": "ftp://x"}, "tracing.otlp_endpoint: expected an http://"),
        ({"otlp_endpoint": "http://user:pw@x"}, "tracing.otlp_endpoint: expected a URL without"),
        ({"otlp_endpoint": "http://x/?k=v"}, "tracing.otlp_endpoint: expected an http://"),
        ({"sample_ratio": 1.5}, "tracing.sample_ratio: expected a number 0-1"),
        ({"headers": {"bad name": "v"}}, "tracing.headers: 'bad name' is not a header name"),
        ({"headers": {"k": "line\nbreak-secret"}}, "tracing.headers.k: expected a string"),
        ({"headers": ["k"]}, "tracing.headers: expected a mapping"),
        ({"timeout_s": 0}, "tracing.timeout_s: expected a number > 0"),
        ({"endpoint": "http://x"}, "tracing.endpoint: unknown key"),
    ]:
        with pytest.raises(ConfigError) as err:
            config_from_mapping({"tracing": bad})
        [line] = err.value.problems
        assert line.startswith(problem), line
        assert "secret" not in line and "pw" not in line
