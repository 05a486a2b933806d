"""Ed25519 (`signature.algorithm: ed25519`): Standard Webhooks `v1a` signatures.

Receivers here verify with a verifier written from the Standard Webhooks specification
using `cryptography` alone and the public key the API gives, never with webhookd's code:
a daemon that signed wrongly, or a public key that did not match, fails these tests.
End to end through real daemons (both backends) to real aiohttp receivers and to a real
`webhookd listen` process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tests.conftest import Daemon, Receiver, wait_until
from tests.pg import BACKENDS
from tests.test_listen import free_port
from webhookd import signing

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]
ED25519 = {"scheme": "standard", "algorithm": "ed25519"}


# --- a receiver's verifier, from the Standard Webhooks spec -------------------------------


def v1a_signatures(headers: dict[str, str]) -> list[bytes]:
    sigs = {k.lower(): v for k, v in headers.items()}["webhook-signature"].split(" ")
    return [base64.b64decode(s.split(",", 1)[1]) for s in sigs if s.startswith("v1a,")]


def verifies(public_key: str, headers: dict[str, str], body: bytes) -> int:
    """How many `v1a` signatures of the request verify with `public_key` (whpk_…)."""
    assert public_key.startswith("whpk_")
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key[len("whpk_") :]))
    lower = {k.lower(): v for k, v in headers.items()}
    assert abs(int(lower["webhook-timestamp"]) - time.time()) < 300
    signed = f"{lower['webhook-id']}.{lower['webhook-timestamp']}.".encode() + body
    count = 0
    for signature in v1a_signatures(headers):
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            continue
        count += 1
    return count


def public_of(private_key: str) -> str:
    """The public key of a whsk_ key, as a receiver's own tooling would derive it."""
    seed = base64.b64decode(private_key[len("whsk_") :])
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return "whpk_" + base64.b64encode(raw).decode()


def new_private_key(size: int = 32) -> str:
    seed = Ed25519PrivateKey.generate().private_bytes_raw() if size == 32 else b"k" * size
    return "whsk_" + base64.b64encode(seed).decode()


async def verifying_receiver(make_receiver: MakeReceiver, public_key: str) -> Receiver:
    """A receiver that answers 200 only to requests that verify with `public_key`."""

    async def answer(request: web.Request, body: bytes) -> web.Response:
        ok = verifies(public_key, dict(request.headers), body) > 0
        return web.Response(status=200 if ok else 401)

    return await make_receiver(responder=answer)


async def delivered(d: Daemon, event_id: str) -> dict[str, Any]:
    [dlv] = (await d.get(f"/v1/deliveries?event_id={event_id}")).json["data"]
    return await d.wait_status(dlv["id"], "delivered", timeout=15)


# --- end to end ---------------------------------------------------------------------------


