"""The endpoint form's routing fields and their preview in a real browser (Playwright and
Debian's Chromium, as tests/test_console_browser.py): live with htmx while typing, and
without JavaScript through the form's Preview button."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.conftest import Daemon
from tests.test_console_browser import Browser, Page, browser, expect, page, shots

if TYPE_CHECKING:
    from playwright.async_api import Locator

__all__ = ["browser", "page"]  # the fixtures, used by name

BIG = '{"data.amount": {"$gt": 100}}'


def row(p: Page, event_id: str) -> Locator:
    return p.locator(f'[data-test="preview-row"][data-id="{event_id}"]')


@shots
async def test_the_preview_follows_the_filter_live_and_saving_keeps_it(
    page: Page, daemon: Daemon
) -> None:
    small = await daemon.publish(payload={"amount": 5})
    large = await daemon.publish(payload={"amount": 500}, channels=["eu"])
    await page.goto(daemon.base + "/console/endpoints/new")
    await page.fill('[data-test="url"]', "https://example.com/hooks")
    await page.fill('[data-test="events"]', "call.completed")
    await page.fill('[data-test="filter"]', BIG)
    await expect(row(page, large["id"])).to_have_attribute("data-verdict", "yes")
    await expect(row(page, small["id"])).to_have_attribute("data-verdict", "no: filter")
    await page.fill('[data-test="channels"]', "us")
    await expect(row(page, large["id"])).to_have_attribute("data-verdict", "no: channels")
    await page.fill('[data-test="filter"]', '{"data.amount": {"$gt": ')
    await expect(page.locator('[data-test="preview-problem"]')).to_contain_text("not valid JSON")
    await page.fill('[data-test="filter"]', BIG)
    await page.fill('[data-test="channels"]', "eu")
    await expect(row(page, large["id"])).to_have_attribute("data-verdict", "yes")
    await page.click('[data-test="save"]')
    await expect(page.locator('[data-test="created"]')).to_be_visible()
    [ep] = (await daemon.get("/v1/endpoints")).json["data"]
    assert ep["filter"] == {"data.amount": {"$gt": 100}} and ep["channels"] == ["eu"]


@shots
async def test_the_preview_works_without_javascript(browser: Browser, daemon: Daemon) -> None:
    small = await daemon.publish(payload={"amount": 5})
    large = await daemon.publish(payload={"amount": 500})
    plain = await browser.new_context(java_script_enabled=False)
    try:
        p = await plain.new_page()
        await p.goto(daemon.base + "/console/endpoints/new")
        await p.fill('[data-test="url"]', "https://example.com/hooks")
        await p.fill('[data-test="filter"]', BIG)
        await p.click('[data-test="preview-routing"]')
        await expect(row(p, large["id"])).to_have_attribute("data-verdict", "yes")
        await expect(row(p, small["id"])).to_have_attribute("data-verdict", "no: filter")
        # The form is still filled in, and saves from there.
        await expect(p.locator('[data-test="url"]')).to_have_value("https://example.com/hooks")
        await p.click('[data-test="save"]')
        await expect(p.locator('[data-test="created"]')).to_be_visible()
        [ep] = (await daemon.get("/v1/endpoints")).json["data"]
        assert ep["filter"] == {"data.amount": {"$gt": 100}}
    finally:
        await plain.close()
