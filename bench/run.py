"""The reproducible webhookd benchmark: figures with baselines, ratios and targets.

    .venv/bin/python bench/run.py                    # full run, 3 runs per figure
    .venv/bin/python bench/run.py --quick            # smoke run, 1 run, small backlog
    .venv/bin/python bench/run.py --compare HEAD~5   # the same, before and after
    .venv/bin/python bench/run.py --only A,3,W,3P --runs 5
    .venv/bin/python bench/run.py --profile /tmp/p   # py-spy while delivering

Every process is separate and talks over 127.0.0.1 only: the daemon
(`python -m webhookd serve -c <generated config>`, on a fresh SQLite file in a temporary
directory, synchronous=FULL as by default), the receiver (bench/receiver.py), a
receiver that never answers (receiver.py --dead), the baseline API
(bench/trivial_api.py), the load generator (bench/loadgen.py) and wrk. Each figure is
measured `--runs` times, interleaved (run 1 of every figure, then run 2, ...), and
reported as the median with min-max; ratios are taken run by run against the baseline
measured in the same run, right before its figure (B, 4, 5, A, 3, A', W, 3P, 6, 8);
figure 3 against the mean of A before it and A' right after it. bench/README.md says
what each figure means.

With --compare REV, REV is checked out into a temporary git worktree (removed at the
end) and every figure that starts a daemon runs twice per run, interleaved, alternating
which goes first: once with the daemon from that worktree and once from the working
tree, both with this interpreter and virtualenv. The baselines are measured once and
shared. The report adds a table of both medians and their ratio.

Every loop is bounded in count and in time; child processes are killed in `finally`
blocks and die with this process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from backlog import backlog
from core import WORKING_TREE, Bench, Impl
from delivery import baseline_a, baseline_w, isolation, published_meanwhile, sustained
from harness import (
    PY,
    REPO_DIR,
    Settings,
    log,
    machine_cpu_s,
    machine_info,
    own_cpu_s,
)
from profiling import profile_publish
from publishing import baseline_b, batch_publish, latency, single_publish
from report import build_rows, compare_table, memory_rows, render

ALL_FIGURES = "A,B,W,3,3P,4,5,6,7,8"


# --- the implementation compared against -------------------------------------------------


def git(*args: str, timeout_s: float = 120) -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO_DIR), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    return done.stdout.strip()


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Impl]:
    """REV checked out into a temporary git worktree, removed afterwards."""
    sha = git("rev-parse", "--short", f"{rev}^{{commit}}")
    parent = Path(tempfile.mkdtemp(prefix="webhookd-bench-rev-"))
    tree = parent / "tree"
    try:
        git("worktree", "add", "--detach", "--quiet", str(tree), sha)
        yield Impl(f"{rev} ({sha})", tree, suffix="-old")
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            git("worktree", "remove", "--force", str(tree))
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            git("worktree", "prune")
        shutil.rmtree(parent, ignore_errors=True)


def check_impl(impl: Impl, cwd: Path) -> None:
    """Make sure a daemon started for `impl` imports webhookd from `impl.source`."""
    done = subprocess.run(
        [PY, "-c", "import webhookd; print(webhookd.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(impl.source)},
        check=True,
    )
    where = Path(done.stdout.strip()).resolve()
    if not where.is_relative_to(impl.source.resolve()):
        raise RuntimeError(f"{impl.name}: webhookd imports from {where}, not {impl.source}")
    log(f"daemon '{impl.name}': webhookd from {where.parent}")


# --- the schedule -----------------------------------------------------------------------


Figure = Callable[[Bench, int], Awaitable[Any]]


async def each_impl(b: Bench, run: int, *figures: Figure) -> None:
    """Run `figures` once per implementation, alternating which goes first by run."""
    impls = b.impls if run % 2 == 0 else list(reversed(b.impls))
    for impl in impls:
        with b.using(impl):
            for figure in figures:
                await figure(b, run)


async def one_run(b: Bench, run: int, only: set[str]) -> None:
    """One run of every selected figure, each baseline right before the figure it is the
    ratio's denominator for: the machine's speed drifts within minutes."""
    if "B" in only:
        await baseline_b(b, run)
    if "4" in only:
        await each_impl(
            b,
            run,
            lambda b, r: single_publish(b, r, with_endpoint=False),
            lambda b, r: single_publish(b, r, with_endpoint=True),
        )
    if "5" in only:
        await each_impl(
            b,
            run,
            lambda b, r: batch_publish(b, r, with_endpoint=False),
            lambda b, r: batch_publish(b, r, with_endpoint=True),
        )
    if "A" in only:
        await baseline_a(b, run)
    if "3" in only:
        await each_impl(b, run, sustained)
        if "A" in only:
            await baseline_a(b, run, key="A'")  # figure 3 is divided by the mean of the two
    if "W" in only:
        await baseline_w(b, run)
    if "3P" in only:
        await each_impl(b, run, published_meanwhile)
    if "6" in only:
        await each_impl(b, run, latency)
    if "8" in only:
        await each_impl(
            b,
            run,
            lambda b, r: isolation(b, r, with_dead=False),
            lambda b, r: isolation(b, r, with_dead=True),
        )


async def measure(b: Bench, args: argparse.Namespace) -> None:
    only = set((args.only or ALL_FIGURES).upper().replace(" ", "").split(","))
    for run in range(b.s.runs):
        log(f"run {run + 1}/{b.s.runs}")
        await one_run(b, run, only)
    if b.s.backlog > 0 and "7" in only:
        for impl in b.impls:
            log(f"backlog of {b.s.backlog:,} ({impl.name})")
            with b.using(impl):
                await backlog(b)
    if args.profile:
        with b.using(WORKING_TREE):
            rate = statistics.median(b.samples.values.get("3", [3000.0]))
            log("profile: sustained delivery under py-spy")
            await sustained(b, 99, events=int(rate * 55), profile_prefix=args.profile)
    if args.profile_publish:
        log("profile: single publishes under py-spy")
        with b.using(WORKING_TREE):
            await profile_publish(b, args.profile_publish)


# --- main -------------------------------------------------------------------------------


def finish_machine(
    machine: dict[str, Any], t0: float, busy0: float, steal0: float, own0: float
) -> None:
    """How long the run took and how busy the machine was with other work: every child
    has been waited for by now, so the benchmark's own CPU time is complete."""
    with open("/proc/loadavg") as f:
        machine["loadavg_end"] = " ".join(f.read().split()[:3])
    machine["wall_s"] = time.monotonic() - t0
    busy1, steal1 = machine_cpu_s()
    capacity_s = machine["wall_s"] * (os.cpu_count() or 1)
    machine["other_cpu_s"] = max(0.0, (busy1 - busy0) - (own_cpu_s() - own0))
    machine["other_cpu_share"] = machine["other_cpu_s"] / capacity_s
    machine["steal_share"] = (steal1 - steal0) / capacity_s


