"""The console's script shows a chart's amounts as the server's SVG and CSV do: exactly,
from integers (console.js ``amountOf`` then ``money``), in Debian's chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.console import charts
from tests.support.adminkit import admin_server, admin_settings

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
playwright_api = pytest.importorskip("playwright.async_api")

# Sub-cent halves (a float rounded 15000 down and 25000 up), negatives, the largest
# integer a double holds exactly.
MICROS = [0, 1, 5_000, 15_000, 25_000, 35_000, 1_234_565, -150_000, -1, 200_000,
          100_000_000, 2_000_000_000, 123_456_789_000_000, 9_007_199_254_740_991]  # fmt: skip


async def test_the_script_shows_the_servers_figures(redis_url: str, tmp_path: Path) -> None:
    async with (
        admin_server(admin_settings(redis_url, tmp_path)) as admin,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(admin.url + "/ui")
            await page.wait_for_selector("#token")
            shown = await page.evaluate("ms => ms.map(m => money(amountOf(m)))", MICROS)
        finally:
            await browser.close()
    assert shown == [charts.money(m) for m in MICROS]
