"""The operator commands (`webhookd endpoints|events|deliveries|event-types …`) run as real
processes against a real daemon, with a real receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Daemon, Receiver, wait_until

API_KEY = "ops-key-" + "0123456789abcdef" * 2  # 40 characters
MakeDaemon = Callable[..., Awaitable[Daemon]]


async def cli(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """Run `python -m webhookd ARGS` without blocking the loop the receiver runs on."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("WEBHOOKD_URL", "WEBHOOKD_API_KEY")
    }
    full_env.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webhookd",
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full_env,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def env_of(daemon: Daemon, **extra: str) -> dict[str, str]:
    return {"WEBHOOKD_URL": daemon.base, **extra}


async def ok(daemon: Daemon, *args: str, stdin: bytes | None = None) -> str:
    code, out, err = await cli(*args, env=env_of(daemon), stdin=stdin)
    assert code == 0, (code, out, err)
    return out


async def ok_json(daemon: Daemon, *args: str) -> Any:
    return json.loads(await ok(daemon, *args, "--json"))


async def fails(daemon: Daemon, *args: str, code: int = 1) -> str:
    """The one stderr line of a command that must fail with `code` and print nothing."""
    got, out, err = await cli(*args, env=env_of(daemon))
    assert got == code, (got, out, err)
    assert out == ""
    if code == 1:
        assert err.endswith("\n") and err.count("\n") == 1, err
    return err.strip()


def field(out: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}:\s+(.*)$", out, re.MULTILINE)
    assert match is not None, f"no {name}: line in\n{out}"
    return match.group(1)


