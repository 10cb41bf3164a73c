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

import aiohttp
import pytest

from tests.support.adminkit import Admin, admin_server
from tests.support.bot import running_bot
from tests.support.settings import make_settings
from tests.support.stripe_standin import (
    intent_of,
    paid,
    refunded,
    settings_with_stripe,
    signed,
    stripe_standin,
)
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


async def stripe_event(admin: Admin, payload: bytes) -> str:
    headers = {"Stripe-Signature": signed(payload), "Content-Type": "application/json"}
    status, body = await admin.api(
        "POST", "/v1/payments/stripe/webhook", data=payload, headers=headers
    )
    assert status == 200, body
    return str(body["outcome"])


async def test_paid_balance_card_lists_every_app_balance_owed_ones_marked(
    redis_url: str, tmp_path: Path
) -> None:
    """An app whose payment was refunded after it spent some of it owes money (its paid
    balance is below zero): the card lists it, marked, with the apps that hold some."""
    async with stripe_standin() as stripe, running_bot() as bot:
        settings = settings_with_stripe(f"sqlite:///{tmp_path}/s.db", redis_url, stripe)
        async with admin_server(settings, traffic=True) as admin:
            tok, ws = await admin.owner_workspace()
            apps = {n: await admin.new_app(tok, ws, bot.url, name=n)
                    for n in ("Helpdesk", "Billing bot", "Idle bot")}  # fmt: skip
            await admin.ok("PATCH", f"/v1/apps/{apps['Billing bot']}", tok,
                           {"use_free_credits": False})  # fmt: skip
            sessions = {}
            for name in ("Helpdesk", "Billing bot"):  # $100.00 paid for each of the two
                body = {"amount": "100.00", "app_id": apps[name]}
                co = await admin.ok("POST", f"/v1/workspaces/{ws}/checkout", tok, body)
                sessions[name] = stripe.session_for(co["id"])
                assert await stripe_event(admin, paid(sessions[name])) == "credited"
            async with aiohttp.ClientSession() as http:
                for i in range(5):  # five sessions at $0.20 from Billing bot's own credit
                    url = f"{admin.traffic_url}/hooks/web/{apps['Billing bot']}/m"
                    headers = {"X-Channel-User-Id": f"u{i}"}
                    async with http.post(url, json={}, headers=headers) as r:
                        assert r.status == 200
            # Its $100.00 refunded in full: $1.00 spent is owed.
            refund = refunded(intent_of(sessions["Billing bot"]), 10_000, amount=10_000)
            assert await stripe_event(admin, refund) == "reversed"
            pu = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", tok)
            balances = {a["name"]: a["paid_balance"] for a in pu["apps"]}
            assert balances == {"Helpdesk": "100.00", "Billing bot": "-1.00", "Idle bot": "0.00"}
            async with signed_in(admin, tok, "owed") as b:
                card = ".card:has(h2:text-is('Paid balance'))"
                lines = await b.page.eval_on_selector_all(
                    f"{card} li", "els => els.map(li => [li.textContent, li.className])"
                )
                assert [[figures(t), c] for t, c in lines] == [
                    ["Helpdesk: $100.00", ""],
                    ["Billing bot: -$1.00 (owed after a refund or dispute)", "owed"],
                ]
                assert "Paid balance $99.00" in figures(await b.text(card))
                await b.check("overview")
