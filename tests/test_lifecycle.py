"""Lifecycle and crash safety with a real process, real signals and SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, Receiver, wait_until


def db_counts(path: str) -> dict[str, int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall()
    finally:
        conn.close()
    return dict(rows)


async def test_sigkill_mid_way_loses_no_accepted_event(
    make_daemon: object, receiver: Receiver
) -> None:
    receiver.delay_s = 0.02
    d: Daemon = await make_daemon(  # type: ignore[operator]
        {"delivery": {"max_in_flight_per_endpoint": 4}}
    )
    await d.endpoint(receiver.url)
    accepted: list[str] = []
    for chunk in range(3):
        events = [{"type": "call.completed", "payload": {"n": chunk * 100 + i}} for i in range(100)]
        r = await d.post("/v1/events/batch", {"events": events})
        assert r.status == 202, r
        accepted += [x["id"] for x in r.json["data"]]
    for _ in range(50):
        r = await d.post("/v1/events", {"type": "call.completed", "payload": {"single": True}})
        assert r.status == 202
        accepted.append(r.json["id"])
    await receiver.wait_for(40, timeout=30)
    d.kill()  # SIGKILL: no chance to clean up
    got_before = len(receiver.received)
    assert got_before < len(accepted), "the kill came too late to prove anything"
    counts = db_counts(d.config["database"])
    assert sum(counts.values()) == len(accepted)
    assert counts.get("pending", 0) + counts.get("delivering", 0) > 0

    await d.start()  # same config, same database file
    await wait_until(
        lambda: set(accepted) <= set(receiver.event_ids()),
        timeout=60,
        what="every accepted event to arrive after the restart",
    )
    await wait_until(
        lambda: db_counts(d.config["database"]) == {"delivered": len(accepted)},
        timeout=20,
        what="every delivery to be recorded delivered",
    )
    assert "requeued_interrupted" in d.log_text(since_start=True) or got_before == 0


async def test_sigterm_finishes_in_flight_and_requeues_the_rest(
    make_daemon: object, receiver: Receiver
) -> None:
    receiver.delay_s = 1.0
    d: Daemon = await make_daemon(  # type: ignore[operator]
        {"delivery": {"max_in_flight_per_endpoint": 3, "shutdown_grace_s": 5}}
    )
    await d.endpoint(receiver.url)
    events = [{"type": "call.completed", "payload": {"n": i}} for i in range(10)]
    r = await d.post("/v1/events/batch", {"events": events})
    assert r.status == 202
    await receiver.wait_for(3)
    d.signal(signal.SIGTERM)
    code = await d.wait_exit(timeout=15)
    assert code == 0
    counts = db_counts(d.config["database"])
    # The three open requests finished and were recorded; nothing stayed `delivering`.
    assert counts.get("delivered") == 3, counts
    assert counts.get("pending") == 7, counts
    assert "delivering" not in counts
    receiver.delay_s = 0
    await d.start()
    await wait_until(
        lambda: db_counts(d.config["database"]) == {"delivered": 10}, 20, "all delivered"
    )


async def test_sigterm_grace_bounds_a_hung_request(make_daemon: object, receiver: Receiver) -> None:
    receiver.delay_s = 20
    d: Daemon = await make_daemon(  # type: ignore[operator]
        {"delivery": {"shutdown_grace_s": 0.5}}
    )
    await d.endpoint(receiver.url)
    await d.publish()
    await receiver.wait_for(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    d.signal(signal.SIGTERM)
    assert await d.wait_exit(timeout=10) == 0
    assert loop.time() - started < 8
    counts = db_counts(d.config["database"])
    assert counts == {"pending": 1}, counts
    conn = sqlite3.connect(d.config["database"])
    assert conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0] == 0
    conn.close()


async def test_second_signal_forces_exit(make_daemon: object, receiver: Receiver) -> None:
    receiver.delay_s = 20
    d: Daemon = await make_daemon({"delivery": {"shutdown_grace_s": 30}})  # type: ignore[operator]
    await d.endpoint(receiver.url)
    await d.publish()
    await receiver.wait_for(1)
    d.signal(signal.SIGTERM)
    await wait_until(lambda: "event=stopping" in d.log_text(True), 10, "the stop to begin")
    d.signal(signal.SIGINT)
    code = await d.wait_exit(timeout=10)
    assert code != 0
    assert "forced_exit" in d.log_text(True)


async def test_database_files_are_private(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url)
    await daemon.publish()
    await receiver.wait_for(1)
    db = Path(daemon.config["database"])
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        assert path.exists(), path
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} has mode {oct(mode)}"


async def test_bad_config_exits_78_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("delivery:\n  timeout_s: 99\n")
    proc = subprocess.run(
        [sys.executable, "-m", "webhookd", "serve", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 78
    assert "delivery.timeout_s" in proc.stderr


async def test_refuses_non_loopback_without_api_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "open.yaml"
    cfg.write_text("listen: 0.0.0.0:0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "webhookd", "serve", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert proc.returncode == 78
    assert "api_keys" in proc.stderr
    assert not (tmp_path / "webhookd.db").exists()


async def test_runs_with_no_config_on_the_embedded_default(tmp_path: Path) -> None:
    """`webhookd serve` with no file: SQLite in the working directory, 127.0.0.1:8080."""
    import socket

    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", 8080))
    except OSError:
        probe.close()
        import pytest

        pytest.skip("port 8080 is in use on this machine")
    probe.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "webhookd", "serve"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        import aiohttp

        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get("http://127.0.0.1:8080/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, 20, "the default daemon to be ready")
        assert (tmp_path / "webhookd.db").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert os.path.exists(tmp_path / "webhookd.db")