@BOTH
async def test_a_receiver_verifies_with_the_public_key_alone(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    rx = await make_receiver()  # the URL first: the key exists once the endpoint does
    ep = await d.endpoint(rx.url, signature=ED25519)
    assert ep["signature"] == ED25519
    assert ep["secret"].startswith("whsk_") and len(base64.b64decode(ep["secret"][5:])) == 32
    assert ep["public_key"] == public_of(ep["secret"])
    secret = (await d.get(f"/v1/endpoints/{ep['id']}/secret")).json
    assert secret == {
        "secret": ep["secret"],
        "public_key": ep["public_key"],
        "previous_secrets": [],
    }
    public_key = secret["public_key"]

    good = await verifying_receiver(make_receiver, public_key)
    r = await d.patch(f"/v1/endpoints/{ep['id']}", {"url": good.url})
    assert r.status == 200 and r.json["signature"] == ED25519, r
    ev = await d.publish("call.completed", {"call_id": "c-1"})
    shown = await delivered(d, ev["id"])
    [req] = good.received
    assert verifies(public_key, req.headers, req.body) == 1
    # One v1a signature and no HMAC one; a changed body or id does not verify.
    assert (
        req.headers["webhook-signature"].startswith("v1a,")
        and " " not in req.headers["webhook-signature"].strip()
    )
    assert verifies(public_key, req.headers, req.body.replace(b"c-1", b"c-2")) == 0
    assert verifies(public_key, {**req.headers, "webhook-id": "evt_other"}, req.body) == 0
    # The log shows what was sent, the signature included.
    [attempt] = shown["attempts"]
    assert attempt["status_code"] == 200
    assert attempt["request_headers"]["webhook-signature"] == req.headers["webhook-signature"]


@BOTH
async def test_rotation_signs_with_both_keys_during_the_grace_then_the_new_one_only(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    rx = await make_receiver()
    ep = await d.endpoint(rx.url, signature=ED25519)
    old_key = ep["public_key"]
    r = await d.post(f"/v1/endpoints/{ep['id']}/secret/rotate", {"grace_s": 2})
    assert r.status == 200, r
    assert set(r.json) == {"secret", "public_key"} and r.json["secret"].startswith("whsk_")
    new_key = r.json["public_key"]
    assert new_key == public_of(r.json["secret"]) and new_key != old_key
    shown = (await d.get(f"/v1/endpoints/{ep['id']}/secret")).json
    assert shown["public_key"] == new_key
    [previous] = shown["previous_secrets"]
    assert previous["public_key"] == old_key and set(previous) == {"expires_at", "public_key"}

    ev = await d.publish("call.completed", {"n": 1})
    await delivered(d, ev["id"])
    [req] = rx.received
    assert len(v1a_signatures(req.headers)) == 2
    assert verifies(new_key, req.headers, req.body) == 1
    assert verifies(old_key, req.headers, req.body) == 1

    async def grace_over() -> bool:
        r = await d.get(f"/v1/endpoints/{ep['id']}/secret")
        return not r.json["previous_secrets"]

    await wait_until(grace_over, 10, "the end of the grace period")
    ev = await d.publish("call.completed", {"n": 2})
    await delivered(d, ev["id"])
    req = rx.received[-1]
    assert len(v1a_signatures(req.headers)) == 1
    assert verifies(new_key, req.headers, req.body) == 1
    assert verifies(old_key, req.headers, req.body) == 0


@BOTH
async def test_switching_algorithms_is_a_rotation_and_both_kinds_sign_during_its_grace(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, backend: str
) -> None:
    d = await make_daemon()
    rx = await make_receiver()
    ep = await d.endpoint(rx.url)
    assert ep["signature"] == {"scheme": "standard", "algorithm": "hmac-sha256"}
    assert "public_key" not in ep
    path = f"/v1/endpoints/{ep['id']}"
    # A PATCH cannot change the secret, so it cannot change its kind: it says to rotate.
    r = await d.patch(path, {"signature": ED25519})
    assert r.status == 422, r
    [problem] = r.json["detail"]
    assert problem["loc"] == ["body", "signature", "algorithm"]
    assert f"/v1/endpoints/{ep['id']}/secret/rotate" in problem["msg"]
    assert (await d.get(path)).json["signature"]["algorithm"] == "hmac-sha256"

    r = await d.post(f"{path}/secret/rotate", {"algorithm": "ed25519", "grace_s": 60})
    assert r.status == 200 and r.json["secret"].startswith("whsk_"), r
    public_key = r.json["public_key"]
    assert (await d.get(path)).json["signature"] == ED25519
    # The signature object stays as it is when a PATCH leaves the algorithm out.
    r = await d.patch(path, {"signature": {"scheme": "standard"}, "description": "x"})
    assert r.status == 200 and r.json["signature"] == ED25519, r
    # Leaving the standard scheme would hand the private key to the receiver.
    r = await d.patch(path, {"signature": {"scheme": "token"}})
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "signature", "scheme"]

    ev = await d.publish("call.completed", {"n": 1})
    await delivered(d, ev["id"])
    [req] = rx.received
    kinds = sorted(s.split(",")[0] for s in req.headers["webhook-signature"].split(" "))
    assert kinds == ["v1", "v1a"]
    assert verifies(public_key, req.headers, req.body) == 1
    # The old whsec_ secret's v1 signature still verifies, as an HMAC receiver checks it.
    key = base64.b64decode(ep["secret"][len("whsec_") :])
    signed = f"{req.headers['webhook-id']}.{req.headers['webhook-timestamp']}.".encode() + req.body
    v1 = base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode()
    assert f"v1,{v1}" in req.headers["webhook-signature"].split(" ")

    r = await d.post(f"{path}/secret/rotate", {"algorithm": "hmac-sha256", "grace_s": 0})
    assert r.status == 200 and set(r.json) == {"secret"} and r.json["secret"].startswith("whsec_")
    assert (await d.get(path)).json["signature"] == {
        "scheme": "standard",
        "algorithm": "hmac-sha256",
    }
    r = await d.patch(path, {"signature": {"scheme": "token"}})
    assert r.status == 200, r


# --- validation ---------------------------------------------------------------------------


async def test_a_supplied_key_is_used_and_bad_keys_or_combinations_are_refused(
    daemon: Daemon, receiver: Receiver
) -> None:
    mine = new_private_key()
    ep = await daemon.endpoint(receiver.url, signature=ED25519, secret=mine)
    assert ep["secret"] == mine and ep["public_key"] == public_of(mine)
    # A whsk_ key given without an algorithm means ed25519, as with Svix.
    other = new_private_key()
    ep2 = await daemon.endpoint(receiver.url, secret=other)
    assert ep2["signature"] == ED25519 and ep2["public_key"] == public_of(other)
    await daemon.publish("call.completed", {"n": 1})
    await receiver.wait_for(2)
    for req in receiver.received:
        assert (
            verifies(public_of(mine), req.headers, req.body)
            + verifies(public_of(other), req.headers, req.body)
            == 1
        )

    bad_keys = {
        "whsk_not*base64": "must be base64",
        new_private_key(31): "got 31",
        new_private_key(64): "got 64",
        "whsec_" + base64.b64encode(b"k" * 32).decode(): "starts with whsk_",
    }
    for key, reason in bad_keys.items():
        r = await daemon.post(
            "/v1/endpoints", {"url": receiver.url, "signature": ED25519, "secret": key}
        )
        assert r.status == 422, (key, r)
        [problem] = r.json["detail"]
        assert problem["loc"] == ["body", "secret"] and reason in problem["msg"], problem
        assert key not in r.body.decode() and key[5:] not in r.body.decode()
        rotate = {"secret": key, "algorithm": "ed25519"}
        r = await daemon.post(f"/v1/endpoints/{ep['id']}/secret/rotate", rotate)
        assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "secret"], r
    # A whsk_ key is not an HMAC secret.
    r = await daemon.post(
        "/v1/endpoints",
        {
            "url": receiver.url,
            "signature": {"scheme": "standard", "algorithm": "hmac-sha256"},
            "secret": mine,
        },
    )
    assert r.status == 422 and "signature.algorithm ed25519" in r.json["detail"][0]["msg"], r

    for signature, loc in (
        ({"scheme": "hmac-sha256", "algorithm": "ed25519"}, ["body", "signature", "algorithm"]),
        ({"scheme": "token", "algorithm": "hmac-sha256"}, ["body", "signature", "algorithm"]),
        ({"scheme": "standard", "algorithm": "rsa"}, ["body", "signature", "algorithm"]),
        ({"scheme": "standard", "algorithm": 1}, ["body", "signature", "algorithm"]),
    ):
        r = await daemon.post("/v1/endpoints", {"url": receiver.url, "signature": signature})
        assert r.status == 422, (signature, r)
        assert [p["loc"] for p in r.json["detail"]] == [loc], r
    plain = await daemon.endpoint(receiver.url, signature={"scheme": "hmac-sha256"})
    r = await daemon.post(f"/v1/endpoints/{plain['id']}/secret/rotate", {"algorithm": "ed25519"})
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "algorithm"], r


