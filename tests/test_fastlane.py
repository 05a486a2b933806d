"""The fast lane for single publishes (webhookd/api/fastlane.py): plain publishes are
answered there, everything else by aiohttp, with the same answers either way.

Each test serves the real API app on 127.0.0.1 over a real store, twice: behind the fast
lane (as the daemon does) and on aiohttp alone, and sends the same raw bytes to both."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import wait_until
from webhookd.api import create_app
from webhookd.api.context import State
from webhookd.api.fastlane import MAX_BUFFER, FastLane
from webhookd.config import config_from_mapping
from webhookd.store.sqlite import SQLiteStore

KEY = "whk_fastlane_test_key_0123456789"
TENANT_KEY = "whk_fastlane_tenant_key_01234567"


@dataclass
class Served:
    lane: FastLane
    lane_port: int
    plain_port: int
    store: SQLiteStore


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path, {}):
        yield s


@pytest.fixture
async def served_keys(tmp_path: Path) -> AsyncIterator[Served]:
    keys = {
        "api_keys": [
            {"name": "ops", "key": KEY},
            {"name": "acme", "key": TENANT_KEY, "tenant": "acme"},
        ]
    }
    async for s in _serve(tmp_path, keys):
        yield s


async def _serve(tmp_path: Path, extra: dict[str, Any]) -> AsyncIterator[Served]:
    config = config_from_mapping(
        {
            "database": str(tmp_path / "w.db"),
            "event_types": [{"name": "order.created"}],
            **extra,
        },
        environ={},
    )
    store = SQLiteStore(config.database)
    await store.open()
    await store.sync_event_types(config.event_types)
    state = State(config=config, store=store)
    state.starting = False
    runner = web.AppRunner(create_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    lane = FastLane(state, runner.server)
    loop = asyncio.get_running_loop()
    lane_server = await loop.create_server(lane, "127.0.0.1", 0)
    plain = web.TCPSite(runner, "127.0.0.1", 0)
    await plain.start()
    plain_port = runner.addresses[0][1]
    try:
        yield Served(lane, lane_server.sockets[0].getsockname()[1], plain_port, store)
    finally:
        lane_server.close()
        await lane.shutdown(1)
        await runner.cleanup()
        await store.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    def comparable(self) -> tuple[int, Any, dict[str, str]]:
        """Status, body without the generated id and time, and the headers that matter."""
        doc = self.json
        if isinstance(doc, dict) and "created_at" in doc:
            doc = {k: v for k, v in doc.items() if k not in ("created_at", "id")}
        keep = {"content-type", "server", "retry-after", "www-authenticate", "connection"}
        return self.status, doc, {k: v for k, v in self.headers.items() if k in keep}


class Conn:
    """A raw HTTP/1.1 client connection: exact bytes out, answers parsed back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout: float = 10) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(
            self.reader.readexactly(int(headers.get("content-length", "0"))), timeout
        )
        return Answer(status, headers, body)

    async def closed(self, timeout: float = 10) -> bool:
        return await asyncio.wait_for(self.reader.read(), timeout) == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def publish(
    body: bytes | dict[str, Any],
    *,
    headers: dict[str, str] | None = None,
    version: str = "1.1",
    path: str = "/v1/events",
) -> bytes:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    head = {"Host": "127.0.0.1", "Content-Type": "application/json", **(headers or {})}
    if "Transfer-Encoding" not in head:
        head.setdefault("Content-Length", str(len(raw)))
    lines = "".join(f"{k}: {v}\r\n" for k, v in head.items())
    return f"POST {path} HTTP/{version}\r\n{lines}\r\n".encode() + raw


EVENT = {"type": "order.created", "payload": {"n": 1}}


async def ask(port: int, request: bytes) -> Answer:
    conn = await Conn.open(port)
    try:
        await conn.send(request)
        return await conn.answer()
    finally:
        await conn.close()


async def test_a_plain_publish_is_answered_by_the_lane_as_aiohttp_would(served: Served) -> None:
    fast = await ask(served.lane_port, publish(EVENT))
    slow = await ask(served.plain_port, publish(EVENT))
    assert (served.lane.published, served.lane.handed_off) == (1, 0)
    assert fast.status == 202
    assert fast.comparable() == slow.comparable()
    # Same header set, same form of each (Date is an HTTP date, Server aiohttp's).
    assert set(fast.headers) == set(slow.headers)
    assert fast.headers["date"].endswith(" GMT") and len(fast.headers["date"]) == 29
    assert fast.headers["content-length"] == str(len(fast.body))
    event = await served.store.get_event(fast.json["id"])
    assert orjson.loads(event[0].payload_json) == {"n": 1}