def rows(out: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in out.strip().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- endpoints --------------------------------------------------------------------------


async def test_endpoint_create_list_show_update_delete(daemon: Daemon, receiver: Receiver) -> None:
    out = await ok(
        daemon,
        "endpoints",
        "create",
        receiver.url,
        "--events",
        "call.completed,invoice.paid",
        "--description",
        "billing",
        "--header",
        "X-Env=test",
        "--metadata",
        "team=payments",
    )
    ep_id = field(out, "id")
    assert ep_id.startswith("ep_")
    assert field(out, "url") == receiver.url
    assert field(out, "events") == "call.completed,invoice.paid"
    assert field(out, "secret").startswith("whsec_")
    assert field(out, "headers") == '{"X-Env":"test"}'

    other = await ok_json(
        daemon,
        "endpoints",
        "create",
        receiver.url + "/other",
        "--tenant",
        "acme",
        "--scheme",
        "hmac-sha256",
        "--secret",
        "s" * 24,
        "--format",
        "form,multipart",
        "--ordered",
        "--max-in-flight",
        "2",
    )
    assert other["tenant"] == "acme" and other["secret"] == "s" * 24
    assert other["signature"]["scheme"] == "hmac-sha256"
    assert other["format"] == ["form", "multipart"]
    assert other["ordered"] is True and other["max_in_flight"] == 2

    out = await ok(daemon, "endpoints", "list")
    table = rows(out)
    assert table[0] == ["ID", "URL", "TENANT", "EVENTS", "ACTIVE"]
    assert table[1] == [other["id"], receiver.url + "/other", "acme", "*", "yes"]
    assert table[2] == [ep_id, receiver.url, "-", "call.completed,invoice.paid", "yes"]
    lines = out.splitlines()
    assert {line.index(receiver.url) for line in lines[1:]} == {lines[0].index("URL")}

    listed = await ok_json(daemon, "endpoints", "list", "--tenant", "acme")
    assert [e["id"] for e in listed["data"]] == [other["id"]]
    assert listed["next_cursor"] is None

    out = await ok(daemon, "endpoints", "show", ep_id)
    assert field(out, "description") == "billing"
    assert field(out, "metadata") == '{"team":"payments"}'
    assert "secret:" not in out

    out = await ok(
        daemon,
        "endpoints",
        "update",
        ep_id,
        "--description",
        "billing v2",
        "--active",
        "false",
        "--rate-limit",
        "2.5",
        "--events",
        "call.*",
    )
    assert field(out, "active") == "no" and field(out, "description") == "billing v2"
    shown = await ok_json(daemon, "endpoints", "show", ep_id)
    assert shown["rate_limit_per_s"] == 2.5 and shown["events"] == ["call.*"]
    assert [r[0] for r in rows(await ok(daemon, "endpoints", "list", "--active", "false"))] == [
        "ID",
        ep_id,
    ]

    new_url = receiver.url + "/moved"
    updated = await ok_json(
        daemon, "endpoints", "update", ep_id, "--target", new_url, "--rate-limit", "none"
    )
    assert updated["url"] == new_url and updated["rate_limit_per_s"] is None
    # The old name of --target still works, for scripts written against it.
    updated = await ok_json(daemon, "endpoints", "update", ep_id, "--target-url", receiver.url)
    assert updated["url"] == receiver.url

    assert (await ok(daemon, "endpoints", "delete", ep_id)).strip() == f"deleted endpoint {ep_id}"
    err = await fails(daemon, "endpoints", "show", ep_id)
    assert err == f"webhookd: 404 not_found: no endpoint with id {ep_id}"


async def test_long_cells_are_cut_with_an_ellipsis(daemon: Daemon, receiver: Receiver) -> None:
    long_url = receiver.url + "/" + "x" * 80
    await daemon.endpoint(long_url)
    out = await ok(daemon, "endpoints", "list")
    cell = rows(out)[1][1]
    assert cell.endswith("…") and len(cell) < len(long_url)
    assert long_url.startswith(cell[:-1])


# --- events and deliveries --------------------------------------------------------------


async def test_publish_deliver_inspect_and_retry(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    out = await ok(
        daemon,
        "events",
        "publish",
        "call.completed",
        "--payload",
        '{"call_id": "c_1", "big": 12345678901234567890123}',
    )
    match = re.fullmatch(r"published (evt_\S+) \(call\.completed\) to 1 endpoint\n", out)
    assert match is not None, out
    event_id = match.group(1)
    [got] = await receiver.wait_for(1)
    assert got.headers["webhook-id"] == event_id
    assert json.loads(got.body)["data"] == {"call_id": "c_1", "big": 12345678901234567890123}

    second = json.loads(
        await ok(
            daemon,
            "events",
            "publish",
            "invoice.paid",
            "--payload-file",
            "-",
            "--id",
            "inv-42",
            "--json",
            stdin=b'{"invoice": 42}',
        )
    )
    assert second["id"] == "inv-42" and second["deliveries"] == 1
    await receiver.wait_for(2)

    table = rows(await ok(daemon, "events", "list"))
    assert table[0] == ["ID", "TYPE", "TENANT", "CREATED"]
    assert [r[:3] for r in table[1:]] == [
        ["inv-42", "invoice.paid", "-"],
        [event_id, "call.completed", "-"],
    ]
    only = await ok_json(daemon, "events", "list", "--type", "call.completed")
    assert [e["id"] for e in only["data"]] == [event_id]

    [delivery] = (await ok_json(daemon, "deliveries", "list", "--event-id", event_id))["data"]
    delivery_id = delivery["id"]
    await daemon.wait_status(delivery_id, "delivered")

    out = await ok(daemon, "events", "show", event_id)
    assert field(out, "type") == "call.completed"
    assert '"call_id": "c_1"' in out and "12345678901234567890123" in out
    assert delivery_id in out.split("deliveries:")[1]

    table = rows(await ok(daemon, "deliveries", "list", "--endpoint-id", ep["id"]))
    assert table[0] == ["ID", "STATUS", "ATTEMPTS", "EVENT TYPE", "ENDPOINT", "NEXT ATTEMPT"]
    assert [delivery_id, "delivered", "1", "call.completed", ep["id"], "-"] in table

    out = await ok(daemon, "deliveries", "show", delivery_id)
    assert field(out, "status") == "delivered" and field(out, "endpoint_id") == ep["id"]
    attempts = rows(out.split("attempts:\n")[1])
    assert attempts[0] == ["#", "STARTED", "TRIGGER", "FORMAT", "RESULT", "MS", "DETAIL"]
    assert attempts[1][0] == "1" and attempts[1][2:5] == ["scheduled", "json", "200"]

    out = await ok(daemon, "deliveries", "retry", delivery_id)
    assert out.strip() == f"queued {delivery_id} for an attempt now"
    await receiver.wait_for(3)
    assert receiver.received[2].headers["webhook-id"] == event_id

    async def two_attempts() -> Any:
        shown = await ok_json(daemon, "deliveries", "show", delivery_id)
        return len(shown["attempts"]) == 2 and shown["status"] == "delivered"

    await wait_until(two_attempts, what="the manual attempt")
    attempts = rows((await ok(daemon, "deliveries", "show", delivery_id)).split("attempts:\n")[1])
    assert [a[2] for a in attempts[1:]] == ["scheduled", "manual"]
    delivered = await ok_json(
        daemon, "deliveries", "list", "--status", "delivered", "--event-type", "invoice.paid"
    )
    assert [d["event_id"] for d in delivered["data"]] == ["inv-42"]


async def test_list_all_follows_every_page(daemon: Daemon) -> None:
    batch = [{"type": "call.started", "payload": {"n": i}} for i in range(60)]
    r = await daemon.post("/v1/events/batch", {"events": batch})
    assert r.status == 202, r
    published = {e["id"] for e in r.json["data"]}

    page = await ok_json(daemon, "events", "list", "--limit", "25")
    assert len(page["data"]) == 25 and page["next_cursor"]
    merged = await ok_json(daemon, "events", "list", "--limit", "25", "--all")
    assert list(merged) == ["data"]
    assert [e["id"] for e in merged["data"]] == sorted(published, reverse=True)

    code, out, err = await cli("events", "list", "--limit", "25", env=env_of(daemon))
    assert code == 0 and len(out.splitlines()) == 26
    assert "--all" in err and page["next_cursor"] in err
    code, out, err = await cli("events", "list", "--limit", "25", "--all", env=env_of(daemon))
    assert code == 0 and len(out.splitlines()) == 61 and err == ""
    # The connection flags also work before the action.
    code, out, _ = await cli(
        "events", "--json", "--url", daemon.base, "list", "--limit", "25", "--all"
    )
    assert code == 0 and len(json.loads(out)["data"]) == 60


# --- event types ------------------------------------------------------------------------


async def test_event_types_create_list_delete(daemon: Daemon) -> None:
    out = await ok(daemon, "event-types", "create", "order.created", "--description", "An order")
    assert out.strip() == "created event type order.created"
    table = rows(await ok(daemon, "event-types", "list"))
    assert table[0] == ["NAME", "SOURCE", "SCHEMA", "DESCRIPTION"]
    assert ["order.created", "api", "no", "An order"] in table
    assert ["call.completed", "config", "no", "A call ended."] in table

    err = await fails(daemon, "event-types", "create", "order.created")
    assert err == "webhookd: 409 conflict: event type order.created already exists"

    out = await ok(daemon, "event-types", "delete", "order.created")
    assert out.strip() == "deleted event type order.created"
    names = [t["name"] for t in (await ok_json(daemon, "event-types", "list"))["data"]]
    assert "order.created" not in names and "webhookd.test" in names
    err = await fails(daemon, "event-types", "delete", "order.created")
    assert err.startswith("webhookd: 404 not_found: ")


# --- errors -----------------------------------------------------------------------------


async def test_api_errors_are_one_line_and_exit_1(daemon: Daemon) -> None:
    err = await fails(daemon, "endpoints", "show", "ep_missing")
    assert err == "webhookd: 404 not_found: no endpoint with id ep_missing"
    err = await fails(daemon, "deliveries", "retry", "dlv_missing")
    assert err.startswith("webhookd: 404 not_found: ") and "dlv_missing" in err
    err = await fails(daemon, "endpoints", "create", "not a url")
    assert err.startswith("webhookd: 422 validation_error: url: ")
    err = await fails(daemon, "events", "publish", "no.such.type")
    assert err.startswith("webhookd: 422 validation_error: type: ") and "no.such.type" in err
    assert "did you mean" not in err
    err = await fails(daemon, "events", "publish", "call.complted")
    assert err.endswith("; did you mean call.completed for call.complted?"), err
    err = await fails(
        daemon, "endpoints", "create", "http://127.0.0.1:9/x", "--events", "invoice.pay"
    )
    assert err.endswith("; did you mean invoice.paid for invoice.pay?"), err
    err = await fails(daemon, "events", "list", "--limit", "999")
    assert err.startswith("webhookd: 422 validation_error: limit: ")


REFUSED_HINT = (
    "(is webhookd running there? start it with `webhookd serve`, or give its address with "
    "--url or WEBHOOKD_URL)"
)


async def test_unreachable_daemon_is_one_line_that_says_what_to_do() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    code, out, err = await cli("endpoints", "list", env={"WEBHOOKD_URL": url})
    assert (code, out) == (1, "")
    assert err == f"webhookd: cannot reach {url}: connection refused {REFUSED_HINT}\n"
    code, _, err = await cli("events", "list", "--url", f"127.0.0.1:{port}")
    assert code == 1
    assert err == f"webhookd: cannot reach {url}: connection refused {REFUSED_HINT}\n"


async def test_https_against_the_plain_http_api_says_so(daemon: Daemon) -> None:
    tls_url = daemon.base.replace("http://", "https://")
    code, out, err = await cli("endpoints", "list", "--url", tls_url)
    assert (code, out) == (1, "")
    assert err == f"webhookd: the API at {tls_url} speaks plain http; use {daemon.base}\n"


def test_an_unknown_host_is_named_with_what_to_check() -> None:
    import socket as s

    from webhookd.client.api import describe
    from webhookd.client.core import Address, _unreachable

    where = Address("http://no-such-host:8080", "http://no-such-host:8080")
    err = _unreachable(where, s.gaierror(s.EAI_NONAME, "Name or service not known"))
    assert err.code == "unknown_host" and err.status is None
    assert describe(err) == (
        "cannot reach http://no-such-host:8080: unknown host no-such-host (Name or service "
        "not known) (check the host name in --url or WEBHOOKD_URL)"
    )


async def test_an_answer_that_is_not_json_is_one_line(receiver: Receiver) -> None:
    base = receiver.url.removesuffix("/hook")
    code, out, err = await cli("endpoints", "list", "--url", base)
    assert (code, out) == (1, "")
    assert err == (
        f"webhookd: {base} answered 200 with something that is not JSON; "
        "is that the webhookd API?\n"
    )


async def test_bad_usage_exits_2(daemon: Daemon) -> None:
    await fails(daemon, "endpoints", code=2)
    await fails(daemon, "endpoints", "show", code=2)
    await fails(daemon, "events", "publish", "call.completed", "--payload", "{bad", code=2)
    await fails(daemon, "events", "publish", "call.completed", "--payload", "[1]", code=2)
    await fails(daemon, "deliveries", "list", "--status", "bogus", code=2)
    await fails(daemon, "endpoints", "list", "--active", "maybe", code=2)
    await fails(daemon, "endpoints", "create", "https://x.example", "--header", "nope", code=2)
    await fails(daemon, "endpoints", "recover", "ep_x", code=2)
    err = await fails(daemon, "endpoints", "update", "ep_x", code=2)
    assert err == "webhookd: nothing to update; give at least one option (see --help)"
    # --url is the daemon's address; the endpoint's URL comes first, and the error says so.
    err = await fails(
        daemon, "endpoints", "create", "--url", daemon.base, "--events", "call.completed", code=2
    )
    assert "give the endpoint's URL first" in err and "--url is the address" in err
    code, out, err = await cli("endpoints", "lst", env=env_of(daemon))
    assert (code, out) == (2, "") and "did you mean list" in err
    code, out, err = await cli("deliveris", "list", env=env_of(daemon))
    assert (code, out) == (2, "") and "did you mean deliveries" in err


async def test_api_key_from_env_and_flag(make_daemon: MakeDaemon) -> None:
    d = await make_daemon({"api_keys": [{"name": "ops", "key": API_KEY}]})
    code, out, err = await cli("endpoints", "list", env=env_of(d))
    assert (code, out) == (1, "")
    assert err.startswith("webhookd: 401 unauthorized: ") and err.count("\n") == 1
    code, out, _ = await cli("endpoints", "list", env=env_of(d, WEBHOOKD_API_KEY=API_KEY))
    assert (code, out.strip()) == (0, "no endpoints")
    code, out, _ = await cli("endpoints", "list", "--api-key", API_KEY, env=env_of(d))
    assert (code, out.strip()) == (0, "no endpoints")
    code, _, err = await cli(
        "endpoints", "list", "--api-key", "x" * 40, env=env_of(d, WEBHOOKD_API_KEY=API_KEY)
    )
    assert code == 1 and err.startswith("webhookd: 401 unauthorized: the API key is not valid")


async def test_unix_socket_url(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    d = await make_daemon({"listen": f"unix:{sock}"}, start=False)
    d.write_config()
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(
            [sys.executable, "-m", "webhookd", "serve", "-c", str(d.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    await wait_until(lambda: "startup" in d.log_text(), 20, "the daemon's startup line")
    code, out, err = await cli("event-types", "list", "--url", f"unix:{sock}")
    assert code == 0, err
    assert ["call.completed", "config", "no", "A call ended."] in rows(out)


# --- endpoint operations ----------------------------------------------------------------


async def test_endpoint_test_secret_and_rotation(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    out = await ok(daemon, "endpoints", "test", ep["id"], "--payload", '{"hello": "world"}')
    match = re.fullmatch(r"sent test event (evt_\S+) as delivery (dlv_\S+)\n", out)
    assert match is not None, out
    [got] = await receiver.wait_for(1)
    body = json.loads(got.body)
    assert body["type"] == "webhookd.test" and body["data"] == {"hello": "world"}
    assert body["id"] == match.group(1)

    out = await ok(daemon, "endpoints", "secret", ep["id"])
    assert out == f"secret: {ep['secret']}\n"
    new_secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    out = await ok(
        daemon, "endpoints", "rotate-secret", ep["id"], "--secret", new_secret, "--grace-s", "600"
    )
    assert field(out, "new secret") == new_secret
    out = await ok(daemon, "endpoints", "secret", ep["id"])
    assert field(out, "secret") == new_secret
    assert "previous secret still valid until" in out
    rotated = await ok_json(daemon, "endpoints", "rotate-secret", ep["id"])
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != new_secret


async def test_endpoint_stats_and_recover(daemon: Daemon, receiver: Receiver) -> None:
    ep = await daemon.endpoint(receiver.url)
    receiver.default = 500
    published = await daemon.publish("call.completed", {"n": 1})
    [delivery] = (await daemon.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
    await daemon.wait_status(delivery["id"], "failed")

    out = await ok(daemon, "endpoints", "stats", ep["id"])
    assert field(out, "failed") == "1" and field(out, "delivered") == "0"
    assert field(out, "success rate 24h") == "0.0%"

    receiver.default = 200
    out = await ok(daemon, "endpoints", "recover", ep["id"], "--since", "10m")
    assert out.strip() == "requeued 1 delivery"
    await daemon.wait_status(delivery["id"], "delivered")
    stats = await ok_json(daemon, "endpoints", "stats", ep["id"])
    assert stats["counts"]["delivered"] == 1 and stats["counts"]["failed"] == 0
    assert stats["last_success_at"] is not None


async def test_a_long_error_reason_is_shown_in_full(make_daemon: MakeDaemon) -> None:
    # No loopback exemption: a name resolving to 127.0.0.1 is refused at connect time,
    # with a reason longer than the DETAIL column.
    d = await make_daemon({"security": {"allow_networks": []}})
    await d.endpoint("http://localhost:9/hook")
    published = await d.publish("call.completed", {"n": 1})
    [delivery] = (await d.get(f"/v1/deliveries?event_id={published['id']}")).json["data"]
    shown = await d.wait_status(delivery["id"], "failed")
    reason = shown["attempts"][0]["error_message"]
    assert len(reason) > 60 and "security.allow_networks" in reason
    out = await ok(d, "deliveries", "show", delivery["id"])
    table, full = out.split("attempts:\n")[1].split("\n\nerrors in full:\n")
    assert rows(table)[1][4] == "blocked_address"
    assert full.splitlines()[0] == f"#1: {reason}"
    assert len(full.splitlines()) == len(shown["attempts"])
