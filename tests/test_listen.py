"""`webhookd listen`: the development receiver, as a real process fed by a real daemon."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

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


async def test_a_signature_that_does_not_verify_is_answered_401_and_retried(
    daemon: Daemon, tmp_path: Path
) -> None:
    port = free_port()
    ep = await daemon.endpoint(f"http://127.0.0.1:{port}/")
    out_path = tmp_path / "listen.out"
    wrong = "whsec_" + "A" * 43 + "="
    proc = _listen(out_path, "--port", str(port), "--secret", wrong)
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        published = await daemon.publish("call.completed", {"x": 1})
        [delivery] = (await daemon.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
        # The daemon's schedule is two quick retries: three attempts, each refused.
        shown = await daemon.wait_status(delivery["id"], "failed", timeout=20)
        assert [a["status_code"] for a in shown["attempts"]] == [401, 401, 401]
        text = out_path.read_text()
        assert text.count("signature INVALID (standard)") == 3
        assert text.count("<-- 401") == 3
        assert ep["id"] == shown["endpoint_id"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def _listen(out_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhookd", "listen", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_an_invalid_secret_is_refused_at_start() -> None:
    for secret, reason in (
        ("not-a-whsec-secret", "starts with whsec_"),
        ("whsec_not*base64", "must be base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24-64 bytes, got 16"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "webhookd", "listen", "--port", "1", "--secret", secret],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, result
        assert result.stdout == ""
        assert result.stderr.startswith("webhookd listen: --secret: ") and reason in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "webhookd",
            "listen",
            "--scheme",
            "hmac-sha256",
            "--secret",
            "short",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "at least 16 characters" in result.stderr


async def test_forward_to_passes_verified_requests_on_and_returns_the_answer(
    daemon: Daemon, tmp_path: Path, make_receiver: Any
) -> None:
    app = await make_receiver()
    app.statuses = [503]  # the application's first answer, then 200
    port = free_port()
    ep = await daemon.endpoint(f"http://127.0.0.1:{port}/")
    out_path = tmp_path / "listen.out"
    app_base = app.url.removesuffix("/hook")
    proc = _listen(
        out_path, "--port", str(port), "--secret", ep["secret"], "--forward-to", app_base + "/app"
    )
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        published = await daemon.publish("call.completed", {"call_id": "c-9"})
        [delivery] = (await daemon.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
        shown = await daemon.wait_status(delivery["id"], "delivered", timeout=20)
        # The application's answers became the answers to webhookd: 503, then 200.
        assert [a["status_code"] for a in shown["attempts"]] == [503, 200]
        assert shown["attempts"][1]["response_body"] == "ok"
        first, second = app.received
        assert first.path == "/app/" and first.headers["webhook-id"] == published["id"]
        assert json.loads(second.body)["data"] == {"call_id": "c-9"}
        assert "webhook-signature" in second.headers
        text = out_path.read_text()
        assert f"forwarded to {app_base}/app/: 503 nope" in text
        assert f"forwarded to {app_base}/app/: 200 ok" in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


async def test_forward_to_never_passes_an_unverified_request(
    daemon: Daemon, tmp_path: Path, make_receiver: Any
) -> None:
    app = await make_receiver()
    port = free_port()
    await daemon.endpoint(f"http://127.0.0.1:{port}/")
    out_path = tmp_path / "listen.out"
    wrong = "whsec_" + base64.b64encode(b"k" * 32).decode()
    proc = _listen(out_path, "--port", str(port), "--secret", wrong, "--forward-to", app.url)
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        published = await daemon.publish("call.completed", {})
        [delivery] = (await daemon.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
        await daemon.wait_status(delivery["id"], "failed", timeout=20)
        assert app.received == []
    finally:
        proc.terminate()
        proc.wait(timeout=10)
