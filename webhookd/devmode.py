"""`webhookd dev`: a daemon, a receiver and an endpoint between them, for development.

The daemon runs as a child process (`webhookd serve` on a generated configuration: http
and loopback allowed, a temporary database unless `--database`, a few event types, JSON
logs at debug level), so it is exactly the daemon of production and its signals stay its
own. The receiver (webhookd.listen) runs in this process and verifies every request with
the endpoint's secret. One line is printed per attempt, from the daemon's `attempt` log
records joined with what the receiver saw. SIGINT or SIGTERM stops the daemon with one
SIGTERM (it drains), then the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import signal
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from aiohttp import web

from webhookd import signing
from webhookd.client.core import AsyncClient, WebhookdError
from webhookd.listen import Listener, Received

# Those of etc/dev.yaml, which the docs' examples use.
DEV_EVENT_TYPES = (
    ("order.created", "An order was placed."),
    ("order.paid", "An order was paid."),
    ("call.completed", "A call ended and its recording is ready."),
)
DEV_MARK = {"created_by": "webhookd dev"}
STARTUP_TIMEOUT_S = 30.0
# The daemon's own grace is 2 s here; past this it is killed.
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1


def dev_config(port: int, database: str) -> dict[str, Any]:
    return {
        "listen": f"127.0.0.1:{port}",
        "database": database,
        "security": {"https_only": False, "allow_networks": ["127.0.0.0/8", "::1/128"]},
        "event_types": [{"name": n, "description": d} for n, d in DEV_EVENT_TYPES],
        "delivery": {"shutdown_grace_s": 2},
        # The `attempt` records are debug-level; JSON makes them readable here.
        "log": {"level": "debug", "format": "json"},
    }


def _die_with_parent() -> None:
    """In the child: a SIGTERM when `webhookd dev` dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Attempts:
    """Joins the daemon's attempt records with the receiver's verdicts, one line each."""

    out: TextIO
    endpoint_id: str = ""
    verdicts: dict[str, deque[Received]] = field(default_factory=lambda: defaultdict(deque))
    deliveries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def received(self, got: Received) -> None:
        self.verdicts[got.event_id].append(got)

    async def attempt(self, api: AsyncClient, record: dict[str, Any]) -> None:
        delivery_id = str(record.get("delivery_id"))
        delivery = self.deliveries.get(delivery_id)
        if delivery is None:
            try:
                delivery = dict(await api.get_delivery(delivery_id))
            except WebhookdError:
                delivery = {"event_type": "?", "event_id": "?"}
            self.deliveries[delivery_id] = delivery
        status = record.get("status_code") or record.get("error_kind") or "?"
        verdict = "(another endpoint)"
        if record.get("endpoint_id") == self.endpoint_id:
            queue = self.verdicts.get(str(delivery.get("event_id")))
            verdict = queue.popleft().verdict.text if queue else "(the receiver saw nothing)"
        line = (
            f"{time.strftime('%H:%M:%S')}  {delivery.get('event_type', '?'):<24} {delivery_id}  "
            f"{status!s:<12} {record.get('duration_ms', '?'):>5} ms  {verdict}"
        )
        print(line, file=self.out, flush=True)


