"""Per-endpoint TLS end to end, through a real daemon: `tls.client_cert`/`tls.client_key`
(mutual TLS) and `tls.ca` (a private CA trusted for that endpoint instead of the system
store). The private key is write-only: shown as "[redacted]" and never logged, even at
debug level."""

from __future__ import annotations

from typing import Any

import trustme

from tests.conftest import Daemon, wait_until
from tests.test_connect import pem, tls_receiver

DEBUG = {"delivery": {"retry_schedule_s": []}, "log": {"level": "debug"}}


async def only_attempt(d: Daemon, endpoint_id: str, status: str) -> Any:
    async def finished() -> Any:
        r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}&status={status}")
        return r.json["data"]

    [dlv] = await wait_until(finished, 15, f"a {status} delivery")
    [attempt] = (await d.get(f"/v1/deliveries/{dlv['id']}")).json["attempts"]
    return attempt


def key_lines(key_pem: str) -> list[str]:
    """The base64 lines of a PEM key: none of them may show up anywhere."""
    return [line for line in key_pem.splitlines() if line and not line.startswith("-----")]


async def test_mutual_tls_with_the_endpoints_certificate_and_ca(make_daemon: Any) -> None:
    server_ca, client_ca = trustme.CA(), trustme.CA()
    client = client_ca.issue_cert("hooks.example", common_name="hooks.example")
    cert_pem, key_pem = pem(client.cert_chain_pems[0]), pem(client.private_key_pem)
    tls = {"client_cert": cert_pem, "client_key": key_pem, "ca": pem(server_ca.cert_pem)}
    d: Daemon = await make_daemon(DEBUG)
    async with tls_receiver(server_ca.issue_cert("127.0.0.1"), client_ca) as rx:
        url = f"https://127.0.0.1:{rx.port}/hook"
        ep = await d.endpoint(url, tls=tls)
        assert ep["tls"]["client_key"] == "[redacted]"
        ev = await d.publish(payload={"n": 1})
        attempt = await only_attempt(d, ep["id"], "delivered")
        # The same receiver refuses an endpoint that trusts it but brings no certificate.
        bare = await d.endpoint(url, tls={"ca": pem(server_ca.cert_pem)})
        await d.post(f"/v1/endpoints/{bare['id']}/test")
        refused = await only_attempt(d, bare["id"], "failed")
    assert attempt["status_code"] == 200
    assert len(rx.bodies) == 1 and ev["id"].encode() in rx.bodies[0]
    assert (("commonName", "hooks.example"),) in rx.peer_subjects[0]
    assert refused["error_kind"] in ("tls", "connection_reset"), refused
    shown = (await d.get(f"/v1/endpoints/{ep['id']}")).json["tls"]
    assert shown == {"client_cert": cert_pem, "client_key": "[redacted]", "ca": tls["ca"]}
    listed = (await d.get("/v1/endpoints")).body.decode()
    log = d.log_text()
    for line in key_lines(key_pem):
        assert line not in log
        assert line not in listed


async def test_a_private_ca_is_trusted_for_its_endpoint_only(make_daemon: Any) -> None:
    ca = trustme.CA()
    d: Daemon = await make_daemon(DEBUG)
    async with tls_receiver(ca.issue_cert("127.0.0.1")) as rx:
        url = f"https://127.0.0.1:{rx.port}/hook"
        trusting = await d.endpoint(url, tls={"ca": pem(ca.cert_pem)})
        plain = await d.endpoint(url)
        await d.publish()
        delivered = await only_attempt(d, trusting["id"], "delivered")
        refused = await only_attempt(d, plain["id"], "failed")
    assert delivered["status_code"] == 200
    assert refused["error_kind"] == "tls"
    assert len(rx.bodies) == 1
