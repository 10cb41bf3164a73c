"""The owner's console in a real browser: Debian's chromium driven by Playwright through
the owner journey on a real ``creditgate serve`` (subprocess, real Redis, SQLite).

Every page is checked with axe-core (0 violations), must not scroll sideways at 390 px,
and is screenshot at 1440x900 and 390x844 into ``artifacts/screenshots``. Any browser
console error fails the test. Waits are for observed state (selectors, polled store
rows) with generous deadlines, so a loaded 2-core machine only makes it slower.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meter.store import open_store
from meter.usage.flusher import Flusher
from tests.support.adminkit import admin_server
from tests.support.bot import Bot, running_bot
from tests.support.servers import free_port
from tests.support.serving import Served, creditgate_serve
from tests.support.settings import OPERATOR_TOKEN, make_settings
from tests.support.stripe_standin import (
    SECRET_KEY,
    WEBHOOK_SECRET,
    StripeStandIn,
    paid,
    signed,
    stripe_standin,
)

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parents[1] / "data" / "axe" / "axe.min.js"
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
WAIT_MS = 90_000  # a loaded machine is slow, never wrong

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium")
playwright_api = pytest.importorskip("playwright.async_api")


class Api:
    """The admin API over HTTP, as the test's operator and users use it."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base = http, base

    async def call(self, method: str, path: str, token: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json() if r.content_type.endswith("json") else await r.text()
            assert r.status < 300, (method, path, r.status, data)
            return data


class Browser:
    """One chromium page with the journey's checks: axe, width, screenshots, errors."""

    def __init__(self, page: Any, name: str) -> None:
        self.page, self.name = page, name
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))

    @classmethod
    async def open(cls, browser: Any, name: str) -> Browser:
        """A new page in a context of its own (1440x900, waits up to WAIT_MS)."""
        ctx = await browser.new_context(viewport={"width": 1440, "height": 900})
        ctx.set_default_timeout(WAIT_MS)
        return cls(await ctx.new_page(), name)

    async def settle(self) -> None:
        """Until no loading state is left (polled: the page's CSP forbids eval, which
        ``wait_for_function`` needs)."""
        js = "!document.querySelector('[aria-busy=true]') && !document.querySelector('.loading')"
        deadline = asyncio.get_running_loop().time() + WAIT_MS / 1000
        while not await self.page.evaluate(js):
            assert asyncio.get_running_loop().time() < deadline, f"{self.name}: still loading"
            await asyncio.sleep(0.1)

    async def check(self, label: str) -> None:
        """axe-core, no sideways scrolling at 390 px, screenshots at both sizes."""
        await self.settle()
        # Evaluated through DevTools: the console's CSP (rightly) refuses injected scripts.
        await self.page.evaluate(AXE.read_text() + "\n;true")
        for width, height in ((1440, 900), (390, 844)):
            await self.page.set_viewport_size({"width": width, "height": height})
            await self.settle()
            result = await self.page.evaluate(
                "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
            )
            assert result == [], f"{self.name} {label} at {width}px: axe {result}"
            if width == 390:
                wide = await self.page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert wide <= 0, f"{self.name} {label}: scrolls sideways by {wide}px at 390px"
            SHOTS.mkdir(parents=True, exist_ok=True)
            path = SHOTS / f"{self.name}-{label}-{width}x{height}.png"
            await self.page.screenshot(path=str(path), full_page=True)
        await self.page.set_viewport_size({"width": 1440, "height": 900})
        assert self.errors == [], f"{self.name} {label}: console errors {self.errors}"

    async def goto_hash(self, fragment: str) -> None:
        await self.page.evaluate(f"location.hash = {fragment!r}")
        await self.settle()

    async def text(self, selector: str = "main") -> str:
        return str(await self.page.inner_text(selector))


@pytest.fixture
async def bot() -> AsyncIterator[Bot]:
    async with running_bot() as b:
        yield b


