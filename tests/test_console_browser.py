"""The console and the portal in a real browser: Playwright driving Debian's Chromium
(/usr/bin/chromium, installed by .ci/run) against a real daemon and scripted receivers on
127.0.0.1. One test per point of the console's issue; every wait is on a condition
(Playwright's expect), never a fixed sleep. A failing test leaves a screenshot in
test-artifacts/; WEBHOOKD_DOC_SHOTS=1 also refreshes the screenshots in docs/img/.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, Receiver, wait_until

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
DOC_IMG = ROOT / "docs" / "img"
TIMEOUT_MS = 15_000
OPS_KEY = "ops-key-" + "o" * 32

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # pragma: no cover - the test extra installs it
    async_playwright = None  # type: ignore[assignment]

if async_playwright is None or not os.access(CHROMIUM, os.X_OK):
    reason = f"the browser tests need playwright and {CHROMIUM} (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        raise RuntimeError(reason)
    pytest.skip(reason, allow_module_level=True)

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        await b.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    p = await context.new_page()
    p.csp_errors = []  # type: ignore[attr-defined]
    p.on("console", lambda m: _csp(p, m.text))
    yield p
    await context.close()


def _csp(page: Page, text: str) -> None:
    if "Content Security Policy" in text or "Refused to" in text:
        page.csp_errors.append(text)  # type: ignore[attr-defined]


def shots(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """A failing test saves a screenshot of its page in test-artifacts/."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        try:
            await test(*args, **kwargs)
        except BaseException:
            page = kwargs.get("page")
            if page is not None:
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / f"{test.__name__}.png"), full_page=True)
            raise

    return run


async def doc_shot(page: Page, name: str) -> None:
    if os.environ.get("WEBHOOKD_DOC_SHOTS") == "1":
        DOC_IMG.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(DOC_IMG / f"{name}.png"), full_page=True)


async def _failing_setup(d: Daemon, bad: Receiver, n: int) -> dict[str, Any]:
    ep = await d.endpoint(bad.url, description="billing receiver")
    for i in range(n):
        await d.publish("call.completed", {"call": i})
    return ep


# 1. Stack: vendored htmx with eval and script tags off, a strict CSP, no JS needed.
@shots
async def test_stack_htmx_config_csp_and_no_javascript(
    page: Page, browser: Browser, daemon: Daemon, receiver: Receiver
) -> None:
    await daemon.endpoint(receiver.url)
    await page.goto(daemon.base + "/console/endpoints")
    await expect(page.locator('[data-test="endpoint-row"]')).to_have_count(1)
    config = await page.evaluate(
        "() => [htmx.version, htmx.config.allowEval, htmx.config.allowScriptTags]"
    )
    assert config == ["2.0.11", False, False]
    await page.click('[data-test="nav-deliveries"]')
    await expect(page).to_have_url(re.compile(r"/console/deliveries$"))
    assert page.csp_errors == []  # type: ignore[attr-defined]
    # Without JavaScript: plain links and forms do everything.
    plain = await browser.new_context(java_script_enabled=False)
    p = await plain.new_page()
    await p.goto(daemon.base + "/console/endpoints/new")
    await p.fill('[data-test="url"]', receiver.url)
    await p.click('[data-test="save"]')
    await expect(p.locator('[data-test="created"]')).to_be_visible()
    await p.click('[data-test="send-test"]')
    await expect(p.locator('[data-test="delivery-id"]')).to_be_visible()
    await receiver.wait_for(1)
    await plain.close()


