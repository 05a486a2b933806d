"""Signature schemes end to end, checked by receivers written the way provider docs show.

The verifying code here deliberately does not import webhookd: it is what a customer
copies from a "compute HMAC-SHA256 of the raw body with your secret" page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from tests.conftest import Daemon, Receiver, wait_until

SECRET = "my-shared-secret-0123456789"


def provider_hmac_ok(secret: str, body: bytes, signature: str) -> bool:
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def provider_timestamped_ok(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    message = timestamp.encode() + b"." + body
    expected = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
    return fresh and hmac.compare_digest(expected, signature)


async def only_attempt(daemon: Daemon, event_id: str) -> dict[str, Any]:
    r = await daemon.get(f"/v1/deliveries?event_id={event_id}")
    [d] = r.json["data"]
    full = await daemon.wait_status(d["id"], "delivered")
    [attempt] = full["attempts"]
    return attempt  # type: ignore[no-any-return]


async def test_standard_scheme_verifies_with_the_standard_webhooks_library(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url, signature={"scheme": "standard"})
    await daemon.publish("call.completed", {"x": 1})
    [req] = await receiver.wait_for(1)
    Webhook(ep["secret"]).verify(req.body, req.headers)
    assert "X-Webhook-Signature" not in req.headers


@pytest.mark.parametrize("header", [None, "X-Hub-Signature-256"])
async def test_hmac_sha256_signs_the_raw_body_in_hex(
    daemon: Daemon, receiver: Receiver, header: str | None
) -> None:
    signature: dict[str, str] = {"scheme": "hmac-sha256"}
    if header:
        signature["header"] = header
    ep = await daemon.endpoint(receiver.url, secret=SECRET, signature=signature)
    assert ep["signature"]["header"] == (header or "X-Webhook-Signature")
    ev = await daemon.publish("call.completed", {"call_id": "c1", "caf\u00e9": "\u2713"})
    [req] = await receiver.wait_for(1)
    name = header or "X-Webhook-Signature"
    assert provider_hmac_ok(SECRET, req.body, req.headers[name])
    assert not provider_hmac_ok("another-secret-0123456", req.body, req.headers[name])
    assert "webhook-signature" not in req.headers
    assert req.headers["webhook-id"] == ev["id"]
    attempt = await only_attempt(daemon, ev["id"])
    assert attempt["request_headers"][name] == req.headers[name]


async def test_hmac_sha256_timestamped_signs_timestamp_dot_body(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(
        receiver.url, secret=SECRET, signature={"scheme": "hmac-sha256-timestamped"}
    )
    assert ep["signature"] == {
        "scheme": "hmac-sha256-timestamped",
        "header": "X-Webhook-Signature",
        "timestamp_header": "X-Webhook-Timestamp",
    }
    await daemon.publish("call.completed", {"n": 1})
    [req] = await receiver.wait_for(1)
    ts, sig = req.headers["X-Webhook-Timestamp"], req.headers["X-Webhook-Signature"]
    assert provider_timestamped_ok(SECRET, ts, req.body, sig)
    # The timestamp is part of what is signed: the body alone does not verify.
    assert not provider_hmac_ok(SECRET, req.body, sig)


async def test_token_scheme_sends_the_secret_and_logs_it_redacted(
    daemon: Daemon, receiver: Receiver
) -> None:
    await daemon.endpoint(
        receiver.url, secret=SECRET, signature={"scheme": "token", "header": "X-Api-Token"}
    )
    ev = await daemon.publish()
    [req] = await receiver.wait_for(1)
    assert hmac.compare_digest(req.headers["X-Api-Token"], SECRET)
    attempt = await only_attempt(daemon, ev["id"])
    assert attempt["request_headers"]["X-Api-Token"] == "[redacted]"
    assert SECRET not in json.dumps(attempt)
    assert SECRET not in daemon.log_text()


async def test_token_scheme_default_header(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, secret=SECRET, signature={"scheme": "token"})
    ev = await daemon.publish()
    [req] = await receiver.wait_for(1)
    assert req.headers["X-Webhook-Token"] == SECRET
    attempt = await only_attempt(daemon, ev["id"])
    assert attempt["request_headers"]["X-Webhook-Token"] == "[redacted]"


async def test_none_scheme_sends_no_signature(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, signature={"scheme": "none"})
    ev = await daemon.publish()
    [req] = await receiver.wait_for(1)
    lower = {k.lower() for k in req.headers}
    assert lower.isdisjoint(
        {"webhook-signature", "webhook-timestamp", "x-webhook-signature", "x-webhook-token"}
    )
    assert req.headers["webhook-id"] == ev["id"]


# --- a Flask receiver in its own process ----------------------------------------------

FLASK_APP = textwrap.dedent(
    '''
    """An Audian-style receiver, as a customer would write it from the provider's docs."""
    import hashlib
    import hmac
    import json
    import os
    import sys
    import time

    from flask import Flask, abort, request
    from werkzeug.serving import make_server

    SECRET = os.environ["AUDIAN_SECRET"]
    LOG = os.environ["AUDIAN_LOG"]
    app = Flask(__name__)


    @app.post("/webhooks/audian")
    def audian():
        timestamp = request.headers.get("x-audian-timestamp", "")
        signature = request.headers.get("x-audian-signature", "")
        raw = request.get_data()
        expected = hmac.new(
            SECRET.encode("utf-8"), f"{timestamp}.".encode() + raw, hashlib.sha256
        ).hexdigest()
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        ok = fresh and hmac.compare_digest(expected, signature)
        event = request.get_json(silent=True) or {}
        with open(LOG, "a") as f:
            f.write(json.dumps({"verified": ok, "id": event.get("id"),
                                "data": event.get("data")}) + "\\n")
        if not ok:
            abort(401)
        return {"received": event["id"]}


    server = make_server("127.0.0.1", int(sys.argv[1]), app)
    with open(LOG + ".ready", "w") as f:
        f.write(str(server.port))
    server.serve_forever()
    '''
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def flask_receiver(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    script = tmp_path / "audian_receiver.py"
    script.write_text(FLASK_APP)
    log = tmp_path / "audian.jsonl"
    ready = Path(str(log) + ".ready")
    env = {**os.environ, "AUDIAN_SECRET": SECRET, "AUDIAN_LOG": str(log)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(free_port())],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "flask.err", "wb"),  # noqa: SIM115 - handed to the child
    )
    try:

        def started() -> str | None:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "flask.err").read_text()[-2000:])
            return ready.read_text() if ready.exists() and ready.read_text() else None

        port = await wait_until(started, 15, "the Flask receiver to listen")
        yield f"http://127.0.0.1:{port}/webhooks/audian", log
    finally:
        proc.terminate()
        proc.wait(10)


def verified_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


async def test_flask_receiver_with_custom_header_names_verifies(
    daemon: Daemon, flask_receiver: tuple[str, Path]
) -> None:
    url, log = flask_receiver
    signature = {
        "scheme": "hmac-sha256-timestamped",
        "header": "x-audian-signature",
        "timestamp_header": "x-audian-timestamp",
    }
    good = await daemon.endpoint(url, secret=SECRET, signature=signature, events=["call.*"])
    # Same receiver, wrong secret: the receiver must refuse it (it really verifies).
    await daemon.endpoint(
        url, secret="not-the-audian-secret-42", signature=signature, events=["invoice.paid"]
    )
    ev = await daemon.publish("call.completed", {"call_id": "c-7", "seconds": 12})
    bad = await daemon.publish("invoice.paid", {"amount": 5})
    lines = await wait_until(lambda: len(verified_lines(log)) >= 2 and verified_lines(log))
    by_id = {line["id"]: line for line in lines}
    assert by_id[ev["id"]]["verified"] is True
    assert by_id[ev["id"]]["data"] == {"call_id": "c-7", "seconds": 12}
    assert by_id[bad["id"]]["verified"] is False
    attempt = await only_attempt(daemon, ev["id"])
    assert attempt["status_code"] == 200
    assert set(attempt["request_headers"]) >= {"x-audian-signature", "x-audian-timestamp"}
    r = await daemon.get(f"/v1/deliveries?event_id={bad['id']}")
    [d] = r.json["data"]
    full = await daemon.get(f"/v1/deliveries/{d['id']}")
    assert full.json["attempts"][0]["status_code"] == 401
    assert good["signature"] == signature
