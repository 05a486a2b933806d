"""A URL whose host is an IP address the address policy refuses is a 422 at create and at
update, naming security.allow_networks, in every spelling the address guard reads; names
are still checked only at connect time. With a real daemon process."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.conftest import Daemon, Receiver, wait_until

REFUSED = {
    # v4, v6, v4-mapped v6, and the numeric spellings browsers and libc accept.
    "http://10.0.0.1/hook": "10.0.0.1 (private)",
    "http://169.254.169.254/latest": "169.254.169.254 (link-local)",
    "http://[fd00::1]:8080/hook": "fd00::1 (unique-local)",
    "http://[fe80::1%25eth0]/hook": "link-local",
    "http://[::ffff:10.0.0.1]/hook": "::ffff:10.0.0.1 (ipv4-mapped private)",
    "http://167772161/hook": "10.0.0.1 (private)",  # decimal
    "http://0xa.1/hook": "10.0.0.1 (private)",  # hex and short form
    "http://012.0.0.1/hook": "10.0.0.1 (private)",  # octal
    "http://0/hook": "0.0.0.0 (unspecified)",
}


def _url_problem(r: Any) -> str:
    assert r.status == 422, r
    [detail] = r.json["detail"]
    assert detail["loc"] == ["body", "url"]
    msg: str = detail["msg"]
    return msg


@pytest.mark.parametrize(("url", "named"), REFUSED.items())
async def test_a_refused_ip_literal_is_a_422_at_create(
    daemon: Daemon, url: str, named: str
) -> None:
    msg = _url_problem(await daemon.post("/v1/endpoints", {"url": url}))
    assert named in msg
    assert "security.allow_networks" in msg
    assert (await daemon.get("/v1/endpoints")).json["data"] == []


async def test_allowed_networks_public_addresses_and_names_pass(daemon: Daemon) -> None:
    # The test config allows 127.0.0.0/8 and ::1/128; ::ffff:127.0.0.1 is the same place.
    for url in (
        "http://127.0.0.1:9/hook",
        "http://2130706433:9/hook",
        "http://[::1]:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://93.184.216.34/hook",  # public
        "http://[2606:2800:220:1::1]/hook",  # public v6
        "http://internal.example/hook",  # a name: checked when connecting, not now
    ):
        r = await daemon.post("/v1/endpoints", {"url": url})
        assert r.status == 201, (url, r)


async def test_a_refused_ip_literal_is_a_422_at_update(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    path = f"/v1/endpoints/{ep['id']}"
    msg = _url_problem(await daemon.patch(path, {"url": "http://[::ffff:192.168.1.1]/x"}))
    assert "::ffff:192.168.1.1" in msg and "security.allow_networks" in msg
    assert (await daemon.get(path)).json["url"] == receiver.url
    # Other fields of the endpoint can still change.
    r = await daemon.patch(path, {"description": "still here"})
    assert r.status == 200, r


async def test_an_endpoint_made_before_the_policy_tightened_is_refused_when_connecting(
    make_daemon: Any, receiver: Receiver
) -> None:
    d: Daemon = await make_daemon({"delivery": {"retry_schedule_s": []}})
    ep = await d.endpoint(receiver.url)  # 127.0.0.1, allowed for now
    d.config["security"] = {"https_only": False, "allow_networks": []}
    d.write_config()
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "event=reloaded" in d.log_text(True), 10, "the reload")
    published = await d.publish()
    [delivery] = (await d.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
    shown = await d.wait_status(delivery["id"], "failed")
    assert shown["attempts"][0]["error_kind"] == "blocked_address"
    assert receiver.received == []
    # The same URL given again is now refused up front.
    msg = _url_problem(await d.patch(f"/v1/endpoints/{ep['id']}", {"url": receiver.url}))
    assert "127.0.0.1 (loopback)" in msg