# 2. Endpoints board: create (with the events preview), edit, disable, enable, delete.
@shots
async def test_endpoints_board_create_edit_disable_enable_delete(
    page: Page, daemon: Daemon, receiver: Receiver
) -> None:
    await page.goto(daemon.base + "/console/endpoints")
    await page.click('[data-test="new-endpoint"]')
    await page.fill('[data-test="url"]', receiver.url)
    await page.fill('[data-test="events"]', "call.*")
    preview = page.locator('[data-test="events-preview"]')
    await expect(preview).to_contain_text("call.completed")
    await expect(preview).not_to_contain_text("invoice.paid")
    await page.fill('[data-test="max_in_flight"]', "3")
    await page.click('[data-test="save"]')
    await expect(page.locator('[data-test="created"]')).to_be_visible()
    ep_id = page.url.rsplit("/", 1)[1].split("?")[0]
    await page.click('[data-test="edit"]')
    await page.fill('[data-test="description"]', "renamed")
    await page.fill('[data-test="rate_limit_per_s"]', "-1")
    await page.click('[data-test="save"]')
    await expect(page.locator('[data-test="problem-rate_limit_per_s"]')).to_be_visible()
    await page.fill('[data-test="rate_limit_per_s"]', "5")
    await page.click('[data-test="save"]')
    await expect(page.locator('[data-test="edit"]')).to_be_visible()
    got = (await daemon.get(f"/v1/endpoints/{ep_id}")).json
    assert got["description"] == "renamed" and got["rate_limit_per_s"] == 5
    assert got["max_in_flight"] == 3 and got["events"] == ["call.*"]
    await page.click('[data-test="pause"]')
    await expect(page.locator('[data-test="state"]')).to_have_text("paused")
    assert (await daemon.get(f"/v1/endpoints/{ep_id}")).json["paused"] is True
    await page.click('[data-test="resume"]')
    await expect(page.locator('[data-test="state"]')).to_have_text("active")
    await page.click('[data-test="disable"]')
    await expect(page.locator('[data-test="disabled-panel"]')).to_be_visible()
    await page.click('[data-test="enable"]')
    await expect(page.locator('[data-test="state"]')).to_have_text("active")
    await page.goto(daemon.base + "/console/endpoints")
    await expect(page.locator('[data-test="in-flight"]')).to_have_text("0 / 3")
    await doc_shot(page, "endpoints")
    await page.goto(daemon.base + f"/console/endpoints/{ep_id}")
    await page.click('[data-test="delete"]')
    await expect(page.locator('[data-test="endpoint-row"]')).to_have_count(0)
    assert (await daemon.get(f"/v1/endpoints/{ep_id}")).status == 404


# 3. Delivery log: filters, the search box, live rows, pause.
@shots
async def test_delivery_log_filters_search_live_and_pause(
    page: Page, daemon: Daemon, make_receiver: Callable[..., Awaitable[Receiver]]
) -> None:
    good = await make_receiver()
    await daemon.endpoint(good.url)
    first = await daemon.publish("call.completed")
    await good.wait_for(1)
    await page.goto(daemon.base + "/console/deliveries")
    rows = page.locator('[data-test="delivery-row"]')
    await expect(rows).to_have_count(1)
    await expect(page.locator('[data-test="live"]')).to_be_visible()
    await daemon.publish("invoice.paid")
    await expect(rows).to_have_count(2)  # arrived live, without a reload
    await doc_shot(page, "deliveries")
    await page.select_option('[data-test="f-status"]', "delivered")
    await page.fill('[data-test="f-type"]', "invoice.paid")
    await page.click('[data-test="apply"]')
    await expect(rows).to_have_count(1)
    await page.click('[data-test="pause"]')
    await expect(page.locator('[data-test="paused"]')).to_be_visible()
    assert await page.locator("[sse-connect]").count() == 0
    await page.fill('[data-test="search"]', first["id"])
    await page.press('[data-test="search"]', "Enter")
    await expect(page.locator('[data-test="event-id"]')).to_have_text(first["id"])
    await doc_shot(page, "event")


# 4. Delivery page: the exact request and response; retry now, the attempt appears live.
@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
@shots
async def test_delivery_page_shows_attempts_and_retry_appears_live(
    page: Page, make_daemon: Callable[..., Awaitable[Daemon]], receiver: Receiver
) -> None:
    d = await make_daemon()
    await d.endpoint(receiver.url)
    ev = await d.publish("call.completed", {"caller": "alice"})
    await receiver.wait_for(1)
    dl = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"][0]
    await d.wait_status(dl["id"], "delivered")
    await page.goto(d.base + f"/console/deliveries/{dl['id']}")
    attempts = page.locator('[data-test="attempt"]')
    await expect(attempts).to_have_count(1)
    request = page.locator('[data-test="request"]').first
    await expect(request).to_contain_text(receiver.received[0].headers["webhook-signature"])
    await expect(request).to_contain_text('"caller":"alice"')
    await expect(page.locator('[data-test="response"]').first).to_contain_text("HTTP 200")
    await page.click('[data-test="retry"]')
    await expect(attempts).to_have_count(2)
    await expect(page.locator('[data-test="attempt-status"]').first).to_have_text("200")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.locator('[data-test="copy-request"]').first.click()
    copied = await page.evaluate("() => navigator.clipboard.readText()")
    assert copied.startswith(f"POST {receiver.url}")
    await doc_shot(page, "delivery")


