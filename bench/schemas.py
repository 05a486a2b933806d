"""What an event-type JSON Schema costs publishing: the same publishes to a type without a
schema and to one with a realistic schema, interleaved in one run, on one daemon.

    .venv/bin/python bench/schemas.py                 # 3 rounds of 4 s per figure; ~1 min
    .venv/bin/python bench/schemas.py --quick         # 1 round of 2 s; ~15 s
    .venv/bin/python bench/schemas.py --validators    # also jsonschema_rs vs jsonschema
                                                      # (pip install jsonschema first),
                                                      # and the publish's whole check

One daemon (`python -m webhookd serve`, a fresh SQLite file in a temporary directory,
synchronous=FULL as by default, no endpoints: the figure is the publish path alone) with
two config types: `bench.plain` (no schema) and `bench.schema` (SCHEMA below: the order
payload of bench/harness.py, 8 properties of which 5 required, two nested objects, an
array of objects, enums, a pattern, an email format). Each round measures, for each type
in 4 alternating slices each (the first type alternating between rounds), so that the
database growing and the machine's speed moving during the run weigh on both sides alike:

- single: 32 clients in this process POST /v1/events in a closed loop, --seconds per type;
- batch: 2 clients POST /v1/events/batch of 1000 events in a closed loop, likewise.

Reported per figure: events/s, and the daemon's CPU time per event (from /proc; the
better measure on a shared machine: the clients share it), with and without the schema,
and their ratio (schema / plain), the median of the rounds with min-max. The machine's
load average and the CPU other processes used during the run are printed, so that a
noisy run can be recognised. The temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from harness import (
    PAYLOAD,
    PY,
    REPO_DIR,
    Processes,
    free_port,
    log,
    machine_cpu_s,
    machine_info,
    own_cpu_s,
    proc_cpu_s,
    wait_http,
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["order_id", "amount", "currency", "status", "customer"],
    "properties": {
        "order_id": {"type": "string", "pattern": "^ord_[0-9A-Z]{10}$"},
        "amount": {"type": "integer", "minimum": 0},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "status": {"enum": ["pending", "paid", "refunded", "cancelled"]},
        "customer": {
            "type": "object",
            "required": ["id", "email"],
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "email": {"type": "string", "format": "email"},
                "name": {"type": "string", "maxLength": 200},
            },
        },
        "items": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["sku", "qty", "unit_price"],
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "integer", "minimum": 0},
                },
            },
        },
        "shipping": {
            "type": "object",
            "properties": {
                "country": {"type": "string", "minLength": 2, "maxLength": 2},
                "city": {"type": "string"},
                "postcode": {"type": "string"},
            },
        },
        "note": {"type": ["string", "null"]},
    },
}
TYPES = {"plain": "bench.plain", "schema": "bench.schema"}
SINGLE_CLIENTS = 32
BATCH_CLIENTS = 2
BATCH_EVENTS = 1000
SLICES = 4  # per type and figure, alternating


async def closed_loop(
    http: aiohttp.ClientSession, url: str, body: bytes, clients: int, seconds: float
) -> int:
    """Requests answered 202 by `clients` loops posting `body` until `seconds` pass."""
    deadline = time.monotonic() + seconds
    headers = {"Content-Type": "application/json"}

    async def one() -> int:
        done = 0
        while time.monotonic() < deadline:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 202:
                    raise RuntimeError(f"{url}: {resp.status} {await resp.text()}")
                done += 1
        return done

    return sum(await asyncio.gather(*(one() for _ in range(clients))))


async def measure(
    http: aiohttp.ClientSession, base: str, pid: int, mode: str, kind: str, seconds: float
) -> tuple[int, float, float]:
    """(events, seconds, daemon CPU seconds) of one slice of one figure."""
    event = {"type": TYPES[kind], "payload": PAYLOAD}
    if mode == "single":
        url, body, clients, per_request = base + "/v1/events", event, SINGLE_CLIENTS, 1
    else:
        body = {"events": [event] * BATCH_EVENTS}
        url, clients, per_request = base + "/v1/events/batch", BATCH_CLIENTS, BATCH_EVENTS
    cpu0, t0 = proc_cpu_s(pid) or 0.0, time.monotonic()
    requests = await closed_loop(http, url, json.dumps(body).encode(), clients, seconds)
    elapsed, cpu = time.monotonic() - t0, (proc_cpu_s(pid) or 0.0) - cpu0
    return requests * per_request, elapsed, cpu


async def figure(
    http: aiohttp.ClientSession, base: str, pid: int, mode: str, seconds: float, first: str
) -> dict[str, dict[str, float]]:
    """Both types of one figure, in SLICES alternating slices each (the database and the
    machine drift during a run: each side gets the same share of every moment)."""
    order = (first, "schema" if first == "plain" else "plain")
    sums = {kind: [0.0, 0.0, 0.0] for kind in order}
    for i in range(2 * SLICES):
        kind = order[i % 2]
        got = await measure(http, base, pid, mode, kind, seconds / SLICES)
        sums[kind] = [a + b for a, b in zip(sums[kind], got, strict=True)]
    return {
        kind: {"rate": ev / el, "daemon_us": cpu / max(ev, 1) * 1e6}
        for kind, (ev, el, cpu) in sums.items()
    }


def start_daemon(procs: Processes, tmp: Path) -> tuple[Any, str]:
    port = free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "database": str(tmp / "bench.db"),
        "log": {"level": "warning"},
        "event_types": [
            {"name": TYPES["plain"], "description": "No schema."},
            {"name": TYPES["schema"], "description": "The order schema.", "schema": SCHEMA},
        ],
    }
    (tmp / "webhookd.yaml").write_text(yaml.safe_dump(config))
    argv = [PY, "-m", "webhookd", "serve", "-c", str(tmp / "webhookd.yaml")]
    p = procs.start(argv, tmp / "daemon.log", cwd=REPO_DIR)
    return p, f"http://127.0.0.1:{port}"


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.2f}" if med < 10 else f"{med:,.0f}"
    fmt = "{:,.2f}" if med < 10 else "{:,.0f}"
    return f"{fmt.format(med)} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def report(results: dict[tuple[str, str], list[dict[str, float]]], rounds: int) -> None:
    print(f"\n{'figure':<8} {'':<10} {'no schema':>22} {'schema':>22} {'ratio':>20}")
    for mode in ("single", "batch"):
        plain, with_schema = results[(mode, "plain")], results[(mode, "schema")]
        for key, label in (("rate", "events/s"), ("daemon_us", "daemon us/ev")):
            a = [r[key] for r in plain]
            b = [r[key] for r in with_schema]
            ratios = [y / x for x, y in zip(a, b, strict=True) if x]
            print(f"{mode:<8} {label:<12} {spread(a):>20} {spread(b):>22} {spread(ratios):>20}")
    print(f"({rounds} round(s); median (min-max); ratio = schema / no schema, round by round)")


def _per_call_us(fn: Any, n: int) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


async def validators_table() -> None:
    """Validating the bench payload and compiling SCHEMA, per library, in this process; and
    the whole check a publish makes (webhookd.api.event_types.check_payload)."""
    from importlib.metadata import version

    import jsonschema_rs

    rs = jsonschema_rs.Draft202012Validator(SCHEMA, validate_formats=True, offline=True)
    assert rs.is_valid(PAYLOAD)
    rows = [
        (
            f"jsonschema_rs {version('jsonschema_rs')}",
            _per_call_us(lambda: rs.is_valid(PAYLOAD), 20000),
            _per_call_us(
                lambda: jsonschema_rs.Draft202012Validator(
                    SCHEMA, validate_formats=True, offline=True
                ),
                300,
            ),
        )
    ]
    try:
        import jsonschema
    except ImportError:
        log("jsonschema is not installed: `.venv/bin/pip install jsonschema` to compare")
    else:
        cls = jsonschema.Draft202012Validator
        py = cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)
        assert py.is_valid(PAYLOAD)

        def build() -> None:
            cls.check_schema(SCHEMA)
            cls(SCHEMA, format_checker=cls.FORMAT_CHECKER)

        rows.append(
            (
                f"jsonschema {version('jsonschema')}",
                _per_call_us(lambda: py.is_valid(PAYLOAD), 1000),
                _per_call_us(build, 30),
            )
        )
    print(f"\n{'validator':<28} {'validate us':>12} {'compile us':>12}")
    for name, validate_us, compile_us in rows:
        print(f"{name:<28} {validate_us:>12,.1f} {compile_us:>12,.0f}")
    plain_us, schema_us = await _publish_check_us()
    print(f"publish check: {plain_us:.2f} us without a schema, {schema_us:.2f} us with SCHEMA")


async def _publish_check_us() -> tuple[float, float]:
    """check_payload per event, for a type without and with SCHEMA, on a real store."""
    from webhookd.api import event_types
    from webhookd.api.context import State
    from webhookd.api.validate import Problems
    from webhookd.config import Config, EventTypeDecl
    from webhookd.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        st = State(config=Config(), store=SQLiteStore(f"{tmp}/check.db"))
        await st.store.open()
        try:
            types = [EventTypeDecl(TYPES["plain"]), EventTypeDecl(TYPES["schema"], schema=SCHEMA)]
            await st.store.sync_event_types(types)
            problems = Problems()
            loc = ("body", "payload")
            out = []
            for kind in ("plain", "schema"):
                name = TYPES[kind]
                assert event_types.check_payload(st, name, PAYLOAD, loc, problems)
                out.append(
                    _per_call_us(
                        lambda n=name: event_types.check_payload(st, n, PAYLOAD, loc, problems),
                        50000,
                    )
                )
        finally:
            await st.store.close()
    return out[0], out[1]


async def run(args: argparse.Namespace) -> None:
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.seconds)
    info = machine_info()
    log(f"machine: {info['cpu']}, {info['cores_usable']} cores, load {info['loadavg_start']}")
    tmp = Path(tempfile.mkdtemp(prefix="webhookd-bench-schemas-"))
    procs = Processes()
    busy0, _ = machine_cpu_s()
    own0 = own_cpu_s()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        p, base = start_daemon(procs, tmp)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=SINGLE_CLIENTS + BATCH_CLIENTS)
        ) as http:
            await wait_http(http, base + "/readyz", 30)
            daemon0 = proc_cpu_s(p.pid) or 0.0
            for r in range(rounds):
                first = "plain" if r % 2 == 0 else "schema"
                for mode in ("single", "batch"):
                    both = await figure(http, base, p.pid, mode, seconds, first)
                    for kind, got in both.items():
                        results.setdefault((mode, kind), []).append(got)
                        log(
                            f"round {r + 1} {mode:<6} {kind:<6} {got['rate']:>9,.0f} events/s "
                            f"{got['daemon_us']:>7.1f} us/event (daemon)"
                        )
            daemon_cpu = (proc_cpu_s(p.pid) or 0.0) - daemon0
        procs.stop(p)
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    busy1, _ = machine_cpu_s()
    others = (busy1 - busy0) - daemon_cpu - (own_cpu_s() - own0)
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    report(results, rounds)
    print(
        f"machine: {info['cpu']}, {info['cores_usable']} usable cores; load average "
        f"{info['loadavg_start']} at start, {load_end} at end; other processes used "
        f"{max(others, 0):.1f} CPU-s during the run"
    )
    if args.validators:
        await validators_table()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 2 s per figure")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--seconds", type=float, default=4.0, help="per figure and round")
    ap.add_argument(
        "--validators", action="store_true", help="also time jsonschema_rs against jsonschema"
    )
    args = ap.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
