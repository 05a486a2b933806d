"""`webhookd listen`: the development receiver, as a real process fed by a real daemon."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import Daemon, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_listen_prints_and_verifies_deliveries(daemon: Daemon, tmp_path: Path) -> None:
    port = free_port()
    ep = await daemon.endpoint(f"http://127.0.0.1:{port}/")
    out_path = tmp_path / "listen.out"
    with open(out_path, "wb") as out:
        good = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "webhookd",
                "listen",
                "--port",
                str(port),
                "--secret",
                ep["secret"],
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        ev = await daemon.publish("call.completed", {"call_id": "c-77"})
        await wait_until(lambda: b"c-77" in out_path.read_bytes(), 20, "the delivery to print")
        text = out_path.read_text()
        assert "type=call.completed" in text
        assert f"id={ev['id']}" in text
        assert "signature OK" in text
    finally:
        good.terminate()
        assert good.wait(timeout=10) == 0


async def test_listen_flags_a_wrong_secret(daemon: Daemon, tmp_path: Path) -> None:
    port = free_port()
    await daemon.endpoint(f"http://127.0.0.1:{port}/")
    out_path = tmp_path / "listen.out"
    wrong = "whsec_" + "A" * 43 + "="
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "listen", "--port", str(port), "--secret", wrong],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        await daemon.publish("call.completed", {"x": 1})
        await wait_until(
            lambda: b"signature" in out_path.read_bytes().split(b"listening on")[1],
            20,
            "a delivery",
        )
        assert "signature INVALID" in out_path.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