# 5. Disabled endpoints: why, the skipped deliveries, re-enable and recover with a count;
#    bulk retry of everything a filter matches.
@shots
async def test_disabled_endpoint_recover_and_bulk_retry(
    page: Page, make_daemon: Callable[..., Awaitable[Daemon]], receiver: Receiver
) -> None:
    d = await make_daemon({"delivery": {"retry_schedule_s": [0.1]}})
    receiver.statuses = [410]
    receiver.default = 503
    ep = await _failing_setup(d, receiver, 1)
    await wait_until(lambda: _inactive(d, ep["id"]), 10, "the endpoint to be disabled by the 410")
    for i in range(3):
        await d.publish("call.completed", {"while_disabled": i})
    await page.goto(d.base + f"/console/endpoints/{ep['id']}")
    panel = page.locator('[data-test="disabled-panel"]')
    await expect(panel).to_contain_text("410 Gone")
    await expect(page.locator('[data-test="skipped-link"]')).to_contain_text("4 skipped")
    await doc_shot(page, "disabled")
    await page.fill('[data-test="recover-since"]', "2020-01-01T00:00:00Z")
    await page.click('[data-test="recover-preview"]')
    await expect(page.locator('[data-test="recover-count"]')).to_contain_text("4 failed or skipped")
    await page.click('[data-test="recover-confirm"]')
    await expect(page.locator('[data-test="state"]')).to_have_text("active")
    # The one answered 410 and the 3 published meanwhile, each tried twice (503) again.
    await receiver.wait_for(9)
    await wait_until(lambda: _failed(d, 4), 10, "four failed deliveries")
    receiver.default = 200
    await page.goto(d.base + "/console/deliveries?class=5xx")
    await page.click('[data-test="retry-all"]')
    await expect(page.locator('[data-test="retry-all-count"]')).to_contain_text("4 failed")
    await page.click('[data-test="retry-all-confirm"]')
    await expect(page.locator('[data-test="retried"]')).to_contain_text("4 deliveries")
    await receiver.wait_for(13)


async def _inactive(d: Daemon, endpoint_id: str) -> bool:
    return not (await d.get(f"/v1/endpoints/{endpoint_id}")).json["active"]


async def _failed(d: Daemon, n: int) -> bool:
    return len((await d.get("/v1/deliveries?status=failed")).json["data"]) == n


# 6. Test events and secrets: send one and watch it arrive; reveal; rotate with grace.
@shots
async def test_send_test_event_reveal_and_rotate_secret(
    page: Page, daemon: Daemon, receiver: Receiver
) -> None:
    ep = await daemon.endpoint(receiver.url)
    await page.goto(daemon.base + f"/console/endpoints/{ep['id']}")
    await page.select_option('[data-test="test-type"]', "invoice.paid")
    await page.fill('[data-test="test-payload"]', '{"amount": 42}')
    await page.click('[data-test="send-test"]')
    await expect(page.locator('[data-test="delivery-status"]')).to_have_text("delivered")
    await expect(page.locator('[data-test="request"]').first).to_contain_text('"amount":42')
    assert b'"amount":42' in receiver.received[0].body
    await page.goto(daemon.base + f"/console/endpoints/{ep['id']}")
    await expect(page.locator('[data-test="secret-value"]')).to_have_count(0)
    await page.click('[data-test="reveal-secret"]')
    await expect(page.locator('[data-test="secret-value"]')).to_have_text(ep["secret"])
    await page.goto(daemon.base + f"/console/endpoints/{ep['id']}")
    await page.fill('[data-test="grace"]', "3600")
    await page.click('[data-test="rotate-secret"]')
    await expect(page.locator('[data-test="previous-secret"]')).to_contain_text("keeps signing")
    assert "event=secret_revealed" in daemon.log_text()


