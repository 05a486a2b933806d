"""The sd_notify protocol, exercised end to end over real AF_UNIX datagram sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhookd.sdnotify import Notifier, watchdog_loop

# Generous: only a broken implementation ever waits this long.
DEADLINE_S = 5.0


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for the service manager."""
    path = tmp_path / "n.sock"
    # sun_path holds 107 bytes plus NUL; fail loudly rather than bind a truncated path.
    assert len(os.fsencode(path)) < 108, path
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(DEADLINE_S)
    try:
        yield sock, str(path)
    finally:
        sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("utf-8")


def assert_nothing_queued(sock: socket.socket) -> None:
    # Datagrams are queued synchronously by sendto(), so a non-blocking read
    # right after the call under test sees anything it could have sent.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return
    finally:
        sock.settimeout(timeout)
    pytest.fail(f"unexpected datagram {data!r}")


def test_ready_reloading_stopping_status_watchdog(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled

    n.ready()
    assert recv(sock) == "READY=1"

    n.ready("serving 3 endpoints")
    assert recv(sock) == "READY=1\nSTATUS=serving 3 endpoints"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert before <= int(value) <= after

    n.stopping()
    assert recv(sock) == "STOPPING=1"

    n.status("draining 12 deliveries")
    assert recv(sock) == "STATUS=draining 12 deliveries"

    n.watchdog()
    assert recv(sock) == "WATCHDOG=1"

    n.notify("A=1", "B=2")
    assert recv(sock) == "A=1\nB=2"

    assert_nothing_queued(sock)


def test_status_newlines_cannot_inject_assignments(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n.status("upstream said:\nREADY=1")
    assert recv(sock) == "STATUS=upstream said: READY=1"
    n.ready("a\r\nb")
    assert recv(sock) == "READY=1\nSTATUS=a b"


def test_utf8_status(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("délivré ✓")
    assert recv(sock) == "STATUS=délivré ✓"


def test_abstract_namespace_socket() -> None:
    name = f"webhookd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE_S)
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.enabled
        n.ready()
        assert recv(sock) == "READY=1"
        n.stopping()
        assert recv(sock) == "STOPPING=1"


def test_disabled_notifier_is_a_noop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="webhookd.sdnotify")
    # A watchdog configured without a socket is still disabled: nowhere to ping.
    n = Notifier.from_env({"WATCHDOG_USEC": "100000"})
    assert not n.enabled
    n.notify("A=1")
    n.ready("x")
    n.reloading()
    n.stopping()
    n.status("x")
    n.watchdog()
    assert n.watchdog_interval_s() is None
    assert caplog.records == []


def test_empty_notify_socket_is_disabled() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": ""}).enabled


@pytest.mark.parametrize("address", ["relative/n.sock", "@", "vsock:2:1234"])
def test_unsupported_address_is_disabled(address: str, caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": address})
    assert not n.enabled
    assert any("unsupported NOTIFY_SOCKET" in r.getMessage() for r in caplog.records)
    n.ready()


def test_vanished_socket_does_not_raise_and_warns_once(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    sock.close()
    os.unlink(path)

    caplog.set_level(logging.DEBUG, logger="webhookd.sdnotify")
    n.ready()
    n.watchdog()
    n.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "webhookd.sdnotify"
    assert path in warnings[0].getMessage()


def test_peer_closed_but_path_left_behind_does_not_raise(
    receiver: tuple[socket.socket, str],
) -> None:
    # The other way a manager's socket goes away: the file stays, nobody reads.
    sock, path = receiver
    sock.close()
    Notifier.from_env({"NOTIFY_SOCKET": path}).ready()


@pytest.mark.parametrize(
    ("usec", "expected"),
    [("30000000", 15.0), ("100000", 0.05), ("1", 0.0000005), (" 2000000\n", 1.0)],
)
def test_watchdog_interval_is_half_of_watchdog_usec(usec: str, expected: float) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/n.sock", "WATCHDOG_USEC": usec})
    assert n.watchdog_interval_s() == pytest.approx(expected)


@pytest.mark.parametrize("usec", [None, "", "0", "-5", "abc", "1.5"])
def test_watchdog_interval_none_without_usable_usec(usec: str | None) -> None:
    env = {"NOTIFY_SOCKET": "/run/n.sock"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    assert Notifier.from_env(env).watchdog_interval_s() is None


def test_watchdog_pid_must_be_ours() -> None:
    base = {"NOTIFY_SOCKET": "/run/n.sock", "WATCHDOG_USEC": "4000000"}
    ours = Notifier.from_env({**base, "WATCHDOG_PID": str(os.getpid())})
    assert ours.watchdog_interval_s() == pytest.approx(2.0)
    # Inherited from a parent that is the real watchdog owner: not ours to feed.
    theirs = Notifier.from_env({**base, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert theirs.watchdog_interval_s() is None
    garbage = Notifier.from_env({**base, "WATCHDOG_PID": "not-a-pid"})
    assert garbage.watchdog_interval_s() == pytest.approx(2.0)


async def test_watchdog_loop_returns_at_once_without_watchdog(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    async with asyncio.timeout(DEADLINE_S):
        await watchdog_loop(n, lambda: True)
    assert_nothing_queued(sock)


async def _recv_async(sock: socket.socket) -> str:
    return (await asyncio.get_running_loop().sock_recv(sock, 4096)).decode("utf-8")


async def test_watchdog_loop_pings_until_cancelled(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sock.setblocking(False)
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    assert n.watchdog_interval_s() == pytest.approx(0.05)

    task = asyncio.create_task(watchdog_loop(n, lambda: True))
    try:
        async with asyncio.timeout(DEADLINE_S):
            start = time.monotonic()
            for _ in range(4):
                assert await _recv_async(sock) == "WATCHDOG=1"
            elapsed = time.monotonic() - start
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # Four pings are three intervals apart; a loop that ignored the interval
    # would deliver them all at once.
    assert elapsed >= 3 * 0.05 * 0.9
    assert task.cancelled()


async def test_watchdog_loop_withholds_pings_while_unhealthy(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    sock.setblocking(False)
    n = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    calls = 0

    def is_healthy() -> bool:
        # Unhealthy for the first three checks, raising on the second: only
        # from the fourth check on may a ping go out.
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("health check blew up")
        return calls > 3

    task = asyncio.create_task(watchdog_loop(n, is_healthy))
    try:
        async with asyncio.timeout(DEADLINE_S):
            assert await _recv_async(sock) == "WATCHDOG=1"
            assert calls >= 4
            assert await _recv_async(sock) == "WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
