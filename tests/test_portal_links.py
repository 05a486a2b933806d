"""The tenant portal over plain HTTP: POST /v1/portal-links and its checks, opening a link
(the session, the token out of the address bar), capabilities, revocation, tampering,
framing, and a portal user trying another tenant's ids by every URL and form."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.conftest import Daemon, wait_until
from tests.console_client import ConsoleClient
from webhookd.timefmt import now_ms

OPS_KEY = "ops-key-" + "o" * 32
ACME_KEY = "acme-key-" + "a" * 32
CONFIG = {
    "api_keys": [
        {"name": "ops", "key": OPS_KEY},
        {"name": "acme-app", "key": ACME_KEY, "tenant": "acme"},
    ],
    "console": {"frame_ancestors": ["https://app.example.com"]},
}
BOTH = pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)


@pytest.fixture
async def d(make_daemon: Callable[..., Awaitable[Daemon]]) -> Daemon:
    daemon = await make_daemon(CONFIG)
    daemon.api_key = OPS_KEY
    return daemon


@pytest.fixture
async def portal(d: Daemon) -> AsyncIterator[ConsoleClient]:
    c = ConsoleClient(d.base)
    yield c
    await c.close()


async def open_link(c: ConsoleClient, url: str) -> None:
    path = url.split("://", 1)[1].split("/", 1)[1]
    r = await c.get("/" + path)
    assert r.status == 303, r.text
    assert r.headers["Location"] == "/portal/endpoints"  # the token leaves the address bar
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/portal" in cookie


async def test_links_are_checked(d: Daemon) -> None:
    r = await d.post("/v1/portal-links", {"tenant": "acme", "ttl_s": 600})
    assert r.status == 201
    assert r.json["url"].startswith(d.base + "/portal/t/")
    assert r.json["capabilities"] == ["manage_endpoints", "retry", "send_test"]
    assert r.json["expires_at"].endswith("Z")
    for body, loc in (
        ({}, "tenant"),
        ({"tenant": "acme", "ttl_s": 59}, "ttl_s"),
        ({"tenant": "acme", "ttl_s": 604801}, "ttl_s"),
        ({"tenant": "acme", "capabilities": ["admin"]}, "capabilities"),
        ({"tenant": "acme", "extra": 1}, "extra"),
    ):
        r = await d.post("/v1/portal-links", body)
        assert r.status == 422 and r.json["detail"][0]["loc"] == ["body", loc], (body, r)
    # A tenant-scoped key makes links for its own tenant only.
    assert (await d.post("/v1/portal-links", {"tenant": "acme"}, key=ACME_KEY)).status == 201
    assert (await d.post("/v1/portal-links", {"tenant": "globex"}, key=ACME_KEY)).status == 403
    assert (
        await d.post("/v1/portal-links/revoke", {"tenant": "globex"}, key=ACME_KEY)
    ).status == 403
    assert (await d.post("/v1/portal-links", {"tenant": "acme"}, key="")).status == 401
    assert "portal/t/" not in d.log_text()


@BOTH
async def test_a_portal_user_never_reaches_another_tenants_objects(
    make_daemon: Callable[..., Awaitable[Daemon]],
) -> None:
    d = await make_daemon(CONFIG)
    d.api_key = OPS_KEY
    mine = await d.endpoint("http://127.0.0.1:9/acme", tenant="acme")
    theirs = await d.endpoint("http://127.0.0.1:9/globex", tenant="globex")
    ev_theirs = await d.publish("call.completed", tenant="globex")
    await d.publish("call.completed", tenant="acme")
    dl_theirs = (await d.get(f"/v1/deliveries?event_id={ev_theirs['id']}")).json["data"][0]
    link = (
        await d.post(
            "/v1/portal-links",
            {
                "tenant": "acme",
                "capabilities": ["manage_endpoints", "read_secrets", "retry", "send_test"],
            },
        )
    ).json
    c = ConsoleClient(d.base)
    try:
        await open_link(c, link["url"])
        board = await c.get("/portal/endpoints")
        assert board.status == 200 and mine["id"] in board.text and theirs["id"] not in board.text
        assert "frame-ancestors https://app.example.com" in board.headers["Content-Security-Policy"]
        csrf = (await c.get(f"/portal/endpoints/{mine['id']}")).csrf()
        tid, did, eid = theirs["id"], dl_theirs["id"], ev_theirs["id"]
        for path in (
            f"/portal/endpoints/{tid}",
            f"/portal/endpoints/{tid}/edit",
            f"/portal/endpoints/{tid}/recover",
            f"/portal/deliveries/{did}",
            f"/portal/events/{eid}",
            f"/portal/search?q={tid}",
            f"/portal/search?q={did}",
            f"/portal/search?q={eid}",
        ):
            r = await c.get(path)
            assert r.status == 404, (path, r.status)
            assert theirs["url"] not in r.text and "globex" not in r.text
        for path, form in (
            (f"/portal/endpoints/{tid}/edit", {"url": "http://127.0.0.1:9/x", "events": "*"}),
            (f"/portal/endpoints/{tid}/active", {"active": "false"}),
            (f"/portal/endpoints/{tid}/delete", {}),
            (f"/portal/endpoints/{tid}/secret", {}),
            (f"/portal/endpoints/{tid}/rotate", {"grace_s": "0"}),
            (f"/portal/endpoints/{tid}/test", {"event_type": "webhookd.test"}),
            (f"/portal/endpoints/{tid}/recover", {"since": "2020-01-01T00:00:00Z"}),
            (f"/portal/deliveries/{did}/retry", {}),
        ):
            r = await c.post(path, form, csrf=csrf)
            assert r.status == 404, (path, r.status, r.text[:200])
            assert theirs["secret"] not in r.text
        # Filters naming the other tenant or its endpoint show nothing of it.
        r = await c.get("/portal/deliveries?tenant=globex")
        assert did not in r.text
        r = await c.get(f"/portal/deliveries?endpoint_id={tid}")
        assert did not in r.text and 'data-test="no-rows"' in r.text
        # A new endpoint made in the portal belongs to the tenant, whatever the form says.
        form = {"url": "http://127.0.0.1:9/new", "events": "*", "tenant": "globex", "delay_s": "0"}
        r = await c.post("/portal/endpoints", form, csrf=csrf)
        assert r.status == 303
        made = r.headers["Location"].split("/")[3].split("?")[0]
        assert (await d.get(f"/v1/endpoints/{made}")).json["tenant"] == "acme"
        after = await d.get(f"/v1/endpoints/{tid}")
        assert after.status == 200 and after.json["active"] and after.json["url"] == theirs["url"]
        # Nor does the operator console open with a portal session.
        assert (await c.get("/console/endpoints")).status == 303
    finally:
        await c.close()


async def test_capabilities_hide_controls_and_refuse_requests(
    d: Daemon, portal: ConsoleClient
) -> None:
    ep = await d.endpoint("http://127.0.0.1:9/acme", tenant="acme")
    link = (await d.post("/v1/portal-links", {"tenant": "acme", "capabilities": []})).json
    await open_link(portal, link["url"])
    page = await portal.get(f"/portal/endpoints/{ep['id']}")
    assert page.status == 200
    for control in ("edit", "disable", "delete", "reveal-secret", "rotate-secret", "send-test"):
        assert f'data-test="{control}"' not in page.text, control
    csrf = page.csrf()
    for path in ("delete", "secret", "rotate", "test", "active"):
        r = await portal.post(f"/portal/endpoints/{ep['id']}/{path}", csrf=csrf)
        assert r.status == 403, path
    assert (await portal.get("/portal/endpoints/new")).status == 403
    assert (await d.get(f"/v1/endpoints/{ep['id']}")).status == 200
    # The default capabilities leave secrets out.
    link = (await d.post("/v1/portal-links", {"tenant": "acme"})).json
    await open_link(portal, link["url"])
    page = await portal.get(f"/portal/endpoints/{ep['id']}")
    assert 'data-test="edit"' in page.text and 'data-test="reveal-secret"' not in page.text
    r = await portal.post(f"/portal/endpoints/{ep['id']}/secret", csrf=page.csrf())
    assert r.status == 403 and ep["secret"] not in r.text


async def test_revoked_expired_and_tampered_links_are_401(d: Daemon, portal: ConsoleClient) -> None:
    link = (await d.post("/v1/portal-links", {"tenant": "acme"})).json
    token = link["url"].rsplit("/", 1)[1]
    body, mac = token.split(".")
    tampered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + mac
    r = await portal.get(f"/portal/t/{tampered}")
    assert r.status == 401 and 'data-test="unauthorized"' in r.text
    assert (await portal.get("/portal/t/garbage")).status == 401
    await open_link(portal, link["url"])
    assert (await portal.get("/portal/endpoints")).status == 200
    made_at = now_ms()
    await wait_until(lambda: now_ms() > made_at, 2, "the clock to move on")
    r = await d.post("/v1/portal-links/revoke", {"tenant": "acme"}, key=ACME_KEY)
    assert r.status == 200
    assert (await portal.get("/portal/endpoints")).status == 401  # the session ends at once
    assert (await portal.get("/" + link["url"].split("/", 3)[3])).status == 401
    revoked_at = now_ms()
    await wait_until(lambda: now_ms() > revoked_at, 2, "the clock to move on")
    fresh = (await d.post("/v1/portal-links", {"tenant": "acme"})).json
    await open_link(portal, fresh["url"])
    assert (await portal.get("/portal/endpoints")).status == 200
    assert "event=portal_revoked tenant=acme" in d.log_text()
