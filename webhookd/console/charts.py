"""Charts as inline SVG, computed on the server: attempts per bucket (successes against
failures), latency p50 and p95, and the answers by status code. No chart library and no
script: the template draws rectangles and polylines from the numbers made here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webhookd.store.interface import Chart

WIDTH = 600
HEIGHT = 120


@dataclass(frozen=True)
class Range:
    name: str
    span_ms: int
    bucket_ms: int


RANGES = (
    Range("1h", 3_600_000, 60_000),
    Range("24h", 86_400_000, 3_600_000),
    Range("7d", 7 * 86_400_000, 6 * 3_600_000),
)


def chosen_range(name: str | None) -> Range:
    return next((r for r in RANGES if r.name == name), RANGES[1])


def _scale(top: float) -> float:
    return HEIGHT / top if top > 0 else 0.0


def svg_data(chart: Chart) -> dict[str, Any]:
    """Geometry for the templates: one bar pair per bucket, two latency polylines."""
    n = len(chart.buckets)
    step = WIDTH / n if n else WIDTH
    most = max((b.attempts for b in chart.buckets), default=0)
    k = _scale(most)
    bars = []
    for i, b in enumerate(chart.buckets):
        ok_h = b.successes * k
        bad_h = b.failures * k
        bars.append(
            {
                "x": round(i * step, 2),
                "w": round(max(step - 1, 0.5), 2),
                "ok_y": round(HEIGHT - ok_h, 2),
                "ok_h": round(ok_h, 2),
                "bad_y": round(HEIGHT - ok_h - bad_h, 2),
                "bad_h": round(bad_h, 2),
                "title": f"{b.attempts} attempts, {b.failures} failed",
            }
        )
    slowest = max((b.p95_ms or 0 for b in chart.buckets), default=0)
    lk = _scale(slowest)

    def line(attr: str) -> str:
        points = []
        for i, b in enumerate(chart.buckets):
            value = getattr(b, attr)
            if value is not None:
                points.append(f"{round(i * step + step / 2, 2)},{round(HEIGHT - value * lk, 2)}")
        return " ".join(points)

    attempts = sum(b.attempts for b in chart.buckets)
    successes = sum(b.successes for b in chart.buckets)
    top = max(chart.outcomes.values(), default=0)
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "bars": bars,
        "most": most,
        "p50": line("p50_ms"),
        "p95": line("p95_ms"),
        "slowest": slowest,
        "attempts": attempts,
        "successes": successes,
        "failures": attempts - successes,
        "outcomes": [
            {"key": key, "n": n, "w": round(n / top * 200, 1) if top else 0}
            for key, n in list(chart.outcomes.items())[:12]
        ],
        "truncated": chart.truncated,
    }
