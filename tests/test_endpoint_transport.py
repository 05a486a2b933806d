"""The endpoint fields `proxy` and `tls` and the config key `delivery.proxy`, end to end:
through a real daemon's API, its SQLite file, its log, the command line and a delivery."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from tests.conftest import ROOT, Daemon, Receiver, wait_until
from webhookd.config import ConfigError, config_from_mapping
from webhookd.store.sqlite import SQLiteStore
from webhookd.store.sqlite.migrations import MIGRATIONS

MakeDaemon = Callable[..., Awaitable[Daemon]]
REDACTED = "[redacted]"

_CA = trustme.CA()
_CLIENT = _CA.issue_cert("client.example")
CERT = _CLIENT.cert_chain_pems[0].bytes().decode()
KEY = _CLIENT.private_key_pem.bytes().decode()
CA = _CA.cert_pem.bytes().decode()
OTHER_KEY = _CA.issue_cert("other.example").private_key_pem.bytes().decode()
ENCRYPTED_KEY = (
    load_pem_private_key(KEY.encode(), None)
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass phrase"),
    )
    .decode()
)
# A line from the middle of each key: what must never be shown or logged.
KEY_LINE = KEY.splitlines()[2]
OTHER_KEY_LINE = OTHER_KEY.splitlines()[2]
PASSWORD = "pr0xy-pa55word"


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stored(d: Daemon, endpoint_id: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy and tls columns as the daemon wrote them to its SQLite file."""
    with sqlite3.connect(d.config["database"]) as conn:
        row = conn.execute("SELECT proxy, tls FROM endpoints WHERE id=?", (endpoint_id,)).fetchone()
    return row[0], (json.loads(row[1]) if row[1] is not None else None)


def assert_redacted(answer: dict[str, Any], user: str = "ops") -> None:
    assert answer["proxy"] == f"http://{user}:{REDACTED}@127.0.0.1:3128"
    assert answer["tls"] == {"client_cert": CERT, "client_key": REDACTED, "ca": CA}
    text = json.dumps(answer)
    assert PASSWORD not in text and KEY_LINE not in text


# --- the API ------------------------------------------------------------------------------


async def test_create_get_list_patch_redact_the_secrets(daemon: Daemon, receiver: Receiver) -> None:
    proxy = f"http://ops:{PASSWORD}@127.0.0.1:3128"
    tls = {"client_cert": CERT, "client_key": KEY, "ca": CA}
    created = await daemon.endpoint(receiver.url, proxy=proxy, tls=tls)
    assert_redacted(created)
    ep_id = created["id"]
    assert stored(daemon, ep_id) == (proxy, tls)

    got = await daemon.get(f"/v1/endpoints/{ep_id}")
    assert got.status == 200
    assert_redacted(got.json)
    listed = await daemon.get("/v1/endpoints")
    [item] = [e for e in listed.json["data"] if e["id"] == ep_id]
    assert_redacted(item)

    # GET, edit, PATCH back: [redacted] keeps the stored key and password.
    edited = {**got.json["tls"], "ca": CA + CA}
    r = await daemon.patch(
        f"/v1/endpoints/{ep_id}", {"tls": edited, "proxy": got.json["proxy"], "description": "x"}
    )
    assert r.status == 200, r
    assert r.json["tls"]["client_key"] == REDACTED and r.json["tls"]["ca"] == CA + CA
    assert r.json["proxy"] == got.json["proxy"]
    assert stored(daemon, ep_id) == (proxy, {**tls, "ca": CA + CA})

    # A new password and key replace the stored ones; the answer still hides them.
    r = await daemon.patch(
        f"/v1/endpoints/{ep_id}",
        {"proxy": "http://ops:other-pass@127.0.0.1:3128", "tls": {"ca": CA}},
    )
    assert r.status == 200, r
    assert r.json["proxy"] == f"http://ops:{REDACTED}@127.0.0.1:3128"
    assert r.json["tls"] == {"ca": CA}
    assert stored(daemon, ep_id) == ("http://ops:other-pass@127.0.0.1:3128", {"ca": CA})

    # null clears both.
    r = await daemon.patch(f"/v1/endpoints/{ep_id}", {"proxy": None, "tls": None})
    assert r.status == 200, r
    assert (r.json["proxy"], r.json["tls"]) == (None, None)
    assert stored(daemon, ep_id) == (None, None)


async def test_defaults_and_a_proxy_without_credentials(daemon: Daemon, receiver: Receiver) -> None:
    plain = await daemon.endpoint(receiver.url)
    assert (plain["proxy"], plain["tls"]) == (None, None)
    # Without a port the proxy is on port 80; the URL is shown as given.
    ep = await daemon.endpoint(receiver.url, proxy="http://proxy.internal", tls={"ca": CA})
    assert ep["proxy"] == "http://proxy.internal"
    assert ep["tls"] == {"ca": CA}
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"proxy": "http://u@[::1]:8080"})
    assert r.status == 200, r
    assert r.json["proxy"] == "http://u@[::1]:8080"


