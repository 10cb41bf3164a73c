"""The owner's own low-balance threshold: stored, projected, used by admission's alert,
by plan-usage's status and by the console's banner data."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from meter.redis_layer import keys
from tests.support.adminkit import Admin, admin_server, admin_settings
from tests.support.bot import Bot
from tests.support.settings import OPERATOR_TOKEN


async def test_the_owner_sets_a_threshold_and_the_alert_follows_it(
    redis_url: str, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> None:
    settings = admin_settings(redis_url, tmp_path)
    async with admin_server(settings, traffic=True) as admin:
        token, ws = await admin.owner_workspace("owner", "shop")
        app = await admin.new_app(token, ws, bot.url)
        pu = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert pu["low_balance_threshold"] == "50.00"
        assert pu["low_balance_threshold_is_default"] is True
        # $500 free credits: under a $600 threshold the app is low on balance at once.
        out = await admin.ok(
            "PATCH", f"/v1/workspaces/{ws}", token, {"low_balance_threshold": "600.00"}
        )
        assert out["low_balance_threshold"] == "600.00"
        assert await admin.redis.hget(keys.ws_key(ws), "lowt") == b"600000000"
        pu = await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token)
        assert pu["low_balance_threshold"] == "600.00"
        assert [a["status"] for a in pu["apps"]] == ["low_balance"]
        # The first debit under the owner's threshold fires balance.low once.
        headers = {"X-Channel-User-Id": "u1"}
        async with http.post(
            f"{admin.traffic_url}/hooks/web/{app}", data=b"{}", headers=headers
        ) as resp:
            assert resp.status == 200
        events = await admin.redis.lrange(keys.events_key(ws), 0, -1)
        assert sum(b'"balance.low"' in e for e in events) == 1
        # null restores the default; bad amounts are 422; an operator may not.
        out = await admin.ok(
            "PATCH", f"/v1/workspaces/{ws}", token, {"low_balance_threshold": None}
        )
        assert out["low_balance_threshold"] is None
        assert await admin.redis.hget(keys.ws_key(ws), "lowt") is None
        status, _ = await admin.api(
            "PATCH", f"/v1/workspaces/{ws}", token, {"low_balance_threshold": "-1"}
        )
        assert status == 422
        status, _ = await admin.api(
            "PATCH", f"/v1/workspaces/{ws}", OPERATOR_TOKEN, {"low_balance_threshold": "1.00"}
        )
        assert status == 403


async def test_only_the_owner_and_operators_see_the_workspaces_money_fields(
    any_admin: Admin,
) -> None:
    """DESIGN: plan & usage is the workspace owner's and operators'; a member's view of
    the workspace leaves its money fields out (not null: null means the default)."""
    token, ws = await any_admin.owner_workspace("owner", "shop")
    await any_admin.ok("PATCH", f"/v1/workspaces/{ws}", token, {"low_balance_threshold": "75.00"})
    member = await any_admin.new_user("member")
    await any_admin.join(ws, token, member)
    money = {"free_credits_expire_at", "low_balance_threshold"}
    seen = await any_admin.ok("GET", f"/v1/workspaces/{ws}", token)
    assert seen["low_balance_threshold"] == "75.00"
    assert seen["free_credits_expire_at"]
    seen = await any_admin.ok("GET", f"/v1/workspaces/{ws}", member[1])
    assert not money & seen.keys(), seen
    assert seen["id"] == ws
    assert seen["owner_id"] != member[0]
    # The member's own workspace is theirs to see in full.
    own = await any_admin.ok("POST", "/v1/workspaces", member[1], {"name": "mine"})
    assert money <= own.keys()