async def test_the_private_key_shows_only_in_the_documented_places(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url, signature=ED25519)
    private, public = ep["secret"], ep["public_key"]
    r = await daemon.post(f"/v1/endpoints/{ep['id']}/secret/rotate", {"grace_s": 60})
    rotated = r.json["secret"]
    ev = await daemon.publish("call.completed", {"n": 1})
    await delivered(daemon, ev["id"])
    shown: list[str] = []
    for path in (
        f"/v1/endpoints/{ep['id']}",
        "/v1/endpoints",
        f"/v1/deliveries?event_id={ev['id']}",
        f"/v1/events/{ev['id']}",
    ):
        shown.append((await daemon.get(path)).body.decode())
    [dlv] = (await daemon.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
    shown.append((await daemon.get(f"/v1/deliveries/{dlv['id']}")).body.decode())
    shown.append(daemon.log_text())
    for key in (private, rotated):
        seed = key[len("whsk_") :]
        assert all(seed not in text for text in shown)
    assert "public_key" not in shown[0]  # the endpoint itself: neither key
    secret = (await daemon.get(f"/v1/endpoints/{ep['id']}/secret")).json
    assert secret["secret"] == rotated and secret["previous_secrets"][0]["public_key"] == public


def test_each_secret_signs_by_its_own_kind() -> None:
    hmac_secret, key = signing.generate_secret(), signing.generate_secret("ed25519")
    spec = signing.SignatureSpec(algorithm="ed25519")
    headers = signing.sign(spec, [key, hmac_secret], "evt_1", int(time.time()), b"{}")
    first, second = headers["webhook-signature"].split(" ")
    assert first.startswith("v1a,") and second.startswith("v1,")
    assert verifies(public_of(key), headers, b"{}") == 1
    assert signing.verify_standard(hmac_secret, headers, b"{}")


# --- webhookd listen --public-key ---------------------------------------------------------


def _listen(out_path: Path, *args: str) -> subprocess.Popen[bytes]:
    with open(out_path, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "webhookd", "listen", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_listen_with_the_public_key_accepts_good_requests_and_401s_tampered_ones(
    daemon: Daemon, tmp_path: Path
) -> None:
    port = free_port()
    ep = await daemon.endpoint(f"http://127.0.0.1:{port}/", signature=ED25519)
    out_path = tmp_path / "listen.out"
    proc = _listen(out_path, "--port", str(port), "--public-key", ep["public_key"])
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        ev = await daemon.publish("call.completed", {"call_id": "c-9"})
        shown = await delivered(daemon, ev["id"])
        assert "signature OK (standard, ed25519 v1a)" in out_path.read_text()
        # The same request with its body changed: refused.
        sent = shown["attempts"][0]["request_headers"]
        headers = {k: v for k, v in sent.items() if k.lower().startswith("webhook-")}
        async with aiohttp.ClientSession() as s:
            body = b'{"type":"call.completed","data":{"call_id":"c-10"}}'
            async with s.post(f"http://127.0.0.1:{port}/", data=body, headers=headers) as resp:
                assert resp.status == 401
        assert "signature INVALID (standard, ed25519 v1a)" in out_path.read_text()
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


async def test_listen_with_another_public_key_401s_and_the_delivery_is_retried(
    daemon: Daemon, tmp_path: Path
) -> None:
    port = free_port()
    await daemon.endpoint(f"http://127.0.0.1:{port}/", signature=ED25519)
    out_path = tmp_path / "listen.out"
    proc = _listen(out_path, "--port", str(port), "--public-key", public_of(new_private_key()))
    try:
        await wait_until(lambda: b"listening on" in out_path.read_bytes(), 20, "listen to start")
        ev = await daemon.publish("call.completed", {"x": 1})
        [dlv] = (await daemon.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"]
        shown = await daemon.wait_status(dlv["id"], "failed", timeout=20)
        assert [a["status_code"] for a in shown["attempts"]] == [401, 401, 401]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_listen_refuses_a_bad_public_key_at_start() -> None:
    good = public_of(new_private_key())
    for args, reason in (
        (["--public-key", "whpk_short"], "must be base64"),
        (["--public-key", "whpk_" + base64.b64encode(b"x" * 31).decode()], "got 31"),
        (["--public-key", new_private_key()], "starts with whpk_"),
        (["--public-key", good, "--scheme", "hmac-sha256"], "standard scheme only"),
        (["--public-key", good, "--secret", "whsec_" + "A" * 43 + "="], "not allowed with"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "webhookd", "listen", "--port", "1", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 2, (args, result)
        assert reason in result.stderr, (args, result.stderr)


# --- the console --------------------------------------------------------------------------


async def test_the_console_creates_ed25519_endpoints_and_shows_the_public_key(
    daemon: Daemon,
) -> None:
    from tests.console_client import ConsoleClient

    c = ConsoleClient(daemon.base)
    try:
        new = await c.get("/console/endpoints/new")
        assert 'name="algorithm"' in new.text
        form = {"url": "http://127.0.0.1:9/h", "events": "*", "scheme": "standard"}
        form |= {"algorithm": "ed25519", "format": "json", "delay_s": "0"}
        r = await c.post("/console/endpoints", form, csrf=new.csrf())
        assert r.status == 303, r.text
        ep_id = r.headers["Location"].split("/")[-1].split("?")[0]
        secret = (await daemon.get(f"/v1/endpoints/{ep_id}/secret")).json
        assert secret["secret"].startswith("whsk_")
        page = await c.get(f"/console/endpoints/{ep_id}")
        shown = re.search(r'id="public-key" data-test="public-key">([^<]+)<', page.text)
        assert shown is not None and shown.group(1) == secret["public_key"]
        assert 'data-copy="public-key"' in page.text and "(ed25519)" in page.text
        assert secret["secret"][5:] not in page.text
        # Rotating in the console makes a key of the same kind; editing keeps the algorithm.
        r = await c.post(f"/console/endpoints/{ep_id}/rotate", {"grace_s": "0"}, csrf=page.csrf())
        assert r.status == 303
        rotated = (await daemon.get(f"/v1/endpoints/{ep_id}/secret")).json
        assert rotated["secret"].startswith("whsk_") and rotated["public_key"] != shown.group(1)
        edit = await c.get(f"/console/endpoints/{ep_id}/edit")
        form = {"url": "http://127.0.0.1:9/other", "events": "*", "scheme": "standard"}
        form |= {"format": "json", "delay_s": "0"}
        r = await c.post(f"/console/endpoints/{ep_id}/edit", form, csrf=edit.csrf())
        assert r.status == 303, r.text
        got = (await daemon.get(f"/v1/endpoints/{ep_id}")).json
        assert got["url"].endswith("/other") and got["signature"] == ED25519
    finally:
        await c.close()


# --- the command line ---------------------------------------------------------------------


async def test_the_cli_sets_the_algorithm_and_shows_the_public_key(
    daemon: Daemon, receiver: Receiver
) -> None:
    from tests.test_cli_client import field, ok, ok_json

    created = await ok_json(daemon, "endpoints", "create", receiver.url, "--algorithm", "ed25519")
    assert created["signature"] == ED25519 and created["public_key"] == public_of(created["secret"])
    out = await ok(daemon, "endpoints", "secret", created["id"])
    assert field(out, "public key") == created["public_key"]
    out = await ok(
        daemon, "endpoints", "rotate-secret", created["id"], "--algorithm", "hmac-sha256"
    )
    assert field(out, "new secret").startswith("whsec_") and "public key" not in out
    out = await ok(daemon, "endpoints", "secret", created["id"])
    assert f"  its public key: {created['public_key']}\n" in out  # the old key, in its grace
    shown = await ok_json(daemon, "endpoints", "show", created["id"])
    assert shown["signature"] == {"scheme": "standard", "algorithm": "hmac-sha256"}