BAD_PROXIES = [
    5,
    "",
    "https://127.0.0.1:3128",
    "socks5://127.0.0.1:1080",
    "127.0.0.1:3128",
    "http://127.0.0.1:3128/path",
    "http://127.0.0.1:3128?q=1",
    "http://127.0.0.1:3128#top",
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://:secret@127.0.0.1:3128",
    "http://a%3Ab:secret@127.0.0.1:3128",  # Basic auth cannot carry a ':' in the user
    "http://bad host:3128",
    "http://-bad-.example:3128",
    "http:///nohost",
    # A literal address the address policy refuses (the tests allow 127.0.0.0/8 only).
    "http://10.1.2.3:3128",
    "http://[fd00::1]:3128",
]


@pytest.mark.parametrize("proxy", BAD_PROXIES)
async def test_bad_proxies_are_422(daemon: Daemon, receiver: Receiver, proxy: Any) -> None:
    r = await daemon.post("/v1/endpoints", {"url": receiver.url, "proxy": proxy})
    assert r.status == 422, r
    assert [d["loc"] for d in r.json["detail"]] == [["body", "proxy"]]
    ep = await daemon.endpoint(receiver.url)
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"proxy": proxy})
    assert r.status == 422, r
    assert [d["loc"] for d in r.json["detail"]] == [["body", "proxy"]]


async def test_proxy_errors_never_quote_the_password(daemon: Daemon, receiver: Receiver) -> None:
    r = await daemon.post(
        "/v1/endpoints", {"url": receiver.url, "proxy": f"http://u:{PASSWORD}@127.0.0.1:3128/x"}
    )
    assert r.status == 422 and PASSWORD not in r.body.decode(), r
    blocked = await daemon.post(
        "/v1/endpoints", {"url": receiver.url, "proxy": f"http://u:{PASSWORD}@10.0.0.1:3128"}
    )
    assert blocked.status == 422
    assert "security.allow_networks" in blocked.json["detail"][0]["msg"]
    assert PASSWORD not in blocked.body.decode()
    # [redacted] stands for a stored password: there is none at create, nor for another user.
    r = await daemon.post(
        "/v1/endpoints", {"url": receiver.url, "proxy": f"http://u:{REDACTED}@127.0.0.1:3128"}
    )
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "proxy"], r
    ep = await daemon.endpoint(receiver.url, proxy=f"http://u:{PASSWORD}@127.0.0.1:3128")
    r = await daemon.patch(
        f"/v1/endpoints/{ep['id']}", {"proxy": f"http://someone:{REDACTED}@127.0.0.1:3128"}
    )
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "proxy"], r


BAD_TLS: list[tuple[Any, list[list[str]]]] = [
    ("PEM", [["body", "tls"]]),
    ({}, [["body", "tls"]]),
    ({"client_cert": CERT}, [["body", "tls"]]),
    ({"client_key": KEY}, [["body", "tls"]]),
    ({"ca": CA, "crl": "x"}, [["body", "tls", "crl"]]),
    ({"ca": 5}, [["body", "tls", "ca"]]),
    ({"ca": None}, [["body", "tls", "ca"]]),
    ({"ca": ""}, [["body", "tls", "ca"]]),
    ({"ca": "not a certificate"}, [["body", "tls", "ca"]]),
    ({"ca": KEY}, [["body", "tls", "ca"]]),
    ({"client_cert": "garbage", "client_key": KEY}, [["body", "tls", "client_cert"]]),
    ({"client_cert": CERT, "client_key": OTHER_KEY}, [["body", "tls", "client_key"]]),
    ({"client_cert": CERT, "client_key": "garbage"}, [["body", "tls", "client_key"]]),
    ({"client_cert": CERT, "client_key": ENCRYPTED_KEY}, [["body", "tls", "client_key"]]),
    # [redacted] keeps a stored key; at create there is none.
    ({"client_cert": CERT, "client_key": REDACTED}, [["body", "tls", "client_key"]]),
    ({"client_cert": CERT, "client_key": KEY, "ca": "x" * 600_000}, [["body", "tls", "ca"]]),
]


