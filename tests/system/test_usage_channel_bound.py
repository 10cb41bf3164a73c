"""Refused traffic on ever new channel names cannot grow a workspace's usage bucket.

Channel names cost nothing (``require_channel_auth`` is off by default and any name of
``keys.CHANNEL_RE`` is taken): before the bound, each refused message on a new name added
a field to the live usage hash ``P:ag:<b>`` (read whole by every usage request and by
the flusher, one store row per channel), so anyone knowing an app id could grow it
without limit. Past ``max_usage_fields`` fields such refusals are counted under channel
``(overflow)``: the bucket stays bounded and the usage API's totals stay exact.

Everything real: the gateway (admin and traffic ports), redis-server, a SQLite store.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.usage.breakdown import breakdown
from meter.usage.flusher import Flusher
from tests.support.adminkit import admin_server, admin_settings
from tests.support.bot import Bot, free_credit
from tests.support.settings import OPERATOR_TOKEN

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

BOUND = 20  # max_usage_fields
EXTRA = 25  # refused channel names past it
REGULAR = ("web", "sdk", "slack")  # the app's real channels


async def post(http: aiohttp.ClientSession, url: str, want: int) -> None:
    async with http.post(url, json={"text": "hi"}, headers={"X-Channel-User-Id": "u1"}) as r:
        body = await r.read()
        assert r.status == want, (url, r.status, body)


async def buckets(rclient: RedisClient, ws: str) -> dict[bytes, dict[bytes, bytes]]:
    out = {}
    async for key in rclient.scan_iter(match=f"{keys.ws_prefix(ws)}:ag:*"):
        out[key] = await rclient.hgetall(key)
    return out


async def bounded(rclient: RedisClient, ws: str, most: int) -> dict[bytes, dict[bytes, bytes]]:
    """The workspace's live usage buckets: there is one, and none holds over ``most``
    fields."""
    found = await buckets(rclient, ws)
    assert found
    for key, fields in found.items():
        assert len(fields) <= most, (key, len(fields))
    return found


def metric_sum(found: dict[bytes, dict[bytes, bytes]], metric: str) -> int:
    """The sum of ``metric``'s fields over the buckets ``found``, every channel's."""
    return sum(
        int(v)
        for fields in found.values()
        for f, v in fields.items()
        if keys.agg_field_parts(f)[4] == metric
    )


async def test_refusals_on_new_channel_names_leave_the_usage_bucket_bounded(
    redis_url: str, tmp_path: Path, bot: Bot, rclient: RedisClient
) -> None:
    settings = admin_settings(redis_url, tmp_path, max_usage_fields=BOUND)
    async with admin_server(settings, traffic=True) as admin, aiohttp.ClientSession() as http:
        token, ws = await admin.owner_workspace()
        app = await admin.new_app(token, ws, bot.url)
        base = f"{admin.traffic_url}/hooks"
        for ch in REGULAR:  # normal traffic: one admitted message each
            await post(http, f"{base}/{ch}/{app}/msg", 200)
        await admin.ok("PATCH", f"/v1/apps/{app}", token, {"suspended": True})
        for ch in REGULAR:  # refused on channels the bucket has: counted under them
            await post(http, f"{base}/{ch}/{app}/msg", 403)
        names = [f"probe-{i}" for i in range(BOUND + EXTRA)]
        for ch in names:
            await post(http, f"{base}/{ch}/{app}/msg", 403)
        assert bot.count() == len(REGULAR)

        # The bound, plus the overflow's one field (one app, unit and reason).
        found = await bounded(rclient, ws, BOUND + 1)
        refused = {
            ch: int(v)
            for fields in found.values()
            for f, v in fields.items()
            for _, ch, _, _, metric in [keys.agg_field_parts(f)]
            if metric == "r:app_suspended"
        }
        assert sum(refused.values()) == len(REGULAR) + len(names)
        assert "(overflow)" in refused

        # The usage API: every message counted once, the real channels as before.
        used = await admin.ok("GET", f"/v1/workspaces/{ws}/usage?granularity=hour", token)
        assert used["totals"]["messages"] == len(REGULAR)
        assert used["totals"]["refused"] == {"app_suspended": len(REGULAR) + len(names)}
        for ch in REGULAR:
            one = await admin.ok(
                "GET", f"/v1/workspaces/{ws}/usage?granularity=hour&channel={ch}", token
            )
            assert one["totals"]["messages"] == 1, ch
            assert one["totals"]["refused"] == {"app_suspended": 1}, ch


async def test_shadow_served_messages_on_new_channel_names_leave_the_usage_bucket_bounded(
    redis_url: str, tmp_path: Path, bot: Bot, rclient: RedisClient
) -> None:
    """Shadow mode serves a message the workspace cannot pay, uncharged: before the fix
    each new channel name added two fields (its ``m`` and ``s:credits_exhausted``) for
    free. Past the bound they pool under ``(overflow)``; totals stay exact in Redis, in
    the store after a flush, and in the console's breakdown by channel."""
    settings = admin_settings(redis_url, tmp_path, max_usage_fields=BOUND, free_credits=0)
    async with admin_server(settings, traffic=True) as admin, aiohttp.ClientSession() as http:
        token, ws = await admin.owner_workspace()
        app = await admin.new_app(token, ws, bot.url)
        await admin.ok("PUT", f"/v1/apps/{app}/shadow", OPERATOR_TOKEN, {"shadow": True})
        base = f"{admin.traffic_url}/hooks"
        names = [f"shadow-{i}" for i in range(BOUND + EXTRA)]
        for ch in names:  # no credit: each served uncharged (shadow mode)
            await post(http, f"{base}/{ch}/{app}/msg", 200)
        assert bot.count() == len(names)

        # The bound, plus the overflow's two fields (m, s:credits_exhausted).
        found = await bounded(rclient, ws, BOUND + 2)
        assert any("(overflow)" in keys.agg_field_parts(f)[1] for v in found.values() for f in v)

        shadowed = metric_sum(found, "s:credits_exhausted")
        assert shadowed == len(names)
        want = {"messages": len(names)}

        async def totals() -> None:
            used = await admin.ok("GET", f"/v1/workspaces/{ws}/usage?granularity=hour", token)
            assert used["totals"]["messages"] == want["messages"], used["totals"]
            assert used["totals"]["amount"] == "0.00", used["totals"]
            now_ms = int(time.time() * 1000)
            for metric, total in (("messages", len(names)), ("amount", 0)):
                data = await breakdown(
                    admin.store,
                    admin.redis,
                    ws,
                    now_ms - 86_400_000,
                    now_ms + 3_600_000,
                    "hour",
                    metric,
                    "channel",
                )
                assert sum(sum(v) for v in data.series.values()) == total, data.series

        await totals()
        await Flusher(admin.redis, admin.store, settings).flush_once(force=True)
        assert not await buckets(rclient, ws)  # all in the store now
        await totals()


