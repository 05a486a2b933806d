"""The report: the table of figures with their ratios to the baselines and their
targets, memory and CPU per request, and with --compare the two implementations side by
side.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from harness import (
    BATCH_CONCURRENCY,
    BATCH_SIZE,
    PUBLISH_CLIENTS,
    WORKERS,
    Samples,
    Settings,
)


def med(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def fmt(x: float, unit: str) -> str:
    if unit in ("ms", "s", "MB", "x"):
        return f"{x:,.2f}" if unit == "x" else f"{x:,.1f}"
    return f"{x:,.0f}"


@dataclass
class Row:
    label: str
    unit: str
    values: list[float]
    ratio: list[float] | None = None
    ratio_to: str = ""
    target: str = ""
    check: Callable[[float], bool] | None = None  # applied to the ratio median if any, else value
    check_max: bool = False  # apply the check to the worst (largest) value instead

    def cells(self) -> list[str]:
        if not self.values:
            return [self.label, "n/a", "", "", self.target, "n/a" if self.check else ""]
        m, lo, hi = med(self.values)
        value = f"{fmt(m, self.unit)} {self.unit}"
        spread = f"{fmt(lo, self.unit)}-{fmt(hi, self.unit)}" if len(self.values) > 1 else "(1 run)"
        ratio = ""
        subject = m
        if self.ratio:
            rm, rlo, rhi = med(self.ratio)
            ratio = f"{rm:.2f} x {self.ratio_to}"
            if len(self.ratio) > 1:
                ratio += f" ({rlo:.2f}-{rhi:.2f})"
            subject = rm
        if self.check_max:
            subject = hi
        verdict = ""
        if self.ratio_to and not self.ratio and self.check is not None:
            verdict = "n/a"  # the baseline was not measured
        elif self.check is not None:
            verdict = "PASS" if self.check(subject) else "FAIL"
        return [self.label, value, spread, ratio, self.target, verdict]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "unit": self.unit, "values": self.values}
        if self.values:
            out["median"], out["min"], out["max"] = med(self.values)
        if self.ratio:
            out["ratio_to"] = self.ratio_to
            out["ratios"] = self.ratio
            out["ratio_median"] = statistics.median(self.ratio)
        if self.target:
            out["target"] = self.target
            out["pass"] = self.cells()[5] == "PASS"
        return out


def paired(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=False) if y]


def bracket(before: list[float], after: list[float]) -> list[float]:
    """Each run's baseline as the mean of its measurements before and after the figure
    (the VM's speed moves by a third within a minute; see RESULTS.md, "Noise")."""
    if len(after) != len(before):
        return before
    return [(x + y) / 2 for x, y in zip(before, after, strict=True)]


def getter(samples: Samples) -> Callable[[str], list[float]]:
    return lambda k: samples.values.get(k, [])


def delivery_rows(samples: Samples, s: Settings) -> list[Row]:
    g = getter(samples)
    return [
        Row(f"A  baseline: aiohttp client, {WORKERS} concurrent → receiver", "req/s", g("A")),
        Row("A' the same, right after figure 3", "req/s", g("A'")),
        Row(
            f"3  sustained deliveries, 1 endpoint, {WORKERS} in flight",
            "deliveries/s",
            g("3"),
            paired(g("3"), bracket(g("A"), g("A'"))),
            "A",
            ">= 0.85 x A",
            lambda r: r >= 0.85,
        ),
        Row(
            f"W  baseline: wrk, 1 thread, {WORKERS} connections → receiver",
            "req/s",
            g("W"),
        ),
        Row(
            f"3P deliveries of events published meanwhile ({s.publishers_3p} publishers, "
            f"{s.batch_3p}/request)",
            "deliveries/s",
            g("3P"),
            paired(g("3P"), g("W")),
            "W",
        ),
        Row(
            "3P … the same against A (the bare aiohttp loop)",
            "deliveries/s",
            g("3P"),
            paired(g("3P"), bracket(g("A"), g("A'"))),
            "A",
        ),
        Row("3P … publishes accepted meanwhile", "events/s", g("3P.publish_rate")),
    ]


def publishing_rows(samples: Samples, s: Settings) -> list[Row]:
    g = getter(samples)
    return [
        Row(f"B  baseline: trivial aiohttp API, {PUBLISH_CLIENTS} clients", "req/s", g("B")),
        Row(
            f"4  single publishes, {PUBLISH_CLIENTS} clients, no endpoint",
            "events/s",
            g("4a"),
            paired(g("4a"), g("B")),
            "B",
            ">= 0.6 x B",
            lambda r: r >= 0.6,
        ),
        Row(
            f"4' single publishes, {PUBLISH_CLIENTS} clients, 1 active endpoint",
            "events/s",
            g("4b"),
            paired(g("4b"), g("B")),
            "B",
            "(>= 0.6 x B)",
            lambda r: r >= 0.6,
        ),
        Row("4' … deliveries meanwhile", "deliveries/s", g("4b.deliveries")),
        Row(
            f"5  batch publish ({BATCH_SIZE}/request, {BATCH_CONCURRENCY} concurrent), no endpoint",
            "events/s",
            g("5a"),
            target=">= 15,000",
            check=lambda x: x >= 15000,
        ),
        Row(
            "5' batch publish, 1 endpoint (deliveries held)",
            "events/s",
            g("5b"),
            target=">= 15,000",
            check=lambda x: x >= 15000,
        ),
        Row(
            f"6  publish → first attempt p50 at {s.latency_rate:.0f}/s",
            "ms",
            g("6.p50"),
            target="< 5 ms",
            check=lambda x: x < 5,
        ),
        Row(
            f"6  publish → first attempt p99 at {s.latency_rate:.0f}/s",
            "ms",
            g("6.p99"),
            target="< 25 ms",
            check=lambda x: x < 25,
        ),
    ]


def backlog_rows(samples: Samples, s: Settings) -> list[Row]:
    g = getter(samples)
    fig3_median = statistics.median(g("3")) if g("3") else 0.0
    return [
        Row(f"7  time to publish {s.backlog:,} pending deliveries", "s", g("7.publish_s")),
        Row("7  … publish rate", "events/s", g("7.publish_rate")),
        Row(
            f"7  daemon RSS, {s.backlog:,} pending, idle",
            "MB",
            g("7.rss_idle"),
            target="< 150 MB",
            check=lambda x: x < 150,
        ),
        Row(
            "7  daemon RSS, max while draining the backlog",
            "MB",
            g("7.rss_drain"),
            target="< 150 MB (worst run)",
            check=lambda x: x < 150,
            check_max=True,
        ),
        Row(
            "7  empty queue (as fig. 3), right before and after each drain window",
            "deliveries/s",
            g("7.empty"),
        ),
        Row(
            f"7  backlog drain, first {s.drain_window_s:.0f} s",
            "deliveries/s",
            g("7.drain"),
            g("7.drain.x_empty"),
            "empty queue",
            ">= 0.9 x empty queue",
            lambda r: r >= 0.9,
        ),
        Row(
            "7  … the same drain against figure 3's median (minutes earlier)",
            "deliveries/s",
            g("7.drain"),
            [x / fig3_median for x in g("7.drain")] if fig3_median else None,
            "fig. 3",
        ),
    ]


def isolation_rows(samples: Samples, s: Settings) -> list[Row]:
    g = getter(samples)
    return [
        Row("8  healthy endpoint alone", "deliveries/s", g("8.alone")),
        Row(
            f"8  healthy endpoint, dead one (timeout {s.isolation_timeout_s:.0f} s) gets half",
            "deliveries/s",
            g("8.dead"),
            paired(g("8.dead"), g("8.alone")),
            "alone",
            ">= 0.9 x alone",
            lambda r: r >= 0.9,
        ),
    ]


def build_rows(samples: Samples, s: Settings) -> list[Row]:
    return [
        *delivery_rows(samples, s),
        *publishing_rows(samples, s),
        *backlog_rows(samples, s),
        *isolation_rows(samples, s),
    ]


MEMORY_LABELS = {
    "mem.3": "3 sustained delivery",
    "mem.3P": "3P delivering while publishing",
    "mem.4a": "4 single publishes, no endpoint",
    "mem.4b": "4' single publishes, 1 endpoint",
    "mem.5a": "5 batch publish, no endpoint",
    "mem.5b": "5' batch publish, 1 endpoint",
    "mem.6": "6 latency",
    "mem.8.alone": "8 isolation, alone",
    "mem.8.dead": "8 isolation, with dead endpoint",
    "7.rss_drain": "7 backlog drain",
}

CPU_LABELS = {
    "cpu.A.client": "A: aiohttp client loop (load generator), per request",
    "cpu.A.receiver": "A: receiver, per request",
    "cpu.W.receiver": "W: receiver, per request (wrk leaves it a core)",
    "cpu.3.daemon": "3: daemon, per delivery",
    "cpu.3.receiver": "3: receiver, per request",
    "cpu.3P.daemon": "3P: daemon, per delivery, publishing included",
    "cpu.3P.receiver": "3P: receiver, per request",
    "cpu.B.server": "B: trivial API process, per publish",
    "cpu.B.client": "B: load generator, per publish",
    "cpu.4a.daemon": "4: daemon, per publish (no endpoint)",
    "cpu.4b.daemon": "4': daemon, per publish (+ its delivery, mostly)",
    "cpu.7.empty.daemon": "7: daemon, per delivery, empty queue (the drain's reference)",
    "cpu.7.drain.daemon": "7: daemon, per delivery, draining the backlog",
    "cpu.8.alone.daemon": "8: daemon, per healthy delivery, alone",
    "cpu.8.dead.daemon": "8: daemon, per healthy delivery, with the dead endpoint",
}


def memory_rows(samples: Samples) -> list[tuple[str, list[float]]]:
    v = samples.values
    return [(label, v[k]) for k, label in MEMORY_LABELS.items() if k in v]


def render_machine(machine: dict[str, Any], settings: Settings, command: str) -> list[str]:
    return [
        "## Machine",
        "",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores ({machine['cores_usable']} usable)",
        f"- Python {machine['python']}, aiohttp {machine['aiohttp']}, kernel {machine['kernel']}",
        f"- daemon event loop: {machine['daemon_loop']}; load generator loop: "
        f"{machine['loadgen_loop']}; wrk: {machine['wrk']}",
        f"- load average at start {machine['loadavg_start']}, at end {machine['loadavg_end']}; "
        f"other processes in this system used {machine['other_cpu_s']:.0f} CPU-seconds "
        f"during the run ({machine['other_cpu_share']:.0%} of the machine), steal "
        f"{machine['steal_share']:.1%}",
        f"- command: `{command}`; {settings.runs} run(s) per figure; "
        f"wall time {machine['wall_s']:.0f} s",
        "",
    ]


def table(title: str, head: str, rows: list[tuple[str, list[float]]], digits: int) -> list[str]:
    """A median / min-max table of labelled samples, or nothing if there are none."""
    if not rows:
        return []
    out = ["", f"## {title}", "", f"| {head} | median | min-max |", "|---|---:|---:|"]
    for label, values in rows:
        m, lo, hi = med(values)
        out.append(f"| {label} | {m:.{digits}f} | {lo:.{digits}f}-{hi:.{digits}f} |")
    return out


def render(
    samples: Samples, machine: dict[str, Any], rows: list[Row], settings: Settings, command: str
) -> str:
    out = render_machine(machine, settings, command)
    out += ["## Figures", "", "| figure | median | min-max | ratio | target | result |"]
    out += ["|---|---:|---:|---|---|---|"]
    out += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    out += table("Daemon memory (max RSS per phase, MB)", "phase", memory_rows(samples), 1)
    v = samples.values
    cpu_rows = [(label, v[k]) for k, label in CPU_LABELS.items() if k in v]
    out += table(
        "CPU time per request (microseconds, all threads of the process)",
        "process, per what",
        cpu_rows,
        0,
    )
    for key, what in (("3", "figure 3"), ("3P", "figure 3P")):
        cpu = samples.details.get(key, [])
        if cpu:
            dc = statistics.median(x["daemon_cpu"] for x in cpu)
            rc = statistics.median(x["receiver_cpu"] for x in cpu)
            out += [
                "",
                f"During {what} the daemon used {dc:.0%} of a core and the receiver {rc:.0%} "
                "(median of runs; 100% = one core).",
            ]
    relative = relative_cost_rows(samples)
    if relative:
        out += table(
            "CPU per request in units of the receiver's, measured in the same window",
            "sender, per request",
            relative,
            2,
        )
        out += [
            "",
            "The receiver does the same work for every request in every figure, so its CPU "
            "time per request moves only with the machine's speed; dividing by it leaves the "
            "cost of the sending side's own work.",
        ]
    return "\n".join(out) + "\n"


def relative_cost_rows(samples: Samples) -> list[tuple[str, list[float]]]:
    """Each sender's CPU per request divided by the receiver's in the same window."""
    v, details = samples.values, samples.details
    baseline = [
        ratio
        for key in ("A", "A'")
        for ratio in paired(v.get(f"cpu.{key}.client", []), v.get(f"cpu.{key}.receiver", []))
    ]
    rows = [("A and A': aiohttp client loop", baseline)]
    for key, label in (
        ("3", "3: daemon, sustained"),
        ("3P", "3P: daemon, publishing included"),
        ("7.empty", "7: daemon, empty queue (the drain's reference)"),
        ("7.drain", "7: daemon, draining the backlog"),
    ):
        rows.append(
            (
                label,
                [
                    x["daemon_us_per_delivery"] / x["receiver_us_per_request"]
                    for x in details.get(key, [])
                    if x.get("receiver_us_per_request")
                ],
            )
        )
    return [(label, values) for label, values in rows if values]


def compare_table(new: list[Row], old: list[Row], new_name: str, old_name: str) -> str:
    """Each figure's median from both implementations, measured interleaved in the same
    runs, and new / old. Baselines are shared, so their two columns are the same."""
    out = [
        "## Before and after, interleaved in the same runs",
        "",
        f"| figure | {old_name} | {new_name} | {new_name} / {old_name} |",
        "|---|---:|---:|---:|",
    ]
    for a, b in zip(new, old, strict=True):
        if not a.values or not b.values:
            continue
        ma, mb = statistics.median(a.values), statistics.median(b.values)
        ratio = f"{ma / mb:.2f}" if mb else ""
        cells = [a.label, f"{fmt(mb, a.unit)} {a.unit}", f"{fmt(ma, a.unit)} {a.unit}", ratio]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
