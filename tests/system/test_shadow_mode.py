"""Shadow mode per app: metered and recorded, never refused; the refusals it would have
made are counted (aggregates and /metrics). For rolling creditgate out in front of live
bots (real sockets, real Redis, a real counting bot)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.adminkit import admin_server, admin_settings
from tests.support.bot import Bot, SeededGateway
from tests.support.settings import OPERATOR_TOKEN

WS = "shadow"
APP = f"{WS}_app1"
USER = {"X-Channel-User-Id": "u1"}


async def aggregates(rclient: RedisClient) -> dict[str, int]:
    out: dict[str, int] = {}
    async for key in rclient.scan_iter(match=f"{keys.ws_prefix(WS)}:ag:*"):
        for field, value in (await rclient.hgetall(key)).items():
            name = keys.agg_field_parts(field)[4]
            out[name] = out.get(name, 0) + int(value)
    return out


async def post(http: aiohttp.ClientSession, url: str, user: str = "u1") -> int:
    async with http.post(url, data=b"{}", headers={"X-Channel-User-Id": user}) as resp:
        await resp.read()
        return resp.status


async def shadow_metric(http: aiohttp.ClientSession, admin_url: str, reason: str) -> float:
    async with http.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    line = f'creditgate_shadow_refusals_total{{reason="{reason}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


async def test_a_shadow_app_without_credit_is_served_uncharged_and_counted(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, {APP: {"product": "automation", "shadow": True}}) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        assert [await post(http, url, f"u{i}") for i in range(3)] == [200, 200, 200]
        assert await shadow_metric(http, gw.admin_url, "credits_exhausted") == 3
    assert bot.count() == 3
    agg = await aggregates(rclient)
    assert agg.get("s:credits_exhausted") == 3
    assert agg.get("r:credits_exhausted", 0) == 0
    assert agg.get("n", 0) == 0
    assert agg.get("m") == 3


async def test_a_suspended_rate_limited_shadow_app_is_metered_but_never_refused(
    seeded_gateway: SeededGateway, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(
        WS,
        {APP: {"product": "contact_center", "shadow": True, "suspended": True}},
        free=1_000_000,
        rate_per_minute=2,
    ) as gw:
        url = f"{gw.url}/hooks/web/{APP}"
        assert [await post(http, url) for _ in range(4)] == [200] * 4
        assert await shadow_metric(http, gw.admin_url, "app_suspended") == 4
    assert bot.count() == 4
    # Suspension and the rate limit were counted, not applied: all four were charged.
    assert int(await rclient.hget(keys.ws_key(WS), "free") or 0) == 1_000_000 - 4 * 10_000
    agg = await aggregates(rclient)
    assert agg.get("s:app_suspended") == 4
    assert agg.get("n") == 4


async def test_the_same_app_out_of_shadow_mode_is_refused(
    seeded_gateway: SeededGateway, bot: Bot, http: aiohttp.ClientSession
) -> None:
    async with seeded_gateway(WS, {APP: {"product": "automation"}}) as gw:
        assert await post(http, f"{gw.url}/hooks/web/{APP}") == 402
    assert bot.count() == 0


async def test_shadow_mode_is_set_through_the_admin_api(
    redis_url: str, tmp_path: Path, bot: Bot
) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings) as admin:
        token, ws = await admin.owner_workspace("owner", "shop")
        body = {"name": "bot", "product": "automation", "upstream_url": bot.url}
        app = await admin.ok("POST", f"/v1/workspaces/{ws}/apps", token, body)
        assert app["shadow"] is False
        # A tenant may not: shadow mode serves an app without credit (operators only).
        status, _ = await admin.api("PATCH", f"/v1/apps/{app['id']}", token, {"shadow": True})
        assert status == 422
        status, _ = await admin.api("PUT", f"/v1/apps/{app['id']}/shadow", token, {"shadow": True})
        assert status == 403
        changed = await admin.ok(
            "PUT", f"/v1/apps/{app['id']}/shadow", OPERATOR_TOKEN, {"shadow": True}
        )
        assert changed["shadow"] is True
        assert (await admin.ok("GET", f"/v1/apps/{app['id']}", token))["shadow"] is True
        field = await admin.redis.hget(keys.app_key(ws, app["id"]), "shadow")
        assert field == b"1"
        status, _ = await admin.api(
            "PUT", f"/v1/apps/{app['id']}/shadow", OPERATOR_TOKEN, {"shadow": "yes"}
        )
        assert status == 422