async def test_refunded_messages_on_new_channel_names_leave_the_usage_bucket_bounded(
    redis_url: str, tmp_path: Path, bot: Bot, rclient: RedisClient
) -> None:
    """A message whose delivery failed (the bot's 5xx, refund_on's default) is charged,
    then refunded: free in the end. On new channel names each leaves four fields of its
    own in the bucket (n, m, f back at 0, x at 1): 180 for 45 names with the bound at 20,
    whoever can make the bot fail (a path or body it fails on, or while it is down). Past
    the bound such a refund is counted under ``(overflow)``."""
    settings = admin_settings(redis_url, tmp_path, max_usage_fields=BOUND)
    async with admin_server(settings, traffic=True) as admin, aiohttp.ClientSession() as http:
        token, ws = await admin.owner_workspace()
        app = await admin.new_app(token, ws, bot.url)
        base = f"{admin.traffic_url}/hooks"
        before = await free_credit(rclient, ws)
        names = [f"fail-{i}" for i in range(BOUND + EXTRA)]
        for ch in names:  # the bot answers 500: the gateway's 502, the charge refunded
            await post(http, f"{base}/{ch}/{app}/status/500", 502)
        # Every charge given back (refunds are reported after the answer): a hang bound.
        deadline = time.monotonic() + 60
        while (left := await free_credit(rclient, ws)) != before:
            assert time.monotonic() < deadline, (left, before)
            await asyncio.sleep(0.05)
        # The bound, plus the overflow's few fields (one app, unit).
        found = await bounded(rclient, ws, BOUND + 8)
        refunds = metric_sum(found, "x")
        assert refunds == len(names)
        for flushed in (False, True):
            if flushed:
                await Flusher(admin.redis, admin.store, settings).flush_once(force=True)
                assert not await buckets(rclient, ws)
            used = await admin.ok("GET", f"/v1/workspaces/{ws}/usage?granularity=hour", token)
            assert used["totals"]["messages"] == 0, used["totals"]
            assert used["totals"]["amount"] == "0.00", used["totals"]