async def wait_until(cond: Any, what: str, within_s: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await cond():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


def figures(text: str) -> str:
    return re.sub(r"\s+", " ", text)


async def test_owner_journey_in_the_console(redis_url: str, tmp_path: Path, bot: Bot) -> None:
    async with (
        stripe_standin() as stripe,
        creditgate_serve(
            redis_url, tmp_path, operator_token=OPERATOR_TOKEN, flush_interval_s=0.2,
            flush_bucket_s=1, flush_grace_s=0.2, stripe_api_base=stripe.url,
            stripe_secret_key=SECRET_KEY, stripe_webhook_secret=WEBHOOK_SECRET,
        ) as served,
        aiohttp.ClientSession() as http,
        playwright_api.async_playwright() as pw,
    ):  # fmt: skip
        await journey(served, Api(http, served.admin), http, bot, pw, stripe)


async def journey(
    served: Served, api: Api, http: aiohttp.ClientSession, bot: Bot, pw: Any, stripe: StripeStandIn
) -> None:
    op = OPERATOR_TOKEN
    owner = await api.call("POST", "/v1/users", op, {"email": "ada@example.com", "name": "Ada"})
    collab = await api.call("POST", "/v1/users", op, {"email": "cy@example.com", "name": "Cy"})
    ws = (await api.call("POST", "/v1/workspaces", owner["token"], {"name": "Acme"}))["id"]
    body = {"name": "Helpdesk", "product": "automation", "upstream_url": bot.url}
    app = await api.call("POST", f"/v1/workspaces/{ws}/apps", owner["token"], body)
    await api.call("POST", f"/v1/apps/{app['id']}/collaborators", owner["token"],
                   {"user_id": collab["id"], "role": "viewer"})  # fmt: skip

    browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
    try:
        b = await Browser.open(browser, "owner")
        ctx = b.page.context

        # Sign in: the token goes in a password field, never into the URL or storage.
        await b.page.goto(served.admin + "/ui")
        await b.page.wait_for_selector("#token")
        await b.check("sign-in")
        await b.page.fill("#token", owner["token"])
        await b.page.click("button[type=submit]")
        await b.page.wait_for_selector("#forecast")
        assert owner["token"] not in b.page.url
        stored = await b.page.evaluate(
            "JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
        )
        assert owner["token"] not in stored
        cookies = await ctx.cookies()
        [cookie] = [c for c in cookies if c["name"] == "cg_session"]
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        assert owner["token"] not in cookie["value"]

        # Overview figures equal plan-usage.
        pu = await api.call("GET", f"/v1/workspaces/{ws}/plan-usage", owner["token"])
        text = figures(await b.text())
        assert "$500.00" in text
        assert "of $500.00 granted" in text
        assert f"{int(pu['allowed_sessions']):,} sessions" in text
        assert "expires in 90 days" in text
        await b.check("overview")

        # Traffic through /hooks shows in the chart once flushed.
        for i in range(5):
            url = f"{served.traffic}/hooks/web/{app['id']}/msg"
            async with http.post(url, json={"t": i}, headers={"X-Channel-User-Id": f"u{i}"}) as r:
                assert r.status == 200, await r.text()
        store = open_store(served.store_url)
        try:

            async def flushed() -> bool:
                return (await store.usage_totals(ws)).sessions == 5

            await wait_until(flushed, "the flush of 5 sessions")
        finally:
            await store.close()
        await b.goto_hash(f"#/ws/{ws}/usage")
        await b.page.wait_for_selector("#usage-chart svg")
        assert "total: 5" in figures(await b.text("#usage-chart .legend"))
        await b.check("usage")

        await b.goto_hash(f"#/ws/{ws}/apps")
        await b.page.wait_for_selector(".spark-slot svg")
        await b.check("apps")
        await b.goto_hash(f"#/ws/{ws}/app/{app['id']}")
        await b.page.wait_for_selector("#sessions table")
        assert len(await b.page.query_selector_all("#sessions tbody tr")) == 5
        await b.check("app")

        # Add funds: the console opens the provider's checkout (its page stood in here);
        # the provider's signed event credits the payment; balance and history update.
        await b.goto_hash(f"#/ws/{ws}/billing")
        await b.page.wait_for_selector("#history table")
        await b.check("billing")
        await ctx.route("https://checkout.stripe.test/**", lambda route: route.fulfill(
            status=200, content_type="text/html",
            body="<!doctype html><html lang=en><title>Pay</title><h1>Stripe checkout</h1></html>",
        ))  # fmt: skip
        await b.page.fill("#f-amount", "250.00")
        await b.page.click("text=Continue to payment")
        await b.page.wait_for_url("https://checkout.stripe.test/**")
        [session] = stripe.sessions.values()
        payload = paid(session)
        headers = {"Stripe-Signature": signed(payload), "Content-Type": "application/json"}
        hook = served.admin + "/v1/payments/stripe/webhook"
        async with http.post(hook, data=payload, headers=headers) as r:
            assert r.status == 200
            assert (await r.json())["outcome"] == "credited"
        await b.page.goto(served.admin + f"/ui#/ws/{ws}/billing")
        await b.page.wait_for_selector("#history td:has-text('checkout')")
        assert "$250.00" in figures(await b.text("#history"))
        await b.settle()
        await b.goto_hash(f"#/ws/{ws}/overview")
        await b.page.wait_for_selector("#forecast")
        assert "Paid balance $250.00" in figures(await b.text())

        # Request the upgrade in the console; the operator grants it.
        await b.goto_hash(f"#/ws/{ws}/billing")
        await b.page.check("input[value=automation]")
        await b.page.fill("#r-message", "we need a licence")
        await b.page.click("#upgrade-form button[type=submit]")
        await b.page.wait_for_selector("text=open")
        [req] = (await api.call("GET", "/v1/upgrade-requests", op))["requests"]
        assert req["workspace_id"] == ws
        lic = {"automation": {"usage_limit": 10_000, "per_minute": 60, "per_hour": 3_600}}
        await api.call("POST", f"/v1/workspaces/{ws}/upgrade", op, {"licences": lic})
        await b.page.reload()
        await b.page.wait_for_selector("text=granted")
        await b.goto_hash(f"#/ws/{ws}/overview")
        await b.page.wait_for_selector("h2:has-text('Licences')")
        text = figures(await b.text())
        assert "10,000" in text
        assert "Free credits" not in text
        await b.check("enterprise")

        # Team: invite a member (shown by user id alone until they accept), then withdraw.
        bo = await api.call("POST", "/v1/users", op, {"email": "bo@example.com", "name": "Bo"})
        await b.goto_hash(f"#/ws/{ws}/team")
        await b.page.fill("#m-user", bo["id"])
        await b.page.click("text=Invite member")
        await b.page.wait_for_selector(f"tr:has-text('{bo['id']}') >> text=invited")
        await b.settle()
        assert "bo@example.com" not in await b.text()
        await b.check("team")
        await b.page.click(f"tr:has-text('{bo['id']}') >> text=Withdraw")
        await b.page.wait_for_selector(f"td:has-text('{bo['id']}')", state="detached")
        members = await api.call("GET", f"/v1/workspaces/{ws}/members", owner["token"])
        assert [m["user_id"] for m in members["members"]] == [owner["id"]]

        # Collaborators: re-role on the app's page.
        await b.goto_hash(f"#/ws/{ws}/app/{app['id']}")
        await b.page.select_option(f"#role-{collab['id']}", "tester")

        async def re_roled() -> bool:
            listed = await api.call("GET", f"/v1/apps/{app['id']}/collaborators", owner["token"])
            return [c["role"] for c in listed["collaborators"]] == ["tester"]

        await wait_until(re_roled, "the collaborator's new role")

        # Tokens: create one (shown once), then revoke it.
        await b.goto_hash("#/tokens")
        # A name no other row can contain: Playwright's :has-text is a case-insensitive
        # substring match, and the initial token's hint (4 random characters) may hold "ci".
        await b.page.fill("#t-name", "ci-journey")
        await b.page.click("form.inline button[type=submit]")
        await b.page.wait_for_selector("#t-secret")
        secret = await b.page.input_value("#t-secret")
        assert secret.startswith("cgu_")
        await b.check("tokens")
        await b.page.click("tr:has(td:text-is('ci-journey')) >> text=Revoke")
        await b.page.wait_for_selector("#t-secret", state="detached")
        async with http.get(served.admin + "/v1/tokens",
                            headers={"Authorization": f"Bearer {secret}"}) as r:  # fmt: skip
            assert r.status == 401  # revoked at once

        # The collaborator accepts the invitation, then sees the app they work on,
        # without money figures.
        c = await Browser.open(browser, "collaborator")
        await c.page.goto(served.admin + "/ui")
        await c.page.fill("#token", collab["token"])
        await c.page.click("button[type=submit]")
        await c.page.wait_for_selector("h1:has-text('No workspace yet')")
        await c.goto_hash("#/invitations")
        await c.page.wait_for_selector("tr:has-text('Helpdesk') >> text=Accept")
        await c.check("invitations")
        await c.page.click("tr:has-text('Helpdesk') >> text=Accept")
        await c.page.wait_for_selector("text=No pending invitations.")
        await c.goto_hash(f"#/ws/{ws}/apps")
        await c.page.wait_for_selector(f"a[href$='/app/{app['id']}']")
        await c.check("apps")
        await c.page.click(f"a[href$='/app/{app['id']}']")
        await c.page.wait_for_selector("text=Sessions, 30 days")
        text = figures(await c.text())
        assert "Helpdesk" in text
        assert "$" not in text
        await c.check("app")

        # Sign out: the session is gone server-side.
        await b.page.click("#sign-out")
        await b.page.wait_for_selector("#token")
        assert b.errors == []
        assert c.errors == []
    finally:
        await browser.close()


async def test_stored_history_while_redis_is_down(redis_url: str, tmp_path: Path, bot: Bot) -> None:
    """Redis down: the console still signs in and shows stored usage and sessions, with
    the live figures marked unavailable (their 503s are the only console errors)."""
    store_url = f"sqlite:///{tmp_path}/store.db"
    settings = make_settings(redis_url, store_url=store_url, operator=True)
    async with admin_server(settings, traffic=True) as admin, aiohttp.ClientSession() as http:
        tok, ws = await admin.owner_workspace()
        app = await admin.new_app(tok, ws, bot.url, name="Helpdesk")
        for i in range(3):
            url = f"{admin.traffic_url}/hooks/web/{app}/msg"
            async with http.post(url, json={}, headers={"X-Channel-User-Id": f"u{i}"}) as r:
                assert r.status == 200
        await Flusher(admin.redis, admin.store, settings).flush_once(force=True)
    dead = make_settings(f"redis://127.0.0.1:{free_port()}/0", store_url=store_url, operator=True)
    async with (
        admin_server(dead) as down,
        playwright_api.async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            b = await Browser.open(browser, "redis-down")
            await b.page.goto(down.url + "/ui")
            await b.page.fill("#token", tok)
            await b.page.click("button[type=submit]")
            await b.page.wait_for_selector("text=Live figures are unavailable")
            await b.page.wait_for_selector(".chart-box svg")
            assert "total: 3" in figures(await b.text(".chart-box .legend"))
            assert "showing stored usage" in await b.text(".chart-box")
            unavailable = [e for e in b.errors if "status of 503" in e]
            assert unavailable
            assert unavailable == b.errors
            b.errors.clear()
            await b.check("overview")
            await b.goto_hash(f"#/ws/{ws}/app/{app}")
            await b.page.wait_for_selector("#sessions table")
            assert len(await b.page.query_selector_all("#sessions tbody tr")) == 3
            assert "stored sessions only" in await b.text("#sessions")
            await b.check("app")
        finally:
            await browser.close()