@pytest.mark.parametrize(("tls", "locs"), BAD_TLS)
async def test_bad_tls_is_422_naming_the_part(
    daemon: Daemon, receiver: Receiver, tls: Any, locs: list[list[str]]
) -> None:
    r = await daemon.post("/v1/endpoints", {"url": receiver.url, "tls": tls})
    assert r.status == 422, r
    assert [d["loc"] for d in r.json["detail"]] == locs
    assert KEY_LINE not in r.body.decode() and OTHER_KEY_LINE not in r.body.decode()
    ep = await daemon.endpoint(receiver.url)
    r = await daemon.patch(f"/v1/endpoints/{ep['id']}", {"tls": tls})
    assert r.status == 422, r
    assert [d["loc"] for d in r.json["detail"]] == locs


async def test_a_new_certificate_must_match_the_kept_key(
    daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url, tls={"client_cert": CERT, "client_key": KEY})
    other_cert = _CA.issue_cert("third.example").cert_chain_pems[0].bytes().decode()
    r = await daemon.patch(
        f"/v1/endpoints/{ep['id']}", {"tls": {"client_cert": other_cert, "client_key": REDACTED}}
    )
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "tls", "client_key"], r
    assert stored(daemon, ep["id"])[1] == {"client_cert": CERT, "client_key": KEY}


async def test_secrets_never_reach_the_log_at_debug(
    make_daemon: MakeDaemon, receiver: Receiver
) -> None:
    d = await make_daemon({"log": {"level": "debug"}})
    ep = await d.endpoint(
        receiver.url,
        tls={"client_cert": CERT, "client_key": KEY},
        proxy=f"http://ops:{PASSWORD}@127.0.0.1:{receiver.url.split(':')[2].split('/')[0]}",
    )
    r = await d.patch(f"/v1/endpoints/{ep['id']}", {"tls": {"client_cert": CERT, "client_key": 7}})
    assert r.status == 422
    r = await d.patch(
        f"/v1/endpoints/{ep['id']}", {"tls": {"client_cert": CERT, "client_key": OTHER_KEY}}
    )
    assert r.status == 422
    res = await d.publish()
    await receiver.wait_for(1)
    [dlv] = (await d.get(f"/v1/deliveries?event_id={res['id']}")).json["data"]
    await d.wait_status(dlv["id"], "delivered")
    d.signal(signal.SIGHUP)
    await wait_until(lambda: "event=reloaded" in d.log_text(), 10, "the reload")
    assert await d.stop() == 0
    log = d.log_text()
    assert "event=attempt" in log  # debug lines were written
    for secret in (KEY_LINE, OTHER_KEY_LINE, PASSWORD):
        assert secret not in log


# --- delivery ----------------------------------------------------------------------------


async def test_a_dead_proxy_fails_the_delivery_as_proxy(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url, proxy=f"http://ops:{PASSWORD}@127.0.0.1:{free_port()}")
    res = await daemon.publish()
    [dlv] = (await daemon.get(f"/v1/deliveries?event_id={res['id']}")).json["data"]
    assert dlv["endpoint_id"] == ep["id"]
    done = await daemon.wait_status(dlv["id"], "failed")
    assert [a["error_kind"] for a in done["attempts"]] == ["proxy"] * 3
    assert receiver.received == []
    assert PASSWORD not in json.dumps(done)


async def test_the_endpoint_proxy_overrides_delivery_proxy_and_reload_applies(
    make_daemon: MakeDaemon, make_receiver: Callable[..., Awaitable[Receiver]]
) -> None:
    """A receiver also serves as a plain-http forward proxy: the request for the (closed)
    target arrives at it in absolute form, with the proxy's credentials."""
    proxy = await make_receiver()
    direct = await make_receiver()
    proxy_port = proxy.url.split(":")[2].split("/")[0]
    closed = free_port()
    d = await make_daemon(
        {"delivery": {"proxy": f"http://127.0.0.1:{closed}", "retry_schedule_s": [0.2] * 30}}
    )
    target = f"http://127.0.0.1:{free_port()}/hook"
    via = await d.endpoint(
        target, proxy=f"http://ops:{PASSWORD}@127.0.0.1:{proxy_port}", events=["invoice.paid"]
    )
    plain = await d.endpoint(direct.url, events=["call.completed"])

    paid = await d.publish("invoice.paid")
    [got] = await proxy.wait_for(1)
    assert got.path == "/hook" and got.headers["Proxy-Authorization"].startswith("Basic ")
    [dlv] = (await d.get(f"/v1/deliveries?event_id={paid['id']}")).json["data"]
    assert dlv["endpoint_id"] == via["id"]
    done = await d.wait_status(dlv["id"], "delivered")
    sent = done["attempts"][0]["request_headers"]
    assert not any(k.lower() == "proxy-authorization" for k in sent), sent

    # The endpoint without a proxy of its own goes through delivery.proxy, which is dead ...
    call = await d.publish("call.completed")
    [dlv] = (await d.get(f"/v1/deliveries?event_id={call['id']}")).json["data"]
    assert dlv["endpoint_id"] == plain["id"]

    async def proxy_failed() -> bool:
        r = await d.get(f"/v1/deliveries/{dlv['id']}")
        return any(a["error_kind"] == "proxy" for a in r.json["attempts"])

    await wait_until(proxy_failed, 10, "a proxy failure")
    assert direct.received == []
    # ... until a reload removes it: the next retry goes straight to the receiver.
    d.config["delivery"].pop("proxy")
    d.write_config()
    d.signal(signal.SIGHUP)
    await direct.wait_for(1)
    await d.wait_status(dlv["id"], "delivered")


