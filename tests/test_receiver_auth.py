"""Receiver authentication (the endpoint field `auth`) end to end: real daemons, a real
aiohttp OAuth 2.0 token endpoint and real receivers on 127.0.0.1.

basic and bearer headers arrive as set; an oauth2 token is fetched once for many
concurrent deliveries, fetched again when it expires and once after a 401; a token
endpoint that fails makes the attempt fail as `auth_token` with its status, on the retry
schedule; secrets never appear in answers or attempts, and a PATCH that sends
[redacted] back keeps them. The store-related ones run on both backends."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
from aiohttp import web

from tests.conftest import Daemon, Received, Receiver, wait_until
from tests.console_client import ConsoleClient
from tests.pg import BACKENDS
from tests.test_cli_client import fails, ok, ok_json
from tests.test_connect import closed_port

BOTH = pytest.mark.parametrize("backend", BACKENDS, indirect=True)
MakeDaemon = Callable[..., Awaitable[Daemon]]
MakeReceiver = Callable[..., Awaitable[Receiver]]
PASSWORD = "pa55-w0rd-" + "P" * 20
BEARER = "bearer-tok-" + "B" * 24
CLIENT_ID = "hooks client"  # a space: form-encoded before Basic (RFC 6749 2.3.1)
CLIENT_SECRET = "cl1ent:s3cret/+" + "C" * 20


@dataclass
class TokenServer:
    """An OAuth 2.0 token endpoint: issues tok-1, tok-2, … (expires_in as set), or
    answers what `script` says first ((status, body) pairs, in order), or always what
    `fixed` says for a path."""

    expires_in: Any = 3600
    delay_s: float = 0.0
    script: list[tuple[int, str]] = field(default_factory=list)
    fixed: dict[str, tuple[int, str]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    issued: list[tuple[str, float]] = field(default_factory=list)  # (token, when)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self) -> TokenServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, path: str = "/oauth/token") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Received(request.method, request.path_qs, dict(request.headers), body, time.monotonic())
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow token endpoint, not a wait in a test
        if request.path in self.fixed:
            status, text = self.fixed[request.path]
            return web.Response(status=status, text=text, content_type="application/json")
        if self.script:
            status, text = self.script.pop(0)
            return web.Response(status=status, text=text, content_type="application/json")
        token = f"tok-{len(self.issued) + 1}-" + "A" * 24
        self.issued.append((token, time.monotonic()))
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def latest(self) -> str:
        return self.issued[-1][0]


@pytest.fixture
async def token_server() -> AsyncIterator[TokenServer]:
    server = await TokenServer().start()
    yield server
    await server.stop()


def oauth2(server: TokenServer, path: str = "/oauth/token", **extra: Any) -> dict[str, Any]:
    return {
        "type": "oauth2",
        "token_url": server.url(path),
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        **extra,
    }


def accepting(tokens: Callable[[], set[str]]) -> Callable[[web.Request, bytes], web.Response]:
    """A receiver's responder: 200 for `Bearer <t>` with t in tokens(), else 401."""

    def respond(request: web.Request, _body: bytes) -> web.Response:
        sent = request.headers.get("Authorization", "")
        ok = sent.startswith("Bearer ") and sent[7:] in tokens()
        return web.Response(status=200 if ok else 401, text="ok" if ok else "who are you")

    return respond


