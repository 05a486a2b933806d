"""The API's connections (webhookd/api/connections.py): limits.max_connections,
limits.request_read_timeout_s and limits.keepalive_s, against a real daemon process,
with raw sockets on 127.0.0.1.

"Closed" is always observed as EOF or a reset on the client's socket, within a deadline;
the times measured say which rule closed it (the read deadline is short, the keep-alive
long, or the other way round)."""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import Daemon, Receiver, wait_until

READ_S = 0.5
KEEPALIVE_S = 2.0
KEY = "whk_connections_test_key_0123456789"

MakeDaemon = Callable[..., Awaitable[Daemon]]


def limits(**kw: Any) -> dict[str, Any]:
    return {
        "limits": {
            "request_read_timeout_s": READ_S,
            "keepalive_s": KEEPALIVE_S,
            "max_connections": 20,
            **kw,
        }
    }


def port_of(d: Daemon) -> int:
    return int(d.base.rsplit(":", 1)[1])


class Conn:
    """A raw client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.opened_at = time.monotonic()

    @classmethod
    async def open(cls, d: Daemon) -> Conn:
        if d.config["listen"].startswith("unix:"):
            r, w = await asyncio.open_unix_connection(d.config["listen"][5:])
        else:
            r, w = await asyncio.open_connection("127.0.0.1", port_of(d))
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        """One whole response (Content-Length framed, as the API answers)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
        return status, headers, body

    async def closed_after(self, timeout: float, since: float | None = None) -> float:
        """Seconds from `since` (the open) until the server closed the connection: EOF or
        a reset, whatever arrives before them is discarded. Fails after `timeout`."""
        start = self.opened_at if since is None else since
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"still open after {timeout}s")
                try:
                    data = await asyncio.wait_for(self.reader.read(65536), left)
                except TimeoutError:
                    raise AssertionError(f"still open after {timeout}s") from None
                if not data:
                    break
        except ConnectionResetError:
            pass
        return time.monotonic() - start

    def close(self) -> None:
        self.writer.close()