# --- config -----------------------------------------------------------------------------


def test_delivery_proxy_in_the_config() -> None:
    assert config_from_mapping({}, {}).delivery.proxy is None
    for value in ("http://127.0.0.1:3128", "http://u:p@proxy.internal", "http://[::1]:8080"):
        config = config_from_mapping({"delivery": {"proxy": value}}, {})
        assert config.delivery.proxy == value
        assert "p@" not in repr(config)
    for value in ("https://h:1", "http://h:1/x", 5, ["http://h:1"], f"ftp://u:{PASSWORD}@h:1"):
        with pytest.raises(ConfigError) as info:
            config_from_mapping({"delivery": {"proxy": value}}, {})
        [problem] = info.value.problems
        assert problem.startswith("delivery.proxy: ") and PASSWORD not in problem


def test_a_bad_delivery_proxy_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "webhookd.yaml"
    path.write_text(f"delivery:\n  proxy: socks5://u:{PASSWORD}@127.0.0.1:1080\n")
    for command in (["check-config", "-c", str(path)], ["serve", "-c", str(path)]):
        result = subprocess.run(
            [sys.executable, "-m", "webhookd", *command],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 78, result
        assert "delivery.proxy" in result.stderr + result.stdout
        assert PASSWORD not in result.stderr + result.stdout


# --- storage ----------------------------------------------------------------------------


async def test_a_version_1_database_gains_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(MIGRATIONS[0])
        conn.execute(
            "INSERT INTO endpoints(id, url, secret, created_at, updated_at) "
            "VALUES ('ep_old', 'https://example.com/hook', 'whsec_x', 1, 1)"
        )
        conn.execute("PRAGMA user_version=1")
    store = SQLiteStore(str(path))
    await store.open()
    try:
        old = await store.get_endpoint("ep_old")
        assert (old.proxy, old.tls) == (None, None)
        changed = await store.update_endpoint(
            "ep_old", {"proxy": "http://h:1", "tls": {"client_cert": CERT, "client_key": KEY}}
        )
        assert changed.tls is not None and changed.tls.client_key == KEY
        assert KEY not in repr(changed) and "http://h:1" not in repr(changed)
    finally:
        await store.close()


# --- the command line -------------------------------------------------------------------


def cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhookd", *args],
        cwd=ROOT,
        env={"WEBHOOKD_URL": daemon.base, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_cli_sets_and_shows_redacted_transport(
    daemon: Daemon, receiver: Receiver, tmp_path: Path
) -> None:
    files = {}
    for name, text in (("cert.pem", CERT), ("key.pem", KEY), ("ca.pem", CA)):
        files[name] = tmp_path / name
        files[name].write_text(text)
    proxy = f"http://ops:{PASSWORD}@127.0.0.1:3128"
    result = cli(
        daemon,
        "endpoints",
        "create",
        receiver.url,
        "--proxy",
        proxy,
        "--tls-client-cert",
        str(files["cert.pem"]),
        "--tls-client-key",
        str(files["key.pem"]),
        "--tls-ca",
        str(files["ca.pem"]),
        "--json",
    )
    assert result.returncode == 0, result
    created = json.loads(result.stdout)
    assert_redacted(created)
    assert stored(daemon, created["id"]) == (
        proxy,
        {"client_cert": CERT, "client_key": KEY, "ca": CA},
    )

    shown = cli(daemon, "endpoints", "show", created["id"])
    assert shown.returncode == 0, shown
    assert f"http://ops:{REDACTED}@127.0.0.1:3128" in shown.stdout
    assert "client_cert (1 certificate), client_key [redacted], ca (1 certificate)" in shown.stdout
    assert PASSWORD not in shown.stdout and KEY_LINE not in shown.stdout

    cleared = cli(daemon, "endpoints", "update", created["id"], "--proxy", "none", "--no-tls")
    assert cleared.returncode == 0, cleared
    assert stored(daemon, created["id"]) == (None, None)
    missing = cli(daemon, "endpoints", "update", created["id"], "--tls-ca", str(tmp_path / "no"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
