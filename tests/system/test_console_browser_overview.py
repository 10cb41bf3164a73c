"""The console's overview in a real browser (Debian's chromium, Playwright) for a
workspace whose apps stopped or owe money: the banner names and links each stopped app,
and the paid balance card lists every app balance that is not zero, negative ones marked.
The browser helpers (axe-core, 390 px, screenshots, console errors) are
``tests.system.test_console_browser``'s.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.support.adminkit import Admin, admin_server
from tests.support.settings import make_settings
from tests.system.test_console_browser import ARGS, CHROMIUM, Browser, playwright_api

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")


def figures(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@asynccontextmanager
async def signed_in(admin: Admin, token: str, name: str) -> AsyncIterator[Browser]:
    """A chromium page signed in to ``admin``'s console as ``token``, on the overview."""
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            b = await Browser.open(browser, name)
            await b.page.goto(admin.url + "/ui")
            await b.page.fill("#token", token)
            await b.page.click("button[type=submit]")
            await b.page.wait_for_selector("#forecast")
            await b.settle()
            yield b
            assert b.errors == []
        finally:
            await browser.close()


async def test_stopped_apps_banner_names_and_links_each_app(redis_url: str, tmp_path: Path) -> None:
    settings = make_settings(redis_url, store_url=f"sqlite:///{tmp_path}/s.db", operator=True)
    async with admin_server(settings) as admin:
        tok, ws = await admin.owner_workspace()
        await admin.new_app(tok, ws, name="Helpdesk")  # on free credits: running
        stopped = {}
        for name in ("Night bot", "Day bot"):  # paid credits only, none bought: stopped
            stopped[name] = await admin.new_app(tok, ws, name=name)
            await admin.ok("PATCH", f"/v1/apps/{stopped[name]}", tok, {"use_free_credits": False})
        async with signed_in(admin, tok, "stopped-apps") as b:
            banner = figures(await b.text(".banner.bad"))
            assert banner == (
                "2 apps have stopped responding on channels: "
                "Night bot (out of funds), Day bot (out of funds)"
            )
            links = await b.page.eval_on_selector_all(
                ".banner.bad a", "els => els.map(a => [a.textContent, a.getAttribute('href')])"
            )
            assert links == [[n, f"#/ws/{ws}/app/{a}"] for n, a in stopped.items()]
            await b.check("overview")
            await b.page.click(".banner.bad a >> text=Day bot")
            await b.page.wait_for_selector(f"text=id {stopped['Day bot']}")
            assert await b.page.evaluate("location.hash") == f"#/ws/{ws}/app/{stopped['Day bot']}"