async def test_every_other_request_gets_aiohttp_s_answer(served_keys: Served) -> None:
    s = served_keys
    auth = {"Authorization": f"Bearer {KEY}"}
    scoped = {"Authorization": f"Bearer {TENANT_KEY}"}
    big = {**EVENT, "payload": {"x": "y" * 300_000}}
    gzipped = gzip.compress(orjson.dumps(EVENT))
    # (what, the request for one server (tag: "lane" or "plain"), taken by the lane)
    cases: list[tuple[str, Callable[[str], bytes], bool]] = [
        ("plain", lambda t: publish(EVENT, headers=auth), True),
        (
            "idempotency key",
            lambda t: publish(EVENT, headers={**auth, "Idempotency-Key": f"k-{t}"}),
            True,
        ),
        ("scoped key, own tenant", lambda t: publish(EVENT, headers=scoped), True),
        ("no key", lambda t: publish(EVENT), False),
        ("wrong key", lambda t: publish(EVENT, headers={"Authorization": "Bearer no"}), False),
        ("not bearer", lambda t: publish(EVENT, headers={"Authorization": f"Basic {KEY}"}), False),
        (
            "scoped key, other tenant",
            lambda t: publish({**EVENT, "tenant": "other"}, headers=scoped),
            False,
        ),
        ("invalid JSON", lambda t: publish(b'{"type": ', headers=auth), False),
        ("blank body", lambda t: publish(b"   ", headers=auth), False),
        ("not an object", lambda t: publish(b"[1, 2]", headers=auth), False),
        ("unknown type", lambda t: publish({**EVENT, "type": "no.pe"}, headers=auth), False),
        ("unknown field", lambda t: publish({**EVENT, "colour": "red"}, headers=auth), False),
        (
            "id differs from Idempotency-Key",
            lambda t: publish({**EVENT, "id": "a"}, headers={**auth, "Idempotency-Key": "b"}),
            False,
        ),
        ("payload too large", lambda t: publish(big, headers=auth), False),
        ("HTTP/1.0", lambda t: publish(EVENT, headers=auth, version="1.0"), False),
        (
            "Connection: close",
            lambda t: publish(EVENT, headers={**auth, "Connection": "close"}),
            False,
        ),
        ("other route", lambda t: publish(EVENT, headers=auth, path="/v1/events/batch"), False),
        ("query string", lambda t: publish(EVENT, headers=auth, path="/v1/events?x=1"), False),
        (
            "gzip body",
            lambda t: publish(gzipped, headers={**auth, "Content-Encoding": "gzip"}),
            False,
        ),
    ]
    for name, request, fast in cases:
        before = (s.lane.published, s.lane.handed_off)
        a = await ask(s.lane_port, request("lane"))
        b = await ask(s.plain_port, request("plain"))
        assert a.comparable() == b.comparable(), name
        expected = (before[0] + 1, before[1]) if fast else (before[0], before[1] + 1)
        assert (s.lane.published, s.lane.handed_off) == expected, name


async def test_framing_the_lane_does_not_take_goes_to_aiohttp(served: Served) -> None:
    raw = orjson.dumps(EVENT)
    chunked = (
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)
    )
    bare_lf = b"POST /v1/events HTTP/1.1\nHost: x\nContent-Length: %d\n\n%s" % (len(raw), raw)
    two_lengths = (
        b"POST /v1/events HTTP/1.1\r\nContent-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
        % (len(raw), len(raw), raw)
    )
    space_before_colon = b"POST /v1/events HTTP/1.1\r\nContent-Length : %d\r\n\r\n%s" % (
        len(raw),
        raw,
    )
    for request in (chunked, bare_lf, two_lengths, space_before_colon):
        before = served.lane.handed_off
        a = await ask(served.lane_port, request)
        b = await ask(served.plain_port, request)
        assert a.status == b.status, request
        assert served.lane.handed_off == before + 1, request
    assert served.lane.published == 0
    # A body announced as larger than a publish may be is refused from its head alone,
    # before a byte of it arrives (the lane does not wait for it).
    huge = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    a = await ask(served.lane_port, huge)
    assert (a.status, a.json["error"]) == (413, "payload_too_large")
    # Expect: 100-continue gets aiohttp's interim answer before the body is sent.
    conn = await Conn.open(served.lane_port)
    try:
        await conn.send(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(raw)
        )
        interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        await conn.send(raw)
        assert (await conn.answer()).status == 202
    finally:
        await conn.close()


async def test_pipelined_requests_are_answered_in_order(served: Served) -> None:
    conn = await Conn.open(served.lane_port)
    try:
        ids = [f"pipelined-{i}" for i in range(3)]
        await conn.send(
            b"".join(publish({**EVENT, "id": i}) for i in ids)
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            + publish({**EVENT, "id": "after-handoff"})
        )
        answers = [await conn.answer() for _ in range(5)]
    finally:
        await conn.close()
    assert [a.status for a in answers] == [202, 202, 202, 200, 202]
    assert [a.json["id"] for a in answers[:3]] == ids
    assert answers[4].json["id"] == "after-handoff"
    # Three taken by the lane; then the connection belongs to aiohttp, publish included.
    assert (served.lane.published, served.lane.handed_off) == (3, 1)


