"""/metrics as a scraper reads it: every family's name, type and labels, and the counters
moving with a success, a retried failure and a delivery that gives up."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import Daemon, Receiver, wait_until

MakeDaemon = Callable[..., Awaitable[Daemon]]

# name (as the parser gives it, without _total) -> (type, labels of its main samples)
FAMILIES = {
    "webhookd_events_published": ("counter", set()),
    "webhookd_attempts": ("counter", {"outcome", "status_class"}),
    "webhookd_deliveries_finished": ("counter", {"status"}),
    "webhookd_attempt_duration_seconds": ("histogram", set()),
    "webhookd_delivery_latency_seconds": ("histogram", set()),
    "webhookd_store_transactions": ("counter", set()),
    "webhookd_store_transaction_seconds": ("counter", set()),
    "webhookd_store_commit_seconds": ("histogram", set()),
    "webhookd_pending_deliveries": ("gauge", set()),
    "webhookd_oldest_due_delivery_age_seconds": ("gauge", set()),
    "webhookd_endpoints_disabled": ("gauge", set()),
    "webhookd_endpoints": ("gauge", set()),
    "webhookd_in_flight_requests": ("gauge", set()),
}
DURATION_LE = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0"]
DURATION_LE += ["10.0", "30.0", "+Inf"]


async def scrape(daemon: Daemon) -> dict[str, tuple[str, list[Sample]]]:
    r = await daemon.get("/metrics")
    assert r.status == 200, r
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return {
        f.name: (f.type, list(f.samples)) for f in text_string_to_metric_families(r.body.decode())
    }


def value(families: dict[str, tuple[str, list[Sample]]], sample: str, **labels: str) -> float:
    name = sample.removesuffix("_total").removesuffix("_count").removesuffix("_sum")
    for s in families[name][1]:
        if s.name == sample and s.labels == labels:
            return float(s.value)
    return 0.0


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_families_and_counters_move(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    daemon = await make_daemon({"delivery": {"retry_schedule_s": [0.05]}})
    before = await scrape(daemon)
    for name, (kind, _) in FAMILIES.items():
        assert before[name][0] == kind, name
    assert value(before, "webhookd_events_published_total") == 0

    receiver.statuses = [500]  # the first attempt fails, its retry succeeds
    await daemon.endpoint(receiver.url, events=["call.completed"])
    await daemon.endpoint(f"http://127.0.0.1:{closed_port()}/x", events=["invoice.paid"])
    await daemon.publish("call.completed")
    await daemon.publish("invoice.paid")  # refused twice, then failed

    async def settled() -> dict[str, tuple[str, list[Sample]]] | None:
        f = await scrape(daemon)
        finished = value(f, "webhookd_deliveries_finished_total", status="delivered")
        failed = value(f, "webhookd_deliveries_finished_total", status="failed")
        return f if finished >= 1 and failed >= 1 else None

    after = await wait_until(settled, 10, "one delivered and one failed delivery")
    assert value(after, "webhookd_events_published_total") == 2
    attempts = {
        (s.labels["outcome"], s.labels["status_class"]): s.value
        for s in after["webhookd_attempts"][1]
        if s.name == "webhookd_attempts_total"
    }
    assert attempts == {
        ("success", "2xx"): 1,
        ("http_error", "5xx"): 1,
        ("connection_refused", "none"): 2,
    }
    assert value(after, "webhookd_attempt_duration_seconds_count") == 4
    assert value(after, "webhookd_delivery_latency_seconds_count") == 1
    buckets = [
        s.labels["le"]
        for s in after["webhookd_attempt_duration_seconds"][1]
        if s.name.endswith("_bucket")
    ]
    assert buckets == DURATION_LE
    moved = value(after, "webhookd_store_transactions_total")
    assert moved > value(before, "webhookd_store_transactions_total")
    assert value(after, "webhookd_store_commit_seconds_count") == moved
    assert value(after, "webhookd_endpoints") == 2
    # Every sample's labels are its family's (histograms add `le` to buckets only), and
    # there are no `_created` series.
    for name, (_, samples) in after.items():
        for s in samples:
            assert not s.name.endswith("_created"), s
            extra: set[str] = {"le"} if s.name.endswith("_bucket") else set()
            assert set(s.labels) == FAMILIES[name][1] | extra, s
    assert set(after) == set(FAMILIES)
