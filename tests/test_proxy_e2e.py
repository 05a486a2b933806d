"""Forward proxies end to end, through a real daemon: an endpoint's `proxy` (CONNECT for
https), `delivery.proxy` in the config for every endpoint without one, and a proxy that is
down failing as error kind `proxy`. The proxy is the test's own (tests/test_connect.py)."""

from __future__ import annotations

import base64
import socket
from pathlib import Path
from typing import Any

import trustme

from tests.conftest import Daemon, Receiver, wait_until
from tests.test_connect import ForwardProxy, closed_port, port_of, tls_receiver
from tests.test_tls_e2e import trust_file

PASSWORD = "pr0xy-s3cret-pw"
QUIET = {"delivery": {"retry_schedule_s": []}, "log": {"level": "debug"}}


async def finished(d: Daemon, endpoint_id: str, status: str) -> Any:
    r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}&status={status}")
    return r.json["data"]


async def only_attempt(d: Daemon, endpoint_id: str, status: str) -> Any:
    [dlv] = await wait_until(lambda: finished(d, endpoint_id, status), 15, f"a {status} delivery")
    [attempt] = (await d.get(f"/v1/deliveries/{dlv['id']}")).json["attempts"]
    return attempt


async def test_an_endpoint_proxy_carries_https_through_connect(
    make_daemon: Any, tmp_path: Path
) -> None:
    ca = trustme.CA()
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", PASSWORD)).start()
    # delivery.proxy points nowhere: the endpoint's own proxy overrides it.
    dead = f"http://127.0.0.1:{closed_port(socket.AF_INET, '127.0.0.1')}"
    config = {**QUIET, "delivery": {"retry_schedule_s": [], "proxy": dead}}
    d: Daemon = await make_daemon(config, env=trust_file(ca, tmp_path))
    try:
        async with tls_receiver(ca.issue_cert("receiver.test")) as rx:
            ep = await d.endpoint(
                f"https://receiver.test:{rx.port}/hook", proxy=proxy.url(f"hooks:{PASSWORD}@")
            )
            ev = await d.publish(payload={"n": 1})
            attempt = await only_attempt(d, ep["id"], "delivered")
    finally:
        await proxy.stop()
    assert attempt["status_code"] == 200
    assert ev["id"].encode() in rx.bodies[0]
    [seen] = proxy.seen
    assert seen.request_line == f"CONNECT receiver.test:{rx.port} HTTP/1.1"
    token = base64.b64encode(f"hooks:{PASSWORD}".encode()).decode()
    assert seen.headers["proxy-authorization"] == f"Basic {token}"
    shown = (await d.get(f"/v1/endpoints/{ep['id']}")).json["proxy"]
    assert shown == f"http://hooks:[redacted]@127.0.0.1:{proxy.port}"
    assert PASSWORD not in d.log_text()


async def test_delivery_proxy_from_the_config_carries_plain_http(
    make_daemon: Any, receiver: Receiver
) -> None:
    proxy = await ForwardProxy(names={"receiver.test"}, credentials=("hooks", PASSWORD)).start()
    try:
        d: Daemon = await make_daemon({"delivery": {"proxy": proxy.url(f"hooks:{PASSWORD}@")}})
        url = f"http://receiver.test:{port_of(receiver.url)}/hook"
        ep = await d.endpoint(url)
        ev = await d.publish()
        attempt = await only_attempt(d, ep["id"], "delivered")
    finally:
        await proxy.stop()
    assert attempt["status_code"] == 200
    assert [s.request_line for s in proxy.seen] == [f"POST {url} HTTP/1.1"]
    token = base64.b64encode(f"hooks:{PASSWORD}".encode()).decode()
    assert proxy.seen[0].headers["proxy-authorization"] == f"Basic {token}"
    assert receiver.event_ids() == [ev["id"]]
    # The proxy's credentials are not part of the request the receiver got.
    assert "proxy-authorization" not in {k.lower() for k in attempt["request_headers"]}
    assert PASSWORD not in d.log_text()


async def test_a_proxy_that_is_down_gives_attempts_of_kind_proxy(make_daemon: Any) -> None:
    d: Daemon = await make_daemon(QUIET)
    port = closed_port(socket.AF_INET, "127.0.0.1")
    ep = await d.endpoint(
        "https://receiver.test/hook", proxy=f"http://hooks:{PASSWORD}@127.0.0.1:{port}"
    )
    await d.publish()
    attempt = await only_attempt(d, ep["id"], "failed")
    assert attempt["error_kind"] == "proxy"
    assert attempt["status_code"] is None
    assert f"127.0.0.1:{port}" in attempt["error_message"]
    assert PASSWORD not in attempt["error_message"]
    assert PASSWORD not in d.log_text()


async def test_a_proxy_refusing_connect_is_kind_proxy_not_the_receivers_answer(
    make_daemon: Any,
) -> None:
    proxy = await ForwardProxy(names={"receiver.test"}, answer=502).start()
    try:
        d: Daemon = await make_daemon(QUIET)
        ep = await d.endpoint("https://receiver.test:8443/hook", proxy=proxy.url())
        await d.publish()
        attempt = await only_attempt(d, ep["id"], "failed")
    finally:
        await proxy.stop()
    assert attempt["error_kind"] == "proxy"
    assert attempt["status_code"] is None
    assert "502" in attempt["error_message"]