def report(b: Bench, args: argparse.Namespace, machine: dict[str, Any]) -> None:
    command = " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    samples = b.merged(WORKING_TREE)
    rows = build_rows(samples, b.s)
    print(render(samples, machine, rows, b.s, command))
    doc: dict[str, Any] = {
        "machine": machine,
        "command": command,
        "settings": b.s.__dict__,
        "rows": [r.as_json() for r in rows],
        "memory": dict(memory_rows(samples)),
        "samples": samples.values,
        "details": samples.details,
    }
    for impl in b.impls[1:]:
        old = b.merged(impl)
        old_rows = build_rows(old, b.s)
        print(compare_table(rows, old_rows, WORKING_TREE.name, impl.name))
        doc["compared"] = {"name": impl.name, "rows": [r.as_json() for r in old_rows]}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
        log(f"JSON written to {args.json_out}")


async def main_async(args: argparse.Namespace, b: Bench) -> int:
    machine = machine_info()
    machine["wrk"] = shutil.which("wrk") or "not installed (baseline W skipped)"
    t0, own0 = time.monotonic(), own_cpu_s()
    busy0, steal0 = machine_cpu_s()
    connector = aiohttp.TCPConnector(limit=100)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        b.http = http
        try:
            b.write_bodies()
            await b.start_receivers()
            await measure(b, args)
        finally:
            await asyncio.to_thread(b.procs.stop_all)
    machine["loadgen_loop"] = b.loadgen_loop
    finish_machine(machine, t0, busy0, steal0, own0)
    report(b, args, machine)
    return 0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="short smoke run (about 2 min)")
    ap.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    ap.add_argument("--backlog", type=int, help="pending deliveries for figure 7 (0: skip)")
    ap.add_argument("--events", type=int, help="events per sustained run (figure 3)")
    ap.add_argument("--publishers", type=int, help="closed-loop publishers of figure 3P (16)")
    ap.add_argument("--batch-3p", type=int, help="events per publish request of figure 3P (10)")
    ap.add_argument("--drain-window-s", type=float, help="backlog drain window (default 20)")
    ap.add_argument("--compare", metavar="REV", help="also run every daemon figure from REV")
    ap.add_argument("--json-out", help="write the results as JSON to this file")
    ap.add_argument("--profile", help="profile a sustained phase with py-spy into PREFIX.*")
    ap.add_argument(
        "--profile-publish", help="profile single publishes (figure 4) with py-spy into PREFIX.*"
    )
    ap.add_argument("--only", help=f"comma-separated figures, of {ALL_FIGURES} (default all)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--max-minutes", type=float, help="hard limit for the whole run")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    settings = Settings.from_args(args)
    limit_s = 60 * (args.max_minutes or (4 if settings.quick else 20))
    if args.compare and not args.max_minutes:
        limit_s *= 2
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-bench-"))
    log(f"temporary directory {tmp}")

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with contextlib.ExitStack() as stack:
            b = Bench(settings, tmp)
            check_impl(WORKING_TREE, tmp)
            if args.compare:
                old = stack.enter_context(worktree(args.compare))
                check_impl(old, tmp)
                b.impls.append(old)
            return asyncio.run(asyncio.wait_for(main_async(args, b), limit_s))
    except TimeoutError:
        log(f"stopped: the run exceeded its hard limit of {limit_s:.0f} s")
        return 1
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
