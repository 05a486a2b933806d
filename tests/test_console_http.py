"""The console's pages and fragments over plain HTTP, against a real daemon: login and
sessions, CSRF and Origin, headers, static files, the API's validation reused, tenant
scope, secrets, the delivery log's filters and fragments, bulk retry, live updates."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Daemon, Receiver, wait_until
from tests.console_client import ConsoleClient

OPS_KEY = "ops-key-" + "o" * 32
ACME_KEY = "acme-key-" + "a" * 32
KEYS = {
    "api_keys": [
        {"name": "ops", "key": OPS_KEY},
        {"name": "acme-ops", "key": ACME_KEY, "tenant": "acme"},
    ]
}
STATIC = Path(__file__).resolve().parent.parent / "webhookd" / "console" / "static"
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def keyed(make_daemon: Callable[..., Awaitable[Daemon]]) -> Daemon:
    d = await make_daemon(KEYS)
    d.api_key = OPS_KEY
    return d


@pytest.fixture
async def client(keyed: Daemon) -> AsyncIterator[ConsoleClient]:
    c = ConsoleClient(keyed.base)
    yield c
    await c.close()


async def logged_in(c: ConsoleClient, key: str = OPS_KEY) -> None:
    r = await c.login(key)
    assert r.status == 303, r.text
    assert r.headers["Location"] == "/console/endpoints"


async def test_login_sets_a_strict_httponly_cookie_and_logs_no_key(
    keyed: Daemon, client: ConsoleClient
) -> None:
    r = await client.get("/console/endpoints")
    assert r.status == 303 and r.headers["Location"] == "/console/login"
    r = await client.login("not-a-key-" + "x" * 30)
    assert r.status == 401 and "not valid" in r.text
    r = await client.login(OPS_KEY)
    assert r.status == 303
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; Secure is set when served over TLS
    page = await client.get("/console/endpoints")
    assert page.status == 200 and 'data-test="who">ops<' in page.text
    log = keyed.log_text()
    assert "event=console_login " in log and "event=console_login_failed" in log
    assert OPS_KEY not in log and "x" * 30 not in log
    # The API itself still wants its Bearer key: the cookie opens the console only.
    async with client.session.get(keyed.base + "/v1/endpoints") as api:
        assert api.status == 401
    # Logging out is a change like any other: this origin and the CSRF token.
    assert (await client.post("/console/logout", csrf="0" * 64)).status == 403
    r = await client.post("/console/logout", csrf=page.csrf())
    assert r.status == 303 and r.headers["Location"] == "/console/login"
    assert (await client.get("/console/endpoints")).status == 303


async def test_posts_need_this_origin_and_the_csrf_token(client: ConsoleClient) -> None:
    await logged_in(client)
    page = await client.get("/console/endpoints/new")
    csrf = page.csrf()
    form = {"url": "http://127.0.0.1:9/hook", "events": "*", "format": "json", "delay_s": "0"}
    r = await client.post("/console/endpoints", form, csrf=csrf, origin=None)
    assert r.status == 403
    r = await client.post("/console/endpoints", form, csrf=csrf, origin="https://evil.example")
    assert r.status == 403
    r = await client.post("/console/endpoints", form, csrf="0" * 64)
    assert r.status == 403
    r = await client.post("/console/endpoints", form, csrf=csrf)
    assert r.status == 303 and r.headers["Location"].startswith("/console/endpoints/ep_")
    # A login form posted from another origin is refused too.
    r = await client.post("/console/login", {"api_key": OPS_KEY}, origin="https://evil.example")
    assert r.status == 403


async def test_security_headers_and_htmx_config(client: ConsoleClient) -> None:
    await logged_in(client)
    page = await client.get("/console/endpoints")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp
    assert "frame-ancestors 'none'" in csp and page.headers["X-Frame-Options"] == "DENY"
    assert '"allowEval": false' in page.text and '"allowScriptTags": false' in page.text
    assert "<script>" not in page.text and " style=" not in page.text


async def test_static_files_are_versioned_and_match_their_recorded_hashes(
    client: ConsoleClient,
) -> None:
    vendored = (STATIC / "VENDORED.md").read_text()
    for name in ("htmx.min.js", "sse.js"):
        digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()
        assert digest in vendored, name
    assert "| 2.0.11 |" in vendored
    page = await client.get("/console/login")
    r = await client.get("/console/static/console.css")
    assert r.status == 200 and r.headers["Cache-Control"] == "no-cache"
    await logged_in(client)
    page = await client.get("/console/endpoints")
    url = re.search(r'src="(/console/static/htmx\.min\.js\?v=[0-9a-f]+)"', page.text)
    assert url is not None
    r = await client.get(url.group(1))
    assert r.status == 200 and "immutable" in r.headers["Cache-Control"]
    assert (await client.get("/console/static/../config.py")).status == 404


async def test_the_form_shows_the_apis_own_validation(client: ConsoleClient) -> None:
    await logged_in(client)
    csrf = (await client.get("/console/endpoints/new")).csrf()
    form = {
        "url": "ftp://nope",
        "events": "no.such.type",
        "delay_s": "soon",
        "max_in_flight": "100000",
        "format": "json",
    }
    r = await client.post("/console/endpoints", form, csrf=csrf)
    assert r.status == 422
    assert 'data-test="problem-url"' in r.text and "expected an absolute" in r.text
    assert "unknown event type" in r.text
    assert 'data-test="problem-delay_s"' in r.text and 'data-test="problem-max_in_flight"' in r.text
    assert 'value="ftp://nope"' in r.text  # what was typed stays in the form


async def test_events_preview_lists_the_matching_catalog_types(client: ConsoleClient) -> None:
    await logged_in(client)
    r = await client.get("/console/events-preview?events=call.*", htmx=True)
    assert "call.completed" in r.text and "call.started" in r.text
    assert "invoice.paid" not in r.text and "<html" not in r.text


async def test_a_tenant_scoped_key_sees_only_its_tenant(keyed: Daemon) -> None:
    mine = await keyed.endpoint("http://127.0.0.1:9/a", tenant="acme")
    other = await keyed.endpoint("http://127.0.0.1:9/b", tenant="globex")
    c = ConsoleClient(keyed.base)
    try:
        await logged_in(c, ACME_KEY)
        board = await c.get("/console/endpoints")
        assert mine["id"] in board.text and other["id"] not in board.text
        assert (await c.get(f"/console/endpoints/{other['id']}")).status == 404
        assert (await c.get(f"/console/endpoints/{mine['id']}")).status == 200
        r = await c.get("/console/deliveries?tenant=globex")
        assert r.status == 403
        csrf = board.csrf()
        r = await c.post(f"/console/endpoints/{other['id']}/delete", csrf=csrf)
        assert r.status == 404
        assert (await keyed.get(f"/v1/endpoints/{other['id']}")).status == 200
    finally:
        await c.close()


async def test_reveal_needs_a_post_and_is_logged_without_the_secret(
    keyed: Daemon, client: ConsoleClient
) -> None:
    ep = await keyed.endpoint("http://127.0.0.1:9/a")
    await logged_in(client)
    page = await client.get(f"/console/endpoints/{ep['id']}")
    assert ep["secret"] not in page.text and 'data-test="reveal-secret"' in page.text
    r = await client.post(f"/console/endpoints/{ep['id']}/secret", csrf=page.csrf())
    assert r.status == 200 and ep["secret"] in r.text
    log = keyed.log_text()
    assert f"event=secret_revealed endpoint={ep['id']} by=ops" in log
    assert ep["secret"] not in log
    r = await client.post(
        f"/console/endpoints/{ep['id']}/rotate", {"grace_s": "600"}, csrf=page.csrf()
    )
    assert r.status == 303
    page = await client.get(f"/console/endpoints/{ep['id']}")
    assert 'data-test="previous-secret"' in page.text
    secret = (await keyed.get(f"/v1/endpoints/{ep['id']}/secret")).json
    assert secret["secret"] != ep["secret"] and len(secret["previous_secrets"]) == 1


@BOTH
async def test_delivery_log_filters_fragments_and_bulk_retry(
    make_daemon: Callable[..., Awaitable[Daemon]], make_receiver: Callable[..., Awaitable[Receiver]]
) -> None:
    d = await make_daemon({"delivery": {"retry_schedule_s": [0.1]}})
    good = await make_receiver()
    bad = await make_receiver(default=503)
    ep_good = await d.endpoint(good.url, events=["call.*"])
    ep_bad = await d.endpoint(bad.url, events=["invoice.paid"])
    for _ in range(3):
        await d.publish("call.completed")
        await d.publish("invoice.paid")

    async def settled() -> bool:
        r = await d.get("/v1/deliveries?status=failed")
        return len(r.json["data"]) == 3

    await wait_until(settled, 15, "three failed deliveries")
    c = ConsoleClient(d.base)
    try:
        page = await c.get("/console/deliveries")
        assert page.text.count('data-test="delivery-row"') == 6
        page = await c.get("/console/deliveries?class=5xx")
        assert page.text.count('data-test="delivery-row"') == 3 and ep_bad["id"] not in page.text
        page = await c.get(f"/console/deliveries?endpoint_id={ep_good['id']}&status=delivered")
        assert page.text.count('data-test="delivery-row"') == 3
        frag = await c.get("/console/deliveries?class=2xx", htmx=True, **{"HX-Target": "log-rows"})
        assert "<html" not in frag.text and frag.text.count('data-test="delivery-row"') == 3
        page = await c.get("/console/deliveries?window=1h&event_type=invoice.paid")
        assert page.text.count('data-test="delivery-row"') == 3
        # Bulk retry: the count of everything the filter matches, then all of it requeued.
        preview = await c.get("/console/deliveries/retry-all?class=5xx")
        assert "<b>3</b> failed or skipped" in preview.text
        bad.default = 200
        r = await c.post("/console/deliveries/retry-all", {"class": "5xx"}, csrf=preview.csrf())
        assert r.status == 303 and "retried=3" in r.headers["Location"]
        await bad.wait_for(6, 15)
        # Search jumps to any id.
        some = (await d.get("/v1/deliveries?limit=1")).json["data"][0]
        for value, where in (
            (some["id"], f"/console/deliveries/{some['id']}"),
            (some["event_id"], f"/console/events/{some['event_id']}"),
            (ep_bad["id"], f"/console/endpoints/{ep_bad['id']}"),
        ):
            r = await c.get(f"/console/search?q={value}")
            assert r.status == 303 and r.headers["Location"] == where
        assert (await c.get("/console/search?q=dlv_nope")).status == 404
    finally:
        await c.close()


async def test_delivery_page_shows_the_exact_request_and_retries(
    make_daemon: Callable[..., Awaitable[Daemon]], receiver: Receiver
) -> None:
    d = await make_daemon()
    ep = await d.endpoint(receiver.url, headers={"X-Team": "blue"})
    ev = await d.publish("call.completed", {"caller": "alice"})
    await receiver.wait_for(1)
    dl = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"][0]
    await d.wait_status(dl["id"], "delivered")
    c = ConsoleClient(d.base)
    try:
        page = await c.get(f"/console/deliveries/{dl['id']}")
        sent = receiver.received[0]
        assert f"POST {receiver.url}" in page.text
        assert sent.headers["webhook-signature"] in page.text
        assert "X-Team: blue" in page.text
        assert sent.body.decode().replace('"', "&#34;") in page.text  # the exact body
        assert 'data-test="retry"' in page.text and "Resend now" in page.text
        r = await c.post(f"/console/deliveries/{dl['id']}/retry", csrf=page.csrf())
        assert r.status == 303
        await receiver.wait_for(2)
        await wait_until(lambda: _attempts(c, dl["id"], 2), 10, "the resend on the delivery page")
        assert ep["id"] in page.text
    finally:
        await c.close()


async def _attempts(c: ConsoleClient, delivery_id: str, n: int) -> bool:
    page = await c.get(f"/console/deliveries/{delivery_id}", htmx=True)
    return page.text.count('data-test="attempt"') >= n


async def test_live_stream_announces_new_deliveries(
    make_daemon: Callable[..., Awaitable[Daemon]],
) -> None:
    d = await make_daemon()
    await d.endpoint("http://127.0.0.1:9/x")
    got: list[str] = []
    async with aiohttp.ClientSession() as s, s.get(d.base + "/console/live") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert (await r.content.readline()).startswith(b"retry:")

        async def read() -> None:
            async for line in r.content:
                got.append(line.decode())
                if line.startswith(b"event: change"):
                    return

        reader = asyncio.create_task(read())
        await d.publish("call.completed")
        await asyncio.wait_for(reader, 10)
    assert any(line.startswith("event: change") for line in got)


async def test_console_can_be_turned_off(make_daemon: Callable[..., Awaitable[Daemon]]) -> None:
    d = await make_daemon({"console": {"enabled": False}})
    c = ConsoleClient(d.base)
    try:
        assert (await c.get("/console/endpoints")).status == 404
        assert (await d.post("/v1/portal-links", {"tenant": "acme"})).status == 409
    finally:
        await c.close()


def test_cookies_are_secure_over_tls(tmp_path: Path) -> None:
    """Secure whenever the request came over TLS; the portal's cookie may then be framed
    (SameSite=None) when frame_ancestors allows it, and is Lax otherwise."""
    import ssl

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from webhookd.api.context import STATE, State
    from webhookd.config import config_from_mapping
    from webhookd.console.security import cookie_args
    from webhookd.store.sqlite import SQLiteStore

    def args(tls: bool, portal: bool, frames: list[str]) -> dict[str, object]:
        app = web.Application()
        config = config_from_mapping({"console": {"frame_ancestors": frames}})
        app[STATE] = State(config=config, store=SQLiteStore(str(tmp_path / "x.db")))
        ctx = ssl.create_default_context() if tls else None
        request = make_mocked_request("POST", "/console/login", app=app, sslcontext=ctx)
        return cookie_args(request, portal=portal, max_age_s=60)

    assert args(False, False, [])["secure"] is False
    over_tls = args(True, False, [])
    assert over_tls["secure"] is True and over_tls["samesite"] == "Strict"
    assert over_tls["httponly"] is True and over_tls["path"] == "/console"
    assert args(True, True, [])["samesite"] == "Lax"
    framed = args(True, True, ["https://app.example.com"])
    assert framed["samesite"] == "None" and framed["secure"] is True
    assert args(False, True, ["https://app.example.com"])["samesite"] == "Lax"
