"""Profiles of the daemon with py-spy (installed in the same virtualenv): while it
delivers (--profile) or takes single publishes (--profile-publish), with a per-thread
summary of the collapsed stacks. Written where the caller says, never into the tree.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

from core import Bench
from daemons import Daemon
from harness import PUBLISH_CLIENTS, PY, log, thread_cpu_s


async def profile(b: Bench, d: Daemon, start_at: float, prefix: str, full: bool = True) -> None:
    """py-spy recordings of the daemon from `start_at` on: all threads (sampled without
    pausing it), the GIL holder only, and with `full` a flame graph and one with native
    frames (this one pauses the daemon at each sample, so it is taken last and at a
    lower rate)."""
    pyspy = shutil.which("py-spy", path=str(Path(PY).parent)) or shutil.which("py-spy")
    if pyspy is None:
        log("  py-spy not found; no profile")
        return
    await asyncio.sleep(max(0.0, start_at - time.time()) + 0.5)
    recordings = [
        ("all threads, active samples", "raw", ".raw.txt", ["--nonblocking"], 12, 200),
        ("GIL holder only", "raw", ".gil.raw.txt", ["--nonblocking", "--gil"], 10, 200),
    ]
    if full:
        recordings += [
            ("flame graph", "flamegraph", ".svg", ["--nonblocking"], 12, 200),
            (
                "native frames (pauses the daemon)",
                "raw",
                ".native.raw.txt",
                ["--native"],
                8,
                50,
            ),
        ]
    sections: list[str] = []
    for title, fmt, suffix, flags, duration_s, rate in recordings:
        out = Path(prefix + suffix)
        argv = [pyspy, "record", "--pid", str(d.pid), "--duration", str(duration_s)]
        argv += ["--rate", str(rate), "--format", fmt, "-o", str(out), "--threads", *flags]
        threads0, t0 = thread_cpu_s(d.pid), time.perf_counter()
        p = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out_text, _ = await asyncio.wait_for(p.communicate(), duration_s + 60)
        finally:
            if p.returncode is None:
                p.kill()
                await p.wait()
        wall = time.perf_counter() - t0
        cpu = {tid: (c - threads0.get(tid, 0.0)) / wall for tid, c in thread_cpu_s(d.pid).items()}
        if p.returncode != 0:
            log(f"  py-spy ({title}) failed: {out_text.decode()[-500:]}")
            sections.append(f"## {title}: py-spy failed\n{out_text.decode()[-500:]}\n")
            continue
        head = [f"## {title} ({duration_s} s at {rate} Hz; {' '.join(flags)})", ""]
        head.append("CPU per thread meanwhile (1.00 = one core):")
        head += [
            f"  {'main thread' if tid == d.pid else 'thread'} {tid}: {share:.2f}"
            for tid, share in sorted(cpu.items(), key=lambda x: -x[1])
            if share >= 0.005
        ]
        if fmt == "raw":
            head += ["", summarize_profile(out.read_text())]
        sections.append("\n".join(head) + "\n")
    Path(prefix + ".txt").write_text("\n".join(sections))
    log(f"  profile written: {prefix}.svg, {prefix}.txt, {prefix}.*raw.txt")


async def profile_publish(b: Bench, prefix: str) -> None:
    """py-spy recordings of a daemon taking single publishes from 50 clients (figure 4,
    no endpoint), while the load generator runs long enough for both recordings."""
    d = Daemon(b, "profile-publish")
    await d.start()
    try:
        load = asyncio.create_task(
            b.loadgen(
                d.base + "/v1/events",
                "single",
                extra=["--concurrency", str(PUBLISH_CLIENTS), "--expect", "202"],
                duration_s=26,
            )
        )
        await profile(b, d, time.time() + 1.5, prefix, full=False)
        r = await load
        log(f"  (publishing under the profiler: {r['rate']:,.0f} req/s)")
    finally:
        await d.stop()


def _function(frame: str) -> str:
    """'f (path/file.py:123)' -> 'f (path/file.py)': one entry per function, not per line."""
    name, sep, where = frame.rpartition(" (")
    if not sep:
        return frame
    return f"{name} ({where.rsplit(':', 1)[0].rstrip(')')})"


def summarize_profile(raw: str, top: int = 15) -> str:
    """Per thread: self and inclusive sample shares per function, and self share per file,
    from py-spy's collapsed stacks (recorded with --threads)."""
    per_thread: dict[str, list[tuple[list[str], int]]] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = (frames[0], frames[1:]) if frames[0].startswith("thread") else ("", frames)
        per_thread.setdefault(thread, []).append((frames, int(count_text)))
        total += int(count_text)
    if not total:
        return "no samples\n"
    lines = [f"{total} samples"]
    for thread, stacks in sorted(per_thread.items(), key=lambda x: -sum(n for _, n in x[1])):
        n_thread = sum(n for _, n in stacks)
        lines += ["", f"### {thread or 'all'}: {n_thread} samples, {n_thread / total:.1%} of all"]
        if n_thread < 0.03 * total:
            continue
        self_fn: Counter[str] = Counter()
        self_file: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for frames, n in stacks:
            if not frames:
                continue
            leaf = _function(frames[-1])
            self_fn[leaf] += n
            self_file[leaf.rpartition(" (")[2].rstrip(")") or leaf] += n
            for fn in {_function(f) for f in frames}:
                incl[fn] += n
        lines += ["self % of this thread's samples, by function:"]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in self_fn.most_common(top)]
        lines += ["self % by file:"]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in self_file.most_common(10)]
        lines += ["inclusive % (webhookd and aiohttp functions):"]
        ours = [(f, c) for f, c in incl.most_common() if "webhookd/" in f or "aiohttp/" in f]
        lines += [f"  {100 * c / n_thread:5.1f}  {f}" for f, c in ours[:top]]
    return "\n".join(lines) + "\n"