# 7. Charts per endpoint and overall, three ranges.
@shots
async def test_charts_per_endpoint_and_overall(
    page: Page, daemon: Daemon, make_receiver: Callable[..., Awaitable[Receiver]]
) -> None:
    ok = await make_receiver()
    bad = await make_receiver(default=500)
    ep = await daemon.endpoint(ok.url)
    await daemon.endpoint(bad.url)
    for i in range(3):
        await daemon.publish("call.completed", {"i": i})
    await ok.wait_for(3)
    await bad.wait_for(3)
    await page.goto(daemon.base + f"/console/endpoints/{ep['id']}")
    bars = page.locator('[data-test="chart-attempts"] rect.ok')
    await expect(page.locator('[data-test="chart-codes"]')).to_contain_text("200")
    await page.click('[data-test="range-1h"]')
    await expect(page).to_have_url(re.compile(r"range=1h"))
    assert await bars.count() == 60
    await page.click('[data-test="nav-charts"]')
    codes = page.locator('[data-test="chart-codes"]')
    await expect(codes).to_contain_text("500")
    await expect(codes).to_contain_text("200")
    await page.click('[data-test="range-7d"]')
    await expect(page.locator('[data-test="chart-latency"] polyline')).to_have_count(2)
    await doc_shot(page, "charts")


# 8. Tenant portal: a link, one tenant only, every other tenant's id answers nothing.
@shots
async def test_portal_shows_one_tenant_and_nothing_of_another(
    page: Page, make_daemon: Callable[..., Awaitable[Daemon]], receiver: Receiver
) -> None:
    d = await make_daemon({"api_keys": [{"name": "ops", "key": OPS_KEY}]})
    d.api_key = OPS_KEY
    mine = await d.endpoint(receiver.url, tenant="acme")
    theirs = await d.endpoint(receiver.url + "/globex", tenant="globex")
    ev = await d.publish("call.completed", tenant="globex")
    await d.publish("call.completed", tenant="acme")
    await receiver.wait_for(2)
    dl = (await d.get(f"/v1/deliveries?event_id={ev['id']}")).json["data"][0]
    link = (await d.post("/v1/portal-links", {"tenant": "acme"})).json
    await page.goto(link["url"])
    await expect(page).to_have_url(re.compile(r"/portal/endpoints$"))
    await expect(page.locator('[data-test="who"]')).to_have_text("tenant acme")
    await expect(page.locator('[data-test="endpoint-row"]')).to_have_count(1)
    await expect(page.locator(f'[data-id="{mine["id"]}"]')).to_be_visible()
    await doc_shot(page, "portal")
    for path in (
        f"/portal/endpoints/{theirs['id']}",
        f"/portal/deliveries/{dl['id']}",
        f"/portal/events/{ev['id']}",
        f"/portal/deliveries?endpoint_id={theirs['id']}",
    ):
        response = await page.goto(d.base + path)
        assert response is not None
        assert response.status in (200, 404), path
        assert theirs["url"] not in await page.content(), path
        assert "globex" not in await page.content(), path
    await page.fill('[data-test="search"]', theirs["id"])
    await page.press('[data-test="search"]', "Enter")
    await expect(page.locator('[data-test="error"]')).to_contain_text("no endpoint")
    await page.goto(d.base + "/console/endpoints")
    await expect(page).to_have_url(re.compile(r"/console/login$"))


# 9. Security: login with a key, an HttpOnly cookie scripts cannot read, logout.
@shots
async def test_login_cookie_is_httponly_and_logout_ends_it(
    page: Page, make_daemon: Callable[..., Awaitable[Daemon]]
) -> None:
    d = await make_daemon({"api_keys": [{"name": "ops", "key": OPS_KEY}]})
    await page.goto(d.base + "/console/endpoints")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await doc_shot(page, "login")
    await page.fill('[data-test="api-key"]', "wrong-" + "w" * 30)
    await page.click('[data-test="login"]')
    await expect(page.locator('[data-test="login-error"]')).to_be_visible()
    await page.fill('[data-test="api-key"]', OPS_KEY)
    await page.click('[data-test="login"]')
    await expect(page.locator('[data-test="who"]')).to_have_text("ops")
    assert await page.evaluate("() => document.cookie") == ""
    cookies = await page.context.cookies()
    [session] = [c for c in cookies if c["name"] == "webhookd_console"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    await page.click("text=Log out")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
    await page.goto(d.base + "/console/endpoints")
    await expect(page).to_have_url(re.compile(r"/console/login$"))