async def test_a_request_arriving_in_pieces_is_still_taken(served: Served) -> None:
    request = publish(EVENT)
    conn = await Conn.open(served.lane_port)
    try:
        for piece in (request[:5], request[5:40], request[40:-7], request[-7:]):
            await conn.send(piece)
        assert (await conn.answer()).status == 202
        # A second request on the same connection, one byte at a time.
        for i in range(len(request)):
            await conn.send(request[i : i + 1])
        assert (await conn.answer()).status == 202
    finally:
        await conn.close()
    assert (served.lane.published, served.lane.handed_off) == (2, 0)


async def test_a_store_failure_is_a_503_like_aiohttp_s(served: Served) -> None:
    await served.store.close()
    a = await ask(served.lane_port, publish(EVENT))
    b = await ask(served.plain_port, publish(EVENT))
    assert a.status == 503
    assert a.comparable() == b.comparable()
    assert a.headers["retry-after"] == "5"
    assert served.lane.handed_off == 0


async def test_idle_connections_are_closed_after_the_keepalive(served: Served) -> None:
    served.lane.keepalive_s = 0.2
    served.lane.sweep_s = 0.05
    conn = await Conn.open(served.lane_port)
    try:
        await conn.send(publish(EVENT))
        assert (await conn.answer()).status == 202
        assert await conn.closed()
    finally:
        await conn.close()


async def test_shutdown_answers_the_publish_being_stored_then_closes(served: Served) -> None:
    idle = await Conn.open(served.lane_port)
    busy = await Conn.open(served.lane_port)
    try:
        await idle.send(publish(EVENT))
        assert (await idle.answer()).status == 202
        # Hold the store's writer so that the next publish is being stored at shutdown.
        release, held = await hold_writer(served.store)
        await busy.send(publish({**EVENT, "id": "during-shutdown"}))
        await wait_until(lambda: any(c.busy for c in served.lane.connections), 10, "busy")
        stopping = asyncio.ensure_future(served.lane.shutdown(10))
        assert await idle.closed()
        release.set()
        await held
        answer = await busy.answer()
        assert (answer.status, answer.json["id"]) == (202, "during-shutdown")
        assert await busy.closed()
        await stopping
    finally:
        await idle.close()
        await busy.close()


async def test_a_pipeline_larger_than_the_buffer_is_answered_in_order(served: Served) -> None:
    # More than MAX_BUFFER bytes of publishes in one go: all answered, in order.
    body = {**EVENT, "payload": {"pad": "x" * 60_000}}
    count = MAX_BUFFER // 60_000 + 4
    conn = await Conn.open(served.lane_port)
    try:
        writing = asyncio.ensure_future(
            conn.send(b"".join(publish({**body, "id": f"big-{i}"}) for i in range(count)))
        )
        answers = [await conn.answer() for _ in range(count)]
        await writing
    finally:
        await conn.close()
    assert [a.json["id"] for a in answers] == [f"big-{i}" for i in range(count)]
    assert served.lane.published == count


@pytest.fixture
async def served_large(tmp_path: Path) -> AsyncIterator[Served]:
    async for s in _serve(tmp_path, {"limits": {"max_payload_bytes": 4 * MAX_BUFFER}}):
        yield s


async def hold_writer(store: SQLiteStore) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Keep the store's writer busy until the returned event is set: publishes sent
    meanwhile are being stored. Returns the event and the holding job."""
    started, release = threading.Event(), threading.Event()

    def hold(_conn: Any) -> None:
        started.set()
        release.wait(10)

    held = asyncio.ensure_future(store._writer().run(hold))
    await wait_until(started.is_set, 10, "the writer to be held")
    return release, held


async def test_a_request_larger_than_the_buffer_behind_a_stored_one(
    served_large: Served,
) -> None:
    # Reading pauses while a publish is stored and more than MAX_BUFFER bytes wait; the
    # next request is larger than that, so reading must resume to get the rest of it.
    s = served_large
    release, held = await hold_writer(s.store)
    conn = await Conn.open(s.lane_port)
    try:
        big = publish({**EVENT, "id": "big", "payload": {"pad": "x" * (2 * MAX_BUFFER)}})
        await conn.send(publish({**EVENT, "id": "first"}))
        await wait_until(lambda: any(c.busy for c in s.lane.connections), 10, "busy")
        writing = asyncio.ensure_future(conn.send(big))
        await wait_until(
            lambda: any(c._read_paused for c in s.lane.connections), 10, "reading paused"
        )
        release.set()
        await held
        answers = [await conn.answer(), await conn.answer()]
        await writing
    finally:
        await conn.close()
    assert [(a.status, a.json["id"]) for a in answers] == [(202, "first"), (202, "big")]
    assert (s.lane.published, s.lane.handed_off) == (2, 0)


async def test_the_lane_on_a_unix_socket(served: Served, tmp_path: Path) -> None:
    path = str(tmp_path / "api.sock")
    server = await asyncio.get_running_loop().create_unix_server(served.lane, path)
    try:
        reader, writer = await asyncio.open_unix_connection(path)
        conn = Conn(reader, writer)
        try:
            await conn.send(publish(EVENT) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answers = [await conn.answer(), await conn.answer()]
        finally:
            await conn.close()
    finally:
        server.close()
    assert [a.status for a in answers] == [202, 200]
    assert (served.lane.published, served.lane.handed_off) == (1, 1)
