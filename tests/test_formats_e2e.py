"""Body formats, the format fallback chain and custom headers, against real receivers.

The receivers parse bodies the way a customer's framework does: urllib for form bodies,
werkzeug (Flask's parser) for multipart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import pytest
from aiohttp import web
from werkzeug.wrappers import Request as WerkzeugRequest

from tests.conftest import Daemon, Receiver

PAYLOAD: dict[str, Any] = {
    "call_id": "c-1",
    "note": "caf\u00e9 & co = 100%\nsecond line",
    'say "hi"': "quoted key",
    "seconds": 42,
    "ratio": 0.5,
    "big": 12345678901234567890123,
    "ok": True,
    "missed": False,
    "tag": None,
    "caller": {"name": "Ann", "tags": ["a", "b"]},
    "legs": [1, {"x": None}],
    "empty": "",
}
EXPECTED: dict[str, str] = {
    "call_id": "c-1",
    "note": "caf\u00e9 & co = 100%\nsecond line",
    'say "hi"': "quoted key",
    "seconds": "42",
    "ratio": "0.5",
    "big": "12345678901234567890123",
    "ok": "true",
    "missed": "false",
    "tag": "",
    "empty": "",
}
JSON_TEXT = ("caller", "legs")

MakeReceiver = Callable[..., Awaitable[Receiver]]


def parse_form(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(body.decode("ascii"), keep_blank_values=True, strict_parsing=True)


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str]]:
    environ = {
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": content_type,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
    }
    return list(WerkzeugRequest(environ).form.items(multi=True))


def check_fields(fields: list[tuple[str, str]]) -> None:
    assert [k for k, _ in fields] == list(PAYLOAD)
    got = dict(fields)
    for key, text in EXPECTED.items():
        assert got[key] == text, key
    for key in JSON_TEXT:
        assert json.loads(got[key]) == PAYLOAD[key], key


async def delivery_of(daemon: Daemon, event_id: str) -> str:
    r = await daemon.get(f"/v1/deliveries?event_id={event_id}")
    [d] = r.json["data"]
    return d["id"]  # type: ignore[no-any-return]


async def test_json_body_is_the_envelope(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, format="json")
    ev = await daemon.publish("call.completed", PAYLOAD)
    [req] = await receiver.wait_for(1)
    assert req.headers["Content-Type"] == "application/json"
    assert json.loads(req.body) == {
        "id": ev["id"],
        "type": "call.completed",
        "timestamp": ev["created_at"],
        "data": PAYLOAD,
    }


async def test_form_body_has_one_field_per_payload_key(daemon: Daemon, receiver: Receiver) -> None:
    await daemon.endpoint(receiver.url, format="form")
    ev = await daemon.publish("call.completed", PAYLOAD)
    [req] = await receiver.wait_for(1)
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    check_fields(parse_form(req.body))
    full = await daemon.wait_status(await delivery_of(daemon, ev["id"]), "delivered")
    assert [a["format"] for a in full["attempts"]] == ["form"]


async def test_multipart_body_has_one_part_per_payload_key(
    daemon: Daemon, receiver: Receiver
) -> None:
    await daemon.endpoint(receiver.url, format="multipart")
    ev = await daemon.publish("call.completed", PAYLOAD)
    [req] = await receiver.wait_for(1)
    ctype = req.headers["Content-Type"]
    assert ctype.startswith("multipart/form-data; boundary=")
    check_fields(parse_multipart(req.body, ctype))
    full = await daemon.wait_status(await delivery_of(daemon, ev["id"]), "delivered")
    assert [a["format"] for a in full["attempts"]] == ["multipart"]


async def test_form_and_multipart_carry_the_signature_over_the_sent_bytes(
    daemon: Daemon, make_receiver: MakeReceiver
) -> None:
    for fmt in ("form", "multipart"):
        recv = await make_receiver()
        ep = await daemon.endpoint(recv.url, format=fmt)
        await daemon.publish("call.completed", {"a": "1"})
        [req] = await recv.wait_for(1)
        # Standard Webhooks, verified by hand (the library's verify() also parses JSON).
        key = base64.b64decode(ep["secret"].removeprefix("whsec_"))
        signed = f"{req.headers['webhook-id']}.{req.headers['webhook-timestamp']}.".encode()
        digest = hmac.new(key, signed + req.body, hashlib.sha256).digest()
        expected = "v1," + base64.b64encode(digest).decode()
        assert any(
            hmac.compare_digest(expected, candidate)
            for candidate in req.headers["webhook-signature"].split(" ")
        )
        await daemon.delete(f"/v1/endpoints/{ep['id']}")


async def test_fallback_chain_tries_the_next_format_at_once(
    make_daemon: Callable[..., Awaitable[Daemon]], receiver: Receiver
) -> None:
    # A long first retry delay: the fallback attempt must not wait for it.
    daemon = await make_daemon({"delivery": {"retry_schedule_s": [30, 30]}})

    def only_multipart(request: web.Request, body: bytes) -> web.Response:
        if request.content_type == "multipart/form-data":
            fields = parse_multipart(body, request.headers["Content-Type"])
            return web.Response(status=200 if dict(fields).get("n") == "1" else 400)
        return web.Response(status=415, text="send multipart")

    receiver.responder = only_multipart
    await daemon.endpoint(receiver.url, format=["form", "multipart"])
    started = time.monotonic()
    ev = await daemon.publish("call.completed", {"n": 1})
    full = await daemon.wait_status(await delivery_of(daemon, ev["id"]), "delivered", 10)
    assert time.monotonic() - started < 10
    assert [a["format"] for a in full["attempts"]] == ["form", "multipart"]
    assert [a["status_code"] for a in full["attempts"]] == [415, 200]
    assert full["attempt_count"] == 2
    assert [r.headers["Content-Type"].split(";")[0] for r in receiver.received] == [
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ]
    # "At once": far sooner than the 30 s first retry delay.
    assert receiver.received[1].at - receiver.received[0].at < 5


async def test_fallback_chain_keeps_the_last_format_for_scheduled_retries(
    daemon: Daemon, receiver: Receiver
) -> None:
    receiver.default = 500
    await daemon.endpoint(receiver.url, format=["form", "multipart"])
    ev = await daemon.publish("call.completed", {"n": 1})
    full = await daemon.wait_status(await delivery_of(daemon, ev["id"]), "failed", 15)
    # The fallback hop is not counted against the schedule [0.2, 0.4]: 1 + 1 + 2 attempts.
    assert [a["format"] for a in full["attempts"]] == [
        "form",
        "multipart",
        "multipart",
        "multipart",
    ]
    assert full["attempt_count"] == 4
    at = [r.at for r in receiver.received]
    gaps = [b - a for a, b in itertools.pairwise(at)]
    assert gaps[1] >= 0.18 and gaps[2] >= 0.38, gaps


# --- custom headers -------------------------------------------------------------------


async def test_custom_headers_are_sent_and_logged(daemon: Daemon, receiver: Receiver) -> None:
    headers = {"Authorization": "Bearer partner-key", "X-Account": "acct_42"}
    ep = await daemon.endpoint(receiver.url, headers=headers)
    assert ep["headers"] == headers
    ev = await daemon.publish()
    [req] = await receiver.wait_for(1)
    assert req.headers["Authorization"] == "Bearer partner-key"
    assert req.headers["X-Account"] == "acct_42"
    full = await daemon.wait_status(await delivery_of(daemon, ev["id"]), "delivered")
    sent = full["attempts"][0]["request_headers"]
    assert sent["X-Account"] == "acct_42"
    # PATCH replaces them for later deliveries.
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"headers": {"X-Account": "acct_43"}})
    assert r.status == 200, r
    await daemon.publish()
    reqs = await receiver.wait_for(2)
    assert reqs[1].headers["X-Account"] == "acct_43"
    assert "Authorization" not in reqs[1].headers


@pytest.mark.parametrize(
    ("signature", "headers"),
    [
        (None, {"X-Note": "line\r\nX-Injected: 1"}),
        (None, {"X-Note": "line\nbreak"}),
        (None, {"Content-Type": "text/plain"}),
        (None, {"content-length": "1"}),
        (None, {"Host": "evil.example"}),
        (None, {"webhook-signature": "v1,forged"}),
        (None, {"Webhook-Timestamp": "1"}),
        ({"scheme": "hmac-sha256"}, {"X-Webhook-Signature": "forged"}),
        ({"scheme": "hmac-sha256", "header": "X-Sig"}, {"x-sig": "forged"}),
        (
            {"scheme": "hmac-sha256-timestamped", "header": "x-audian-signature"},
            {"X-Webhook-Timestamp": "1"},
        ),
        (
            {
                "scheme": "hmac-sha256-timestamped",
                "header": "x-audian-signature",
                "timestamp_header": "x-audian-timestamp",
            },
            {"X-Audian-Timestamp": "1"},
        ),
        ({"scheme": "token"}, {"X-Webhook-Token": "other"}),
        ({"scheme": "token", "header": "X-Api-Key"}, {"x-api-key": "other"}),
    ],
)
async def test_reserved_or_unsafe_headers_are_refused(
    daemon: Daemon, signature: dict[str, str] | None, headers: dict[str, str]
) -> None:
    body: dict[str, Any] = {"url": "http://127.0.0.1:9/hook", "headers": headers}
    if signature is not None:
        body["signature"] = signature
        body["secret"] = "a-long-enough-secret-1234"
    r = await daemon.post("/v1/endpoints", body)
    assert r.status == 422, r
    assert r.json["error"] == "validation_error"
    [name] = headers
    assert ["body", "headers", name] in [d["loc"] for d in r.json["detail"]]
    # Nothing was created.
    listed = await daemon.get("/v1/endpoints")
    assert listed.json["data"] == []


async def test_patching_headers_or_scheme_cannot_clash(daemon: Daemon) -> None:
    ep = await daemon.endpoint(
        "http://127.0.0.1:9/hook",
        secret="a-long-enough-secret-1234",
        signature={"scheme": "hmac-sha256"},
        headers={"X-Sig": "custom"},
    )
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"headers": {"x-webhook-signature": "1"}})
    assert r.status == 422, r
    r = await daemon.patch(
        f"/v1/endpoints/{ep['id']}", {"signature": {"scheme": "hmac-sha256", "header": "X-Sig"}}
    )
    assert r.status == 422, r
    assert r.json["detail"][0]["loc"][:2] == ["body", "signature"]
    r = await daemon.get(f"/v1/endpoints/{ep['id']}")
    assert r.json["headers"] == {"X-Sig": "custom"}
    assert r.json["signature"]["header"] == "X-Webhook-Signature"
