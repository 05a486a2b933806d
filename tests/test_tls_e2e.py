"""https endpoints end to end: the daemon verifies certificates against the trust store
it is given (OpenSSL's SSL_CERT_FILE), with the host name checked. All on 127.0.0.1."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trustme
from aiohttp import web

from tests.conftest import Daemon, wait_until

ALLOW_LOOPBACK = {
    "security": {"allow_networks": ["127.0.0.0/8"]},  # https_only stays on
    "delivery": {"retry_schedule_s": []},
}


@contextlib.asynccontextmanager
async def https_receiver(cert: trustme.LeafCert) -> AsyncIterator[tuple[int, list[bytes]]]:
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(text="ok")

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
    try:
        yield runner.addresses[0][1], bodies
    finally:
        await runner.cleanup()


def trust_file(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return {"SSL_CERT_FILE": str(path), "SSL_CERT_DIR": str(tmp_path / "no-such-dir")}


async def deliveries(d: Daemon, endpoint_id: str, status: str) -> Any:
    r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}&status={status}")
    return r.json["data"]


async def failed_attempt(d: Daemon, cert: trustme.LeafCert) -> tuple[Any, list[bytes]]:
    """Publish to https://localhost with `cert` until the delivery fails; its one attempt,
    and what the receiver got."""
    async with https_receiver(cert) as (port, bodies):
        ep = await d.endpoint(f"https://localhost:{port}/hook")
        await d.publish()
        [dlv] = await wait_until(lambda: deliveries(d, ep["id"], "failed"), 15)
    return (await d.get(f"/v1/deliveries/{dlv['id']}")).json["attempts"][0], bodies


async def test_https_endpoint_with_a_trusted_certificate(make_daemon: Any, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d: Daemon = await make_daemon(ALLOW_LOOPBACK, env=trust_file(ca, tmp_path))
    async with https_receiver(cert) as (port, bodies):
        ep = await d.endpoint(f"https://localhost:{port}/hook")
        ev = await d.publish(payload={"n": 1})
        await wait_until(lambda: bodies, 15, "the https delivery")
        [dlv] = await wait_until(lambda: deliveries(d, ep["id"], "delivered"), 15)
    assert ev["id"].encode() in bodies[0]
    full = (await d.get(f"/v1/deliveries/{dlv['id']}")).json
    assert full["attempts"][0]["status_code"] == 200


async def test_https_endpoint_with_an_untrusted_certificate_fails_as_tls(
    make_daemon: Any, tmp_path: Path
) -> None:
    other_ca = trustme.CA()
    cert = trustme.CA().issue_cert("localhost")  # signed by a CA the daemon does not trust
    d: Daemon = await make_daemon(ALLOW_LOOPBACK, env=trust_file(other_ca, tmp_path))
    attempt, bodies = await failed_attempt(d, cert)
    assert attempt["error_kind"] == "tls", attempt
    assert attempt["status_code"] is None
    assert "certificate" in attempt["error_message"].lower()
    assert bodies == []


async def test_https_certificate_for_another_host_name_fails_as_tls(
    make_daemon: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("service.example")  # valid, trusted, but not for localhost
    d: Daemon = await make_daemon(ALLOW_LOOPBACK, env=trust_file(ca, tmp_path))
    attempt, bodies = await failed_attempt(d, cert)
    assert attempt["error_kind"] == "tls", attempt
    assert bodies == []
