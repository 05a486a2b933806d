"""What the console asks of a store beyond the API's reads, in backend-neutral terms: the
delivery log's query, the chart of attempts, and the helpers both backends share to
answer them (the choice of index to page through, the chart's aggregation).

Pages of the delivery log are bounded work: a page reads at most `SCAN_BUDGET` rows of
the one index it walks, whatever the filters. When the rows that also pass the other
filters are sparse, a page comes back short, with a cursor that goes on where the walk
stopped (the console says "no more matches in this range, look further").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Index entries one delivery-log page walks at most (measured in bench/console.py: a
# budget page on a million deliveries answers in tens of ms on SQLite).
SCAN_BUDGET = 20000
# Rows whose created_at and seq disagree in order (publishes committing out of their
# clock order, other daemons' clocks): a time window's seq bounds are widened by this
# many rows, and created_at is then checked exactly.
SEQ_SLACK = 10000
# Attempts read at most for one chart; past it the chart covers the newest ones only.
CHART_MAX_ROWS = 200_000
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx", "none")


@dataclass(frozen=True)
class DeliveryQuery:
    """The delivery log's filters; None (or empty) means any. `status_class` filters on
    the last attempt's answer: "2xx" .. "5xx", or "none" (no answer: a network error)."""

    endpoint_id: str | None = None
    event_type: str | None = None
    statuses: tuple[str, ...] = ()
    tenant: Any = ...
    since: int | None = None
    until: int | None = None
    status_class: str | None = None

    def index(self) -> str:
        """The filter whose index a page walks (the most selective one given): endpoint,
        status (only one), event type, tenant, or "seq" (the whole table)."""
        if self.endpoint_id is not None:
            return "endpoint_id"
        if len(self.statuses) == 1:
            return "status"
        if self.event_type is not None:
            return "event_type"
        if self.tenant is not ...:
            return "tenant"
        return "seq"


def class_bounds(status_class: str) -> tuple[int, int] | None:
    """The status codes of a class ("4xx" -> (400, 499)); None for "none"."""
    if status_class == "none":
        return None
    first = int(status_class[0])
    return first * 100, first * 100 + 99


@dataclass(frozen=True)
class EndpointHealth:
    """What the endpoints board shows of one endpoint's deliveries: its pending backlog,
    and of those created since a time (24 h ago), how many were delivered and how many
    finished (delivered or failed): the success rate the API's stats give."""

    pending: int
    delivered: int
    finished: int

    @property
    def success_rate(self) -> float | None:
        return self.delivered / self.finished if self.finished else None


@dataclass(frozen=True)
class ChartBucket:
    start: int  # ms
    attempts: int
    successes: int
    failures: int
    p50_ms: int | None
    p95_ms: int | None


@dataclass(frozen=True)
class Chart:
    """Attempts over [since, until) in buckets of `bucket_ms`, and how they were answered
    over the whole span: `outcomes` maps a status code ("200") or an error kind
    ("timeout") to a count. `truncated`: more attempts than CHART_MAX_ROWS, newest kept."""

    since: int
    until: int
    bucket_ms: int
    buckets: list[ChartBucket]
    outcomes: dict[str, int] = field(default_factory=dict)
    truncated: bool = False


def percentile(sorted_values: list[int], q: float) -> int | None:
    """The nearest-rank percentile of values sorted ascending (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def chart_from_rows(
    rows: Iterable[tuple[int, int, int | None, str | None]],
    since: int,
    until: int,
    bucket_ms: int,
    truncated: bool = False,
) -> Chart:
    """Aggregate (started_at, duration_ms, status_code, error_kind) rows into a Chart."""
    n = max(1, math.ceil((until - since) / bucket_ms))
    durations: list[list[int]] = [[] for _ in range(n)]
    successes = [0] * n
    outcomes: dict[str, int] = {}
    for started_at, duration_ms, status_code, error_kind in rows:
        i = min(n - 1, max(0, (started_at - since) // bucket_ms))
        durations[i].append(duration_ms)
        if status_code is not None and 200 <= status_code < 300:
            successes[i] += 1
        key = str(status_code) if status_code is not None else (error_kind or "error")
        outcomes[key] = outcomes.get(key, 0) + 1
    buckets = []
    for i in range(n):
        values = sorted(durations[i])
        buckets.append(
            ChartBucket(
                start=since + i * bucket_ms,
                attempts=len(values),
                successes=successes[i],
                failures=len(values) - successes[i],
                p50_ms=percentile(values, 0.5),
                p95_ms=percentile(values, 0.95),
            )
        )
    ordered = dict(sorted(outcomes.items(), key=lambda kv: (-kv[1], kv[0])))
    return Chart(since, until, bucket_ms, buckets, ordered, truncated)
