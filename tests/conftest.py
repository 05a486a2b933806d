"""Shared test fixtures: a real daemon process, real receivers on 127.0.0.1, an API client."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from webhookd.ids import new_id
from webhookd.store.models import NewEvent
from webhookd.store.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.pg"]  # the backends: SQLite, and a throwaway PostgreSQL


# --- a store on a real file, without a daemon ---------------------------------------------


def new_event(
    n: int = 0,
    event_type: str = "order.created",
    *,
    payload: bytes | None = None,
    deliver_at: int | None = None,
) -> NewEvent:
    """An event to publish straight to a store: payload {"n": n} unless given."""
    return NewEvent(
        id=new_id("evt"),
        type=event_type,
        tenant=None,
        payload_json=orjson.dumps({"n": n}) if payload is None else payload,
        body_hash=None,
        deliver_at=deliver_at,
    )


@pytest.fixture
async def store(database: str, backend: str) -> AsyncIterator[SQLiteStore]:
    from tests.pg import new_store

    s = new_store(backend, database)
    await s.open()
    await s.sync_event_types([])
    try:
        yield s
    finally:
        await s.close()


async def wait_until(
    condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition"
) -> Any:
    """Poll `condition` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# --- receivers ---------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


Responder = Callable[[web.Request, bytes], Awaitable[web.StreamResponse] | web.StreamResponse]


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records requests and scripts its answers."""

    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answered in order, then `default`
    default: int = 200
    responder: Responder | None = None
    delay_s: float = 0.0
    url: str = ""
    _runner: web.AppRunner | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> Receiver:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(
            Received(request.method, request.path_qs, dict(request.headers), body, time.monotonic())
        )
        self._changed.set()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.responder is not None:
            result = self.responder(request, body)
            if asyncio.iscoroutine(result):
                result = await result
            return result  # type: ignore[return-value]
        status = self.statuses.pop(0) if self.statuses else self.default
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        await wait_until(
            lambda: len(self.received) >= count, timeout, f"{count} requests at {self.url}"
        )
        return self.received

    def event_ids(self) -> list[str]:
        return [r.headers.get("webhook-id", "") for r in self.received]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture
async def make_receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    made: list[Receiver] = []

    async def make(**kwargs: Any) -> Receiver:
        r = await Receiver(**kwargs).start()
        made.append(r)
        return r

    yield make
    for r in made:
        await r.stop()


# --- the daemon as a process ------------------------------------------------------------

DEV_CONFIG: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "security": {"https_only": False, "allow_networks": ["127.0.0.0/8", "::1/128"]},
    "event_types": [
        {"name": "call.completed", "description": "A call ended."},
        {"name": "call.started", "description": "A call started."},
        {"name": "invoice.paid", "description": "An invoice was paid."},
    ],
    "delivery": {"retry_schedule_s": [0.2, 0.4], "jitter": 0, "shutdown_grace_s": 5},
}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class ApiResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        import json

        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


class Daemon:
    """`python -m webhookd serve` as a real subprocess with its own config and database."""

    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        self.tmp = tmp
        self.config = merge(DEV_CONFIG, config)
        self.config.setdefault("database", str(tmp / "webhookd.db"))
        self.config_path = tmp / "webhookd.yaml"
        self.log_path = tmp / "daemon.log"
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""
        self.api_key: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._log_offset = 0

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config))

    async def start(self, timeout: float = 20.0) -> Daemon:
        self.write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "serve", "-c", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp,
            env=env,
        )
        log.close()
        match = await wait_until(self._started, timeout, "the daemon's startup line")
        self.base = f"http://{match}"
        await wait_until(self._ready, timeout, "/readyz")
        return self

    def log_text(self, since_start: bool = False) -> str:
        if not self.log_path.exists():
            return ""
        data = self.log_path.read_bytes()
        if since_start:
            data = data[self._log_offset :]
        return data.decode(errors="replace")

    def _started(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode}:\n{self.log_text(True)[-3000:]}"
            )
        m = re.search(r"event=startup .*?listen=(\S+)", self.log_text(True))
        if m is None:
            m = re.search(r'"event":"startup".*?"listen":"([^"]+)"', self.log_text(True))
        return m.group(1) if m else None

    async def _ready(self) -> bool:
        try:
            r = await self.request("GET", "/readyz")
        except aiohttp.ClientError:
            return False
        return r.status == 200

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        json_body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        key: str | None = None,
    ) -> ApiResponse:
        hdrs = dict(headers or {})
        token = key if key is not None else self.api_key
        if token:
            hdrs.setdefault("Authorization", f"Bearer {token}")
        import json

        body = (
            data
            if data is not None
            else (None if json_body is None else json.dumps(json_body).encode())
        )
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        s = await self.session()
        async with s.request(method, self.base + path, data=body, headers=hdrs) as resp:
            return ApiResponse(resp.status, dict(resp.headers), await resp.read())

    async def get(self, path: str, **kw: Any) -> ApiResponse:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> ApiResponse:
        return await self.request("POST", path, body if body is not None else {}, **kw)

    async def patch(self, path: str, body: Any, **kw: Any) -> ApiResponse:
        return await self.request("PATCH", path, body, **kw)

    async def delete(self, path: str, **kw: Any) -> ApiResponse:
        return await self.request("DELETE", path, **kw)

    async def endpoint(self, url: str, **fields: Any) -> dict[str, Any]:
        r = await self.post("/v1/endpoints", {"url": url, **fields})
        assert r.status == 201, r
        return r.json  # type: ignore[no-any-return]

    async def publish(
        self, event_type: str = "call.completed", payload: Any = None, **kw: Any
    ) -> dict[str, Any]:
        r = await self.post("/v1/events", {"type": event_type, "payload": payload or {}, **kw})
        assert r.status == 202, r
        return r.json  # type: ignore[no-any-return]

    async def delivery_status(self, delivery_id: str) -> str:
        r = await self.get(f"/v1/deliveries/{delivery_id}")
        return r.json["status"]  # type: ignore[no-any-return]

    async def wait_status(
        self, delivery_id: str, status: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            r = await self.get(f"/v1/deliveries/{delivery_id}")
            return r.json if r.json["status"] == status else None

        return await wait_until(check, timeout, f"{delivery_id} to be {status}")  # type: ignore[no-any-return]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        proc = self.proc
        await wait_until(lambda: proc.poll() is not None, timeout, "the daemon to exit")
        return proc.returncode

    async def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return await self.wait_exit()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
async def make_daemon(
    tmp_path: Path, database: str
) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    made: list[Daemon] = []

    async def make(
        config: dict[str, Any] | None = None, *, start: bool = True, **kw: Any
    ) -> Daemon:
        d = Daemon(tmp_path, {"database": database, **(config or {})}, **kw)
        made.append(d)
        if start:
            await d.start()
        return d

    yield make
    for d in made:
        await d.close()


@pytest.fixture
async def daemon(make_daemon: Callable[..., Awaitable[Daemon]]) -> Daemon:
    return await make_daemon()