@dataclass
class DevSession:
    port: int
    database: str | None
    out: TextIO = sys.stdout
    secret: str = field(default_factory=signing.generate_secret)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        with tempfile.TemporaryDirectory(prefix="webhookd-dev-") as tmp:
            return await self._run_in(Path(tmp))

    async def _run_in(self, tmp: Path) -> int:
        database = self.database or str(tmp / "webhookd.db")
        config = tmp / "dev.yaml"
        config.write_text(yaml.safe_dump(dev_config(self.port, database)))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "webhookd",
            "serve",
            "-c",
            str(config),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own session: a Ctrl-C in the terminal reaches this process only, which
            # then sends the daemon exactly one SIGTERM (a second would force its exit).
            start_new_session=True,
            # Started before the receiver, while this process has no other thread.
            preexec_fn=_die_with_parent,
        )
        attempts = Attempts(self.out)
        listener = Listener(self.secret, observer=attempts.received)
        runner = web.AppRunner(listener.app(), access_log=None, handle_signals=False)
        try:
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            receiver = f"http://127.0.0.1:{runner.addresses[0][1]}/webhooks"
            return await self._watch(proc, attempts, receiver, database)
        finally:
            await _stop_child(proc)
            await runner.cleanup()

    async def _watch(
        self, proc: asyncio.subprocess.Process, attempts: Attempts, receiver: str, database: str
    ) -> int:
        assert proc.stderr is not None
        lines = _records(proc.stderr)
        listen = await _wait_startup(lines, self.stop)
        if listen is None:
            return 1 if not self.stop.is_set() else 0
        async with AsyncClient(f"http://{listen}") as api:
            try:
                attempts.endpoint_id = await self._endpoint(api, receiver)
            except WebhookdError as exc:
                print(f"webhookd dev: {exc}", file=sys.stderr)
                return 1
            self._banner(listen, database, receiver, attempts.endpoint_id)
            return await self._follow(lines, api, attempts)

    async def _endpoint(self, api: AsyncClient, receiver: str) -> str:
        """The dev endpoint: made now, or (a kept --database) pointed at this receiver."""
        for ep in (await api.list_endpoints(limit=250))["data"]:
            if ep.get("metadata") == DEV_MARK:
                await api.update_endpoint(ep["id"], url=receiver, active=True)
                await api.rotate_secret(ep["id"], secret=self.secret, grace_s=0)
                return ep["id"]
        created = await api.create_endpoint(
            receiver, secret=self.secret, description="webhookd dev receiver", metadata=DEV_MARK
        )
        return created["id"]

    def _banner(self, listen: str, database: str, receiver: str, endpoint_id: str) -> None:
        types = ", ".join(name for name, _ in DEV_EVENT_TYPES)
        print(
            f"webhookd dev: API on http://{listen} (database {database})\n"
            f"  receiver {receiver} is endpoint {endpoint_id} (events *)\n"
            f"  event types: {types}\n"
            f"  try: WEBHOOKD_URL=http://{listen} webhookd trigger order.created\n"
            "  one line per attempt below; Ctrl-C to stop",
            file=self.out,
            flush=True,
        )

    async def _follow(
        self, lines: asyncio.Queue[dict[str, Any] | None], api: AsyncClient, attempts: Attempts
    ) -> int:
        while not self.stop.is_set():
            record = await _next(lines, self.stop)
            if record is None:
                if self.stop.is_set():
                    return 0
                print("webhookd dev: the daemon exited", file=sys.stderr)
                return 1
            if record.get("event") == "attempt":
                await attempts.attempt(api, record)
            elif record.get("level") in ("warning", "error", "critical"):
                print(f"daemon {record.get('level')}: {record.get('msg')}", file=sys.stderr)
        return 0


def _records(stream: asyncio.StreamReader) -> asyncio.Queue[dict[str, Any] | None]:
    """The daemon's log records, parsed, on a queue that ends with None at its exit."""
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:
        async for raw in stream:
            queue.put_nowait(_parse(raw))
        queue.put_nowait(None)

    task = asyncio.get_running_loop().create_task(pump(), name="webhookd-dev-log")
    _PUMPS.add(task)
    task.add_done_callback(_PUMPS.discard)
    return queue


_PUMPS: set[asyncio.Task[None]] = set()


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if isinstance(record, dict):
        return record
    # Not a log record (an interpreter warning, a traceback line): pass it on as is.
    return {"level": "warning", "msg": raw.decode(errors="replace").rstrip()}


async def _next(
    lines: asyncio.Queue[dict[str, Any] | None], stop: asyncio.Event
) -> dict[str, Any] | None:
    """The next record, or None when the daemon exited or a stop was asked for."""
    get = asyncio.ensure_future(lines.get())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({get, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if get.done():
        return get.result()
    get.cancel()
    return None


async def _wait_startup(
    lines: asyncio.Queue[dict[str, Any] | None], stop: asyncio.Event
) -> str | None:
    """The address the daemon listens on, from its startup record; None if it failed."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            record = await asyncio.wait_for(_next(lines, stop), deadline - time.monotonic())
        except TimeoutError:
            break
        if record is None:
            if not stop.is_set():
                print("webhookd dev: the daemon did not start (see above)", file=sys.stderr)
            return None
        if record.get("event") == "startup":
            return str(record["listen"]).split(",")[0]
        if record.get("level") in ("warning", "error", "critical"):
            print(f"daemon {record.get('level')}: {record.get('msg')}", file=sys.stderr)
    print(f"webhookd dev: the daemon did not start within {STARTUP_TIMEOUT_S:g} s", file=sys.stderr)
    return None


async def _stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def run(port: int, database: str | None) -> int:
    return await DevSession(port, database).run()