def get(path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: webhookd\r\n{extra}\r\n".encode()


def publish_request(key: str | None = None, payload: Any = None) -> bytes:
    """A publish exactly as plain as the removed fast lane took them."""
    body = orjson.dumps({"type": "call.completed", "payload": payload or {"n": 1}})
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    return (
        b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\nContent-Type: application/json\r\n"
        + auth.encode()
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def drip(conn: Conn, data: bytes, every_s: float) -> None:
    """Send `data` one byte at a time until the server closes the connection."""
    for i in range(len(data)):
        try:
            await conn.send(data[i : i + 1])
        except (ConnectionError, OSError):
            return
        await asyncio.sleep(every_s)  # the drip's own pace, not a wait for the server


# --- the read deadline ---------------------------------------------------------------


async def test_unfinished_requests_are_dropped_at_the_read_deadline(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(limits(keepalive_s=30))
    idle = await Conn.open(d)
    half_head = await Conn.open(d)
    await half_head.send(b"GET /healthz HTTP/1.1\r\nHost: web")
    dripping = await Conn.open(d)
    dripper = asyncio.create_task(drip(dripping, get(extra="X-Pad: " + "a" * 200 + "\r\n"), 0.1))
    half_body = await Conn.open(d)
    await half_body.send(
        b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n" + b'{"type": "'
    )
    # The daemon serves others meanwhile, long before the deadline.
    asked = time.monotonic()
    ev = await d.publish(payload={"meanwhile": True})
    assert (await d.get(f"/v1/events/{ev['id']}")).status == 200
    assert time.monotonic() - asked < READ_S

    for conn in (idle, half_head, dripping, half_body):
        # aiohttp alone would keep these until its keep-alive (30 s here) or forever.
        took = await conn.closed_after(10)
        assert READ_S * 0.8 <= took < READ_S + 2.0, took
    await asyncio.wait_for(dripper, 5)
    for conn in (idle, half_head, dripping, half_body):
        conn.close()
    assert (await d.publish()).get("id")


async def test_a_request_sent_in_pieces_within_the_deadline_is_answered(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(limits(request_read_timeout_s=5))
    conn = await Conn.open(d)
    request = publish_request()
    cut = request.index(b"\r\n\r\n") + 8
    await conn.send(request[:20])
    await conn.send(request[20:cut])
    await conn.send(request[cut:])
    status, _, body = await conn.response()
    assert status == 202, body
    # Kept alive: the next request on the same connection is answered too.
    await conn.send(get())
    assert (await conn.response())[0] == 200
    conn.close()


async def test_a_slow_handler_is_not_cut_by_the_read_deadline(make_daemon: MakeDaemon) -> None:
    # The publish arrives whole at once, then its handler waits for the database, which
    # this test holds locked past the read deadline: handling is not reading.
    d = await make_daemon(limits(request_read_timeout_s=0.3, keepalive_s=30))
    db = sqlite3.connect(d.config["database"], isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        conn = await Conn.open(d)
        await conn.send(publish_request())
        probe = await Conn.open(d)  # closed by its read deadline: the time has passed
        assert await probe.closed_after(10) >= 0.3 * 0.8
        probe.close()
        db.execute("ROLLBACK")
    finally:
        db.close()
    status, _, body = await conn.response(timeout=10)
    assert status == 202, body
    conn.close()


async def test_a_half_closed_connection_is_answered_then_closed(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(limits(keepalive_s=30, request_read_timeout_s=30))
    conn = await Conn.open(d)
    await conn.send(publish_request())
    conn.writer.write_eof()  # the client shuts its sending side after a whole request
    status, _, body = await conn.response()
    assert status == 202, body
    answered = time.monotonic()
    # Closed right after the answer, not at a deadline (both 30 s here).
    assert await conn.closed_after(5, since=answered) < 2.0
    conn.close()
    ev_id = orjson.loads(body)["id"]
    assert (await d.get(f"/v1/events/{ev_id}")).status == 200


# --- keep-alive ----------------------------------------------------------------------


async def test_an_idle_kept_alive_connection_closes_after_keepalive_s(
    make_daemon: MakeDaemon,
) -> None:
    # keepalive_s (2) > request_read_timeout_s (0.5): after an answer the connection is
    # idle, not reading, so the read deadline must not close it.
    d = await make_daemon(limits())
    conn = await Conn.open(d)
    for _ in range(2):
        await conn.send(get())
        assert (await conn.response())[0] == 200
    answered = time.monotonic()
    took = await conn.closed_after(KEEPALIVE_S + 5, since=answered)
    assert KEEPALIVE_S * 0.9 <= took < KEEPALIVE_S + 2.0, took
    conn.close()


async def test_a_request_after_an_idle_while_gets_a_fresh_read_deadline(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(limits(keepalive_s=30))
    conn = await Conn.open(d)
    await conn.send(get())
    assert (await conn.response())[0] == 200
    # Idle for longer than the read deadline: a kept-alive connection may be.
    idle_until = time.monotonic() + READ_S * 2
    probe = await Conn.open(d)  # a second connection shows time passing on the server
    assert await probe.closed_after(10) >= READ_S * 0.8
    probe.close()
    assert time.monotonic() >= idle_until - READ_S
    begun = time.monotonic()
    await conn.send(b"GET /healthz HTTP/1.1\r\n")  # a head begun, never finished
    took = await conn.closed_after(10, since=begun)
    assert READ_S * 0.8 <= took < READ_S + 2.0, took
    conn.close()


async def test_a_lower_keepalive_applies_on_reload(make_daemon: MakeDaemon) -> None:
    import signal

    d = await make_daemon(limits(keepalive_s=30))
    d.config["limits"]["keepalive_s"] = 0.5
    d.write_config()
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "event=reloaded" in d.log_text(True), 10, "the reload")
    conn = await Conn.open(d)
    await conn.send(get())
    assert (await conn.response())[0] == 200
    answered = time.monotonic()
    assert await conn.closed_after(10, since=answered) < 2.0
    conn.close()


# --- max_connections -------------------------------------------------------------------


async def test_connections_past_max_connections_are_closed_at_once(
    make_daemon: MakeDaemon,
) -> None:
    d = await make_daemon(limits(request_read_timeout_s=30, keepalive_s=30))
    await (await d.session()).close()  # its kept-alive connection would count too
    first = [await Conn.open(d) for _ in range(20)]
    for conn in first:
        await conn.send(get())
        assert (await conn.response())[0] == 200
    extra = [await Conn.open(d) for _ in range(5)]
    for conn in extra:
        assert await conn.closed_after(5) < 2.0  # at once, not at a deadline (30 s)
        conn.close()
    for conn in first:  # the admitted ones still work
        await conn.send(get("/readyz"))
        assert (await conn.response())[0] == 200
    for conn in first[:5]:
        conn.close()

    async def accepted() -> bool:
        conn = await Conn.open(d)
        try:
            await conn.send(get())
            return (await conn.response())[0] == 200
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        finally:
            conn.close()

    await wait_until(accepted, 10, "a new connection once some closed")
    for conn in first[5:]:
        conn.close()
    lines = [x for x in d.log_text(True).splitlines() if "api_connections_refused" in x]
    assert len(lines) == 1, lines  # logged at most once a minute
    assert "refused=1" in lines[0] and "max_connections=20" in lines[0]


# --- authentication sees every request -------------------------------------------------


async def test_the_auth_middleware_sees_publishes(make_daemon: MakeDaemon) -> None:
    d = await make_daemon({"api_keys": [{"name": "backend", "key": KEY}]})
    conn = await Conn.open(d)
    await conn.send(publish_request())
    status, headers, body = await conn.response()
    assert status == 401, body
    assert orjson.loads(body)["error"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    await conn.send(publish_request("x" * 40))
    assert (await conn.response())[0] == 401
    await conn.send(publish_request(KEY))
    status, _, body = await conn.response()
    assert status == 202, body
    conn.close()


# --- no descriptor exhaustion ----------------------------------------------------------


async def test_300_unfinished_heads_are_dropped_and_deliveries_go_on(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    d = await make_daemon(limits(max_connections=1024, keepalive_s=30))
    assert d.proc is not None
    pid = d.proc.pid
    # The incident's limit: 300 descriptors for the whole daemon.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (400, 400))
    await d.endpoint(receiver.url)
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    heads = []
    for _ in range(300):
        conn = await Conn.open(d)
        await conn.send(b"POST /v1/events HTTP/1.1\r\nHost: webhookd\r\nContent-Le")
        heads.append(conn)
    await wait_until(
        lambda: len(os.listdir(f"/proc/{pid}/fd")) >= fds_before + 290, 5, "300 accepted"
    )
    for conn in heads:
        await conn.closed_after(10)
        conn.close()
    await wait_until(
        lambda: len(os.listdir(f"/proc/{pid}/fd")) <= fds_before + 5, 10, "descriptors freed"
    )
    ev = await d.publish(payload={"after": "the flood"})
    got = await receiver.wait_for(1)
    assert got[0].headers["webhook-id"] == ev["id"]


async def test_the_read_deadline_on_a_unix_socket(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    d = await make_daemon({"listen": f"unix:{sock}", **limits()}, start=False)
    d.write_config()
    d.proc = subprocess.Popen(
        [sys.executable, "-m", "webhookd", "serve", "-c", str(d.config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    async def answers() -> bool:
        try:
            conn = await Conn.open(d)
        except OSError:
            return False
        try:
            await conn.send(get("/readyz"))
            return (await conn.response())[0] == 200
        finally:
            conn.close()

    await wait_until(answers, 20, "the unix-socket daemon to be ready")
    idle = await Conn.open(d)
    took = await idle.closed_after(10)
    assert READ_S * 0.8 <= took < READ_S + 2.0, took
    idle.close()
    assert await answers()
    assert await d.stop() == 0
    assert not sock.exists()