async def attempts_of(d: Daemon, endpoint_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The attempts of the endpoint's one delivery, once it has `count` of them."""

    async def got() -> list[dict[str, Any]] | None:
        r = await d.get(f"/v1/deliveries?endpoint_id={endpoint_id}")
        if not r.json["data"]:
            return None
        full = (await d.get(f"/v1/deliveries/{r.json['data'][0]['id']}")).json
        return full["attempts"] if len(full["attempts"]) >= count else None

    return await wait_until(got, 15, f"{count} attempts to {endpoint_id}")  # type: ignore[no-any-return]


# --- basic and bearer ---------------------------------------------------------------------


@BOTH
async def test_basic_and_bearer_headers_arrive_and_are_never_shown(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver
) -> None:
    d = await make_daemon()
    rx_basic, rx_bearer = await make_receiver(), await make_receiver()
    basic = await d.endpoint(
        rx_basic.url, auth={"type": "basic", "username": "hooks", "password": PASSWORD}
    )
    bearer = await d.endpoint(rx_bearer.url, auth={"type": "bearer", "token": BEARER})
    assert basic["auth"] == {"type": "basic", "username": "hooks", "password": "[redacted]"}
    assert bearer["auth"] == {"type": "bearer", "token": "[redacted]"}
    await d.publish()
    [got_basic] = await rx_basic.wait_for(1)
    [got_bearer] = await rx_bearer.wait_for(1)
    pair = base64.b64encode(f"hooks:{PASSWORD}".encode()).decode()
    assert got_basic.headers["Authorization"] == f"Basic {pair}"
    assert got_bearer.headers["Authorization"] == f"Bearer {BEARER}"
    for ep in (basic, bearer):
        [attempt] = await attempts_of(d, ep["id"])
        assert attempt["status_code"] == 200
        assert attempt["request_headers"]["Authorization"] == "[redacted]"
    shown = (await d.get("/v1/endpoints")).body + (await d.get(f"/v1/endpoints/{basic['id']}")).body
    for secret in (PASSWORD, BEARER, pair):
        assert secret.encode() not in shown
    for ep in (basic, bearer):
        r = await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")
        full = await d.get(f"/v1/deliveries/{r.json['data'][0]['id']}")
        assert PASSWORD.encode() not in full.body and BEARER.encode() not in full.body


# --- oauth2 -------------------------------------------------------------------------------


@BOTH
async def test_one_token_fetch_serves_many_concurrent_deliveries(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    token_server.delay_s = 0.3  # every delivery of the burst needs the token at once
    rx = await make_receiver()
    rx.responder = accepting(lambda: {t for t, _ in token_server.issued})
    d = await make_daemon()
    auth = oauth2(token_server, scope="hooks:write read", audience="https://api.example.com")
    ep = await d.endpoint(rx.url, auth=auth, max_in_flight=10)
    events = [{"type": "call.completed", "payload": {"n": i}} for i in range(20)]
    assert (await d.post("/v1/events/batch", {"events": events})).status == 202
    received = await rx.wait_for(20)
    assert len(token_server.requests) == 1, "a stampede on the token endpoint"
    assert {r.headers["Authorization"] for r in received} == {f"Bearer {token_server.latest()}"}
    # The grant: a form POST, the client authenticated with HTTP Basic (id and secret
    # form-encoded first), scope and audience as given.
    [req] = token_server.requests
    assert req.method == "POST" and req.path == "/oauth/token"
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(req.body.decode()) == {
        "grant_type": ["client_credentials"],
        "scope": ["hooks:write read"],
        "audience": ["https://api.example.com"],
    }
    user, _, password = base64.b64decode(req.headers["Authorization"][6:]).decode().partition(":")
    assert (user, password) == ("hooks+client", "cl1ent%3As3cret%2F%2B" + "C" * 20)

    async def all_delivered() -> bool:
        r = await d.get(f"/v1/deliveries?endpoint_id={ep['id']}&status=delivered&limit=250")
        return len(r.json["data"]) == 20

    await wait_until(all_delivered, 10, "20 delivered")


async def test_a_token_is_fetched_again_once_it_expires(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    token_server.expires_in = "1"  # a string, as some servers send it: fetched again at 0.9 s
    rx = await make_receiver()
    d = await make_daemon()
    await d.endpoint(rx.url, auth=oauth2(token_server))

    async def second_token_used() -> bool:
        count = len(rx.received)
        await d.publish()
        await rx.wait_for(count + 1)
        return len(token_server.issued) >= 2

    await wait_until(second_token_used, 10, "a delivery with a second token")
    (first, fetched_at), (second, _) = token_server.issued[:2]
    by_token = {r.headers["Authorization"][7:]: r.at for r in reversed(rx.received)}
    assert by_token[first] < by_token[second]
    assert by_token[second] - fetched_at >= 0.85, "the token was dropped before it expired"
    # Before the second one, every delivery used the first.
    assert all(
        r.headers["Authorization"] == f"Bearer {first}"
        for r in rx.received
        if r.at < by_token[second]
    )


@BOTH
async def test_a_401_fetches_one_new_token_and_the_attempt_succeeds(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver()
    rx.responder = accepting(lambda: {t for t, _ in token_server.issued})
    d = await make_daemon()
    ep = await d.endpoint(rx.url, auth=oauth2(token_server))
    # The receiver has never heard of the first token (revoked, or its keys rotated): 401,
    # a new token, and the same attempt sent again at once, which the receiver takes.
    token_server.script.append((200, '{"access_token": "tok-stale", "expires_in": 3600}'))
    await d.publish()
    [attempt] = await attempts_of(d, ep["id"])
    assert attempt["status_code"] == 200 and attempt["error_kind"] is None
    assert [r.headers["Authorization"] for r in rx.received] == [
        "Bearer tok-stale",
        f"Bearer {token_server.latest()}",
    ]
    assert attempt["request_headers"]["Authorization"] == "[redacted]"
    assert len(token_server.requests) == 2
    status = (await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")).json["data"][0]["status"]
    assert status == "delivered"


async def test_a_receiver_that_keeps_refusing_costs_one_new_token_per_attempt(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver(default=401)
    d = await make_daemon({"delivery": {"retry_schedule_s": [0.2]}})
    ep = await d.endpoint(rx.url, auth=oauth2(token_server))
    await d.publish()
    attempts = await attempts_of(d, ep["id"], 2)
    for attempt in attempts:
        assert attempt["status_code"] == 401 and attempt["error_kind"] is None
    # Each attempt: a request, a new token, the request again; never more.
    assert len(rx.received) == 4
    assert len(token_server.requests) == 3
    await d.wait_status(
        (await d.get(f"/v1/deliveries?endpoint_id={ep['id']}")).json["data"][0]["id"], "failed"
    )


async def test_token_endpoint_failures_are_auth_token_attempts_on_the_schedule(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver()
    # A failure is held for a second: the retry at 0.2 s gets it without asking again,
    # the one at 1.7 s asks again and gets a token.
    d = await make_daemon({"delivery": {"retry_schedule_s": [0.2, 1.5]}})
    token_server.fixed = {
        "/refused": (401, '{"error": "invalid_client"}'),
        "/garbage": (200, "<html>not json</html>"),
        "/no-token": (200, '{"token_type": "Bearer", "expires_in": 60}'),
        "/mac": (200, '{"access_token": "x", "token_type": "mac"}'),
    }
    token_server.script.append((500, "oops"))
    flaky = await d.endpoint(rx.url, auth=oauth2(token_server))
    dead = f"http://127.0.0.1:{closed_port(socket.AF_INET, '127.0.0.1')}/token"
    expected = {
        "/refused": "the token endpoint answered 401 (invalid_client)",
        "/garbage": "the token endpoint's answer is not JSON",
        "/no-token": "the token endpoint's answer has no access_token",
        "/mac": "not a Bearer token",
    }
    others = {p: await d.endpoint(rx.url, auth=oauth2(token_server, p)) for p in expected}
    unreachable = await d.endpoint(rx.url, auth={**oauth2(token_server), "token_url": dead})
    await d.publish()
    attempts = await attempts_of(d, flaky["id"], 3)
    assert [a["error_kind"] for a in attempts] == ["auth_token", "auth_token", None]
    assert attempts[0]["error_message"] == "the token endpoint answered 500"
    assert attempts[1]["error_message"] == "the token endpoint answered 500"
    assert attempts[0]["status_code"] is None and attempts[0]["request_headers"] == {}
    assert attempts[2]["status_code"] == 200
    assert len([r for r in token_server.requests if r.path == "/oauth/token"]) == 2
    for path, message in expected.items():
        # Retried on the schedule: a second attempt, failing the same way.
        for attempt in await attempts_of(d, others[path]["id"], 2):
            assert attempt["error_kind"] == "auth_token"
            assert message in attempt["error_message"], attempt["error_message"]
    first = (await attempts_of(d, unreachable["id"]))[0]
    assert first["error_kind"] == "auth_token"
    assert "could not be reached (connection_refused)" in first["error_message"]
    # Only the flaky endpoint's delivery reached the receiver.
    assert len(rx.received) == 1
    log = d.log_text()
    assert CLIENT_SECRET not in log and "A" * 24 not in log


async def test_the_token_endpoint_passes_the_address_checks(
    make_daemon: MakeDaemon, token_server: TokenServer
) -> None:
    d = await make_daemon({"security": {"allow_networks": []}})
    auth = {**oauth2(token_server), "token_url": f"http://localhost:{token_server.port}/t"}
    ep = await d.endpoint("http://localhost:9/hook", auth=auth)
    await d.publish()
    [attempt] = await attempts_of(d, ep["id"])
    assert attempt["error_kind"] == "auth_token"
    assert "blocked_address" in attempt["error_message"]
    assert token_server.requests == []
    # An IP address the policy refuses is a 422 at once, as for the endpoint URL.
    r = await d.post(
        "/v1/endpoints",
        {"url": "http://localhost:9/h", "auth": {**auth, "token_url": "http://127.0.0.1/t"}},
    )
    assert r.status == 422
    assert r.json["detail"][0]["loc"] == ["body", "auth", "token_url"]
    assert "security.allow_networks" in r.json["detail"][0]["msg"]


# --- the API: validation, redaction, round trips -----------------------------------------


@BOTH
async def test_a_patch_sending_redacted_back_keeps_the_secret(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver()
    rx.responder = accepting(lambda: {t for t, _ in token_server.issued})
    d = await make_daemon()
    ep = await d.endpoint(rx.url, auth=oauth2(token_server, scope="a"))
    shown = (await d.get(f"/v1/endpoints/{ep['id']}")).json["auth"]
    assert shown == {**oauth2(token_server, scope="a"), "client_secret": "[redacted]"}
    # The console round trip: what the answer showed, with one part changed.
    r = await d.patch(f"/v1/endpoints/{ep['id']}", {"auth": {**shown, "scope": "b"}})
    assert r.status == 200 and r.json["auth"]["scope"] == "b", r
    await d.publish()
    await rx.wait_for(1)
    [req] = token_server.requests
    pair = base64.b64decode(req.headers["Authorization"][6:]).decode()
    assert pair.endswith("%2F%2B" + "C" * 20), "the stored client secret was not kept"
    assert parse_qs(req.body.decode())["scope"] == ["b"]
    # [redacted] is no secret of another client, another token endpoint or another type.
    for changed, part in (
        ({**shown, "client_id": "other"}, "client_secret"),
        ({**shown, "token_url": token_server.url("/elsewhere")}, "client_secret"),
        ({"type": "bearer", "token": "[redacted]"}, "token"),
    ):
        r = await d.patch(f"/v1/endpoints/{ep['id']}", {"auth": changed})
        assert r.status == 422, r
        assert r.json["detail"][0]["loc"] == ["body", "auth", part]
    basic = await d.endpoint(rx.url, auth={"type": "basic", "username": "u", "password": PASSWORD})
    r = await d.patch(f"/v1/endpoints/{basic['id']}", {"auth": basic["auth"], "description": "x"})
    assert r.status == 200
    r = await d.patch(f"/v1/endpoints/{basic['id']}", {"auth": {**basic["auth"], "username": "v"}})
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "auth", "password"]
    assert PASSWORD not in r.body.decode()
    # null removes it.
    r = await d.patch(f"/v1/endpoints/{basic['id']}", {"auth": None})
    assert r.status == 200 and r.json["auth"] is None


async def test_auth_is_validated_with_the_exact_place(make_daemon: MakeDaemon) -> None:
    d = await make_daemon(
        {"security": {"https_only": True, "allow_networks": ["127.0.0.0/8"]}},
    )
    url = "https://hooks.example.com/h"
    token_url = "https://auth.example.com/token"
    cases: list[tuple[Any, list[Any], str]] = [
        ("basic", ["body", "auth"], "expected null or an object"),
        ({"type": "digest"}, ["body", "auth", "type"], "expected one of basic, bearer, oauth2"),
        ({"type": "basic", "password": "x"}, ["body", "auth", "username"], "field required"),
        ({"type": "basic", "username": "a:b", "password": "x"}, ["body", "auth", "username"], ""),
        ({"type": "bearer", "token": "has space"}, ["body", "auth", "token"], "visible ASCII"),
        ({"type": "bearer", "token": "t", "extra": 1}, ["body", "auth", "extra"], "unknown"),
        (
            {"type": "oauth2", "client_id": "c", "client_secret": "s"},
            ["body", "auth", "token_url"],
            "field required",
        ),
        (
            {
                "type": "oauth2",
                "token_url": "http://auth.example.com/t",
                "client_id": "c",
                "client_secret": "s",
            },
            ["body", "auth", "token_url"],
            "https is required",
        ),
        (
            {"type": "oauth2", "token_url": token_url, "client_id": "c"},
            ["body", "auth", "client_secret"],
            "field required",
        ),
        (
            {
                "type": "oauth2",
                "token_url": "https://10.1.2.3/t",
                "client_id": "c",
                "client_secret": "s",
            },
            ["body", "auth", "token_url"],
            "security.allow_networks",
        ),
        (
            {
                "type": "oauth2",
                "token_url": "https://u:p@auth.example.com/t",
                "client_id": "c",
                "client_secret": "s",
            },
            ["body", "auth", "token_url"],
            "credentials in the URL",
        ),
        (
            {
                "type": "oauth2",
                "token_url": token_url,
                "client_id": "c",
                "client_secret": "s",
                "scope": "a  b",
            },
            ["body", "auth", "scope"],
            "scope tokens",
        ),
        ({"type": "bearer", "token": "[redacted]"}, ["body", "auth", "token"], "[redacted]"),
    ]
    for auth, loc, msg in cases:
        r = await d.post("/v1/endpoints", {"url": url, "auth": auth})
        assert r.status == 422, (auth, r)
        assert r.json["detail"][0]["loc"] == loc, (auth, r.json)
        assert msg in r.json["detail"][0]["msg"], (auth, r.json)
    ok = {"type": "oauth2", "token_url": token_url, "client_id": "c", "client_secret": "s" * 20}
    r = await d.post("/v1/endpoints", {"url": url, "auth": {**ok, "scope": None}})
    assert r.status == 201 and r.json["auth"] == {**ok, "client_secret": "[redacted]"}
    # With auth, the Authorization header is webhookd's.
    r = await d.post(
        "/v1/endpoints", {"url": url, "auth": ok, "headers": {"authorization": "Bearer mine"}}
    )
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "headers", "authorization"]
    plain = await d.endpoint(url, headers={"Authorization": "Bearer mine"})  # no auth: allowed
    r = await d.patch(f"/v1/endpoints/{plain['id']}", {"auth": ok})
    assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", "auth"]
    r = await d.patch(f"/v1/endpoints/{plain['id']}", {"auth": ok, "headers": {}})
    assert r.status == 200 and r.json["auth"]["type"] == "oauth2"


# --- the command line ---------------------------------------------------------------------


async def test_the_cli_sets_changes_and_removes_auth(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver()
    d = await make_daemon()
    created = await ok_json(
        d,
        "endpoints",
        "create",
        rx.url,
        "--auth-oauth2",
        token_server.url(),
        "--auth-client-id",
        CLIENT_ID,
        "--auth-client-secret",
        CLIENT_SECRET,
        "--auth-scope",
        "a b",
    )
    assert created["auth"] == {**oauth2(token_server, scope="a b"), "client_secret": "[redacted]"}
    shown = await ok(d, "endpoints", "show", created["id"])
    assert "[redacted]" in shown and CLIENT_SECRET not in shown
    ep_id = created["id"]
    changed = await ok_json(d, "endpoints", "update", ep_id, "--auth-basic", f"hooks:{PASSWORD}")
    assert changed["auth"] == {"type": "basic", "username": "hooks", "password": "[redacted]"}
    await d.publish()
    [got] = await rx.wait_for(1)
    pair = base64.b64encode(f"hooks:{PASSWORD}".encode()).decode()
    assert got.headers["Authorization"] == f"Basic {pair}"
    removed = await ok_json(d, "endpoints", "update", ep_id, "--no-auth")
    assert removed["auth"] is None
    whole = json.dumps({"type": "bearer", "token": BEARER})
    assert (await ok_json(d, "endpoints", "update", ep_id, "--auth", whole))["auth"]["type"] == (
        "bearer"
    )
    err = await fails(d, "endpoints", "update", ep_id, "--auth-client-id", "x", code=2)
    assert "--auth-client-id goes with --auth-oauth2" in err
    err = await fails(d, "endpoints", "update", ep_id, "--auth-basic", PASSWORD, code=2)
    assert "USER:PASSWORD" in err and PASSWORD not in err


# --- the console --------------------------------------------------------------------------


async def test_the_console_form_keeps_secrets_write_only(
    make_daemon: MakeDaemon, make_receiver: MakeReceiver, token_server: TokenServer
) -> None:
    rx = await make_receiver()
    rx.responder = accepting(lambda: {t for t, _ in token_server.issued})
    d = await make_daemon()  # no API keys: the console on loopback asks for no login
    c = ConsoleClient(d.base)
    try:
        csrf = (await c.get("/console/endpoints/new")).csrf()
        form = {
            "url": rx.url,
            "events": "*",
            "format": "json",
            "delay_s": "0",
            "auth_type": "oauth2",
            "auth_token_url": token_server.url(),
            "auth_client_id": CLIENT_ID,
            "auth_client_secret": CLIENT_SECRET,
        }
        r = await c.post("/console/endpoints", form, csrf=csrf)
        assert r.status == 303, r.text
        ep_id = r.headers["Location"].split("/")[-1].split("?")[0]
        page = await c.get(f"/console/endpoints/{ep_id}/edit")
        assert page.status == 200 and CLIENT_SECRET not in page.text
        # The endpoint's page says how webhookd authenticates, never with what secret.
        shown = await c.get(f"/console/endpoints/{ep_id}")
        assert shown.status == 200 and CLIENT_SECRET not in shown.text
        auth = shown.text.split('data-test="auth">', 1)[1].split("</dd>", 1)[0]
        assert "OAuth 2.0 client credentials" in auth and CLIENT_ID in auth
        assert token_server.url() in page.text and "empty keeps the stored one" in page.text
        # Saved again with the secret left empty: the stored one is kept.
        edited = {**form, "auth_client_secret": "", "auth_scope": "x"}
        r = await c.post(f"/console/endpoints/{ep_id}/edit", edited, csrf=page.csrf())
        assert r.status == 303, r.text
        await d.publish()
        [got] = await rx.wait_for(1)
        assert got.headers["Authorization"] == f"Bearer {token_server.latest()}"
        pair = base64.b64decode(token_server.requests[0].headers["Authorization"][6:]).decode()
        assert pair.endswith("%2F%2B" + "C" * 20)
        # Basic with no password to keep: the API's problem, shown at the field, and the
        # password typed in is not shown back.
        page = await c.get(f"/console/endpoints/{ep_id}/edit")
        basic = {**form, "auth_type": "basic", "auth_username": "", "auth_password": PASSWORD}
        r = await c.post(f"/console/endpoints/{ep_id}/edit", basic, csrf=page.csrf())
        assert r.status == 422 and 'data-test="problem-auth_username"' in r.text
        assert PASSWORD not in r.text
        basic = {**basic, "auth_username": "u", "auth_password": ""}
        r = await c.post(f"/console/endpoints/{ep_id}/edit", basic, csrf=page.csrf())
        assert r.status == 422 and 'data-test="problem-auth_password"' in r.text
        none = {**form, "auth_type": "none"}
        r = await c.post(f"/console/endpoints/{ep_id}/edit", none, csrf=page.csrf())
        assert r.status == 303
        assert (await d.get(f"/v1/endpoints/{ep_id}")).json["auth"] is None
        shown = await c.get(f"/console/endpoints/{ep_id}")
        assert 'data-test="auth">none</dd>' in shown.text
    finally:
        await c.close()
