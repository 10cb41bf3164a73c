"""The gateway and the flusher against a real 3-master Redis Cluster.

The gateway connects itself (``settings.redis_url`` = ``redis+cluster://...``) and serves
concurrent traffic for workspaces spread over every master: admitted messages reach the
bot and are charged, refusals do not reach it, a Slack retry is charged once, a failing
bot is refunded; then a flusher moves exactly the admitted units into an SQLite store.

The cluster is shared by the whole session and never flushed: every test seeds its own
fresh workspace ids.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from redis.crc import key_slot

from config import Settings
from gateway.appkeys import STORE
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient, connect
from meter.usage.flusher import Flusher
from tests.support.bot import Bot, Running, running_gateway
from tests.support.servers import RedisCluster
from tests.support.settings import make_settings

FUNDS = 1_000_000  # $1.00 tied to each app
PRICE = 10_000  # contact_center: $0.01 per request
PER_MASTER = 2  # workspaces seeded on each of the 3 masters
BOUND_S = 20.0  # concurrent traffic must finish well within this
T = TypeVar("T")


def slack_message(event_id: str, user: str = "U2147483697") -> bytes:
    """A Slack Events API message callback (shape of channels/slack-message.json)."""
    return json.dumps(
        {
            "token": "verification-token-not-used",
            "team_id": "T061EG9R6",
            "api_app_id": "A0PNCHHK2",
            "event": {
                "type": "message",
                "channel": "D024BE91L",
                "user": user,
                "text": "What's my order status?",
                "ts": "1355517523.000005",
                "event_ts": "1355517523.000005",
                "channel_type": "im",
            },
            "type": "event_callback",
            "authed_users": ["U061F7AUR"],
            "event_id": event_id,
            "event_time": 1355517523,
        }
    ).encode()


@dataclass
class Env:
    cluster: RedisCluster
    client: RedisClient
    settings: Settings
    gw: Running
    bot: Bot
    http: aiohttp.ClientSession

    async def workspaces(self, per_master: int = PER_MASTER, funds: int = FUNDS) -> list[str]:
        """Fresh workspaces, ``per_master`` on each master, each with one
        ``contact_center`` app ``<ws>_app1`` holding ``funds``."""
        masters = self.cluster.master_ports()
        assert len(masters) == 3, masters
        wanted = dict.fromkeys(masters, per_master)
        out: list[str] = []
        while any(wanted.values()):
            ws = "c" + uuid.uuid4().hex[:12]
            owner = self.cluster.slot_owner(key_slot(keys.ws_prefix(ws).encode()))
            if wanted.get(owner, 0) == 0:
                continue
            wanted[owner] -= 1
            app = {"product": "contact_center", "upstream_url": self.bot.url, "funds": funds}
            await seed(self.client, self.settings, ws, {app_of(ws): app})
            out.append(ws)
        return out

    async def post(
        self, path: str, user: str = "u1", body: bytes = b"hi", **headers: str
    ) -> tuple[int, bytes]:
        h = {"X-Channel-User-Id": user, **headers}
        async with self.http.post(f"{self.gw.url}{path}", data=body, headers=h) as resp:
            return resp.status, await resp.read()

    async def paid(self, ws: str) -> int:
        return (await read_balances(self.client, ws)).app[app_of(ws)]


def app_of(ws: str) -> str:
    return f"{ws}_app1"


async def bounded(aws: Iterable[Awaitable[T]], what: str) -> list[T]:
    """Run concurrently; fail (instead of hanging the suite) if it takes over BOUND_S."""
    try:
        return list(await asyncio.wait_for(asyncio.gather(*aws), BOUND_S))
    except TimeoutError:
        pytest.fail(
            f"{what}: concurrent requests across workspaces did not finish within "
            f"{BOUND_S}s on Redis Cluster (multi-workspace admission batch hung?)",
            pytrace=False,
        )


@pytest.fixture
async def env(
    redis_cluster: RedisCluster, tmp_path: Path, bot: Bot, http: aiohttp.ClientSession
) -> AsyncIterator[Env]:
    settings = make_settings(redis_cluster.url, tmp_path, redis_timeout_s=5.0)
    client = connect(redis_cluster.url)
    try:
        async with running_gateway(settings) as gw:
            yield Env(redis_cluster, client, settings, gw, bot, http)
    finally:
        await client.aclose()


async def test_concurrent_traffic_across_masters_is_admitted_and_charged(env: Env) -> None:
    spaces = await env.workspaces()
    per_ws = 8
    statuses = await bounded(
        (
            env.post(f"/hooks/web/{app_of(ws)}/msg/{ws}", user=f"u{i}")
            for i in range(per_ws)
            for ws in spaces  # interleaved: every admission batch spans workspaces
        ),
        "admitted traffic",
    )
    assert [s for s, _ in statuses] == [200] * (per_ws * len(spaces))
    for ws in spaces:
        assert env.bot.count(f"/msg/{ws}") == per_ws
        assert await env.paid(ws) == FUNDS - per_ws * PRICE
    assert env.bot.count("/msg") == per_ws * len(spaces)


async def test_refusal_does_not_reach_the_bot(env: Env) -> None:
    funded = await env.workspaces(per_master=1)
    broke = await env.workspaces(per_master=1, funds=0)
    results = await bounded(
        (
            env.post(f"/hooks/web/{app_of(ws)}/{'broke' if ws in broke else 'ok'}", user=f"u{i}")
            for ws in funded + broke
            for i in range(3)
        ),
        "mixed admitted and refused traffic",
    )
    for (status, body), ws in zip(
        results, [ws for ws in funded + broke for _ in range(3)], strict=True
    ):
        if ws in broke:
            assert status == 402, body
            assert json.loads(body)["code"] == "credits_exhausted"
        else:
            assert status == 200, body
    assert env.bot.count("/broke") == 0
    assert env.bot.count("/ok") == 3 * len(funded)
    for ws in funded:
        assert await env.paid(ws) == FUNDS - 3 * PRICE
    for ws in broke:
        assert await env.paid(ws) == 0


async def test_slack_retry_is_proxied_again_but_charged_once(env: Env) -> None:
    spaces = await env.workspaces(per_master=1)

    async def deliver_twice(ws: str) -> list[int]:
        body = slack_message(f"Ev{ws}")
        url = f"/hooks/slack/{app_of(ws)}/slack/events"
        h = {"Content-Type": "application/json"}
        first, _ = await env.post(url, body=body, **h)
        retry, _ = await env.post(url, body=body, **h, **{"X-Slack-Retry-Num": "1"})
        return [first, retry]

    got = await bounded((deliver_twice(ws) for ws in spaces), "slack deliveries")
    assert got == [[200, 200]] * len(spaces)
    assert env.bot.count("/slack/events") == 2 * len(spaces)
    for ws in spaces:
        assert await env.paid(ws) == FUNDS - PRICE


async def test_bot_500_is_refunded(env: Env) -> None:
    spaces = await env.workspaces(per_master=1)
    results = await bounded(
        (env.post(f"/hooks/web/{app_of(ws)}/status/500", user="u1") for ws in spaces),
        "failing bot",
    )
    # The bot's failed body is withheld: the client gets the 502 problem document.
    assert [status for status, _ in results] == [502] * len(spaces)
    assert not any(b"bot says" in body for _, body in results)
    assert env.bot.count("/status/500") == len(spaces)
    for ws in spaces:
        assert await env.paid(ws) == FUNDS


async def test_flusher_moves_exactly_the_admitted_units_into_the_store(env: Env) -> None:
    spaces = await env.workspaces()
    broke = await env.workspaces(per_master=1, funds=0)
    per_ws = 5

    async def traffic(ws: str) -> None:
        app = app_of(ws)
        if ws in broke:
            assert (await env.post(f"/hooks/web/{app}/x", user="u1"))[0] == 402
            return
        oks = await asyncio.gather(
            *(env.post(f"/hooks/web/{app}/ok", user=f"u{i}") for i in range(per_ws))
        )
        assert [s for s, _ in oks] == [200] * per_ws
        assert await env.paid(ws) == FUNDS - per_ws * PRICE, "admitted"
        assert (await env.post(f"/hooks/web/{app}/status/500"))[0] == 502
        assert await env.paid(ws) == FUNDS - per_ws * PRICE, "bot 500 not refunded"
        body, h = slack_message(f"Ev{ws}"), {"Content-Type": "application/json"}
        url = f"/hooks/slack/{app}/events"
        assert (await env.post(url, body=body, **h))[0] == 200
        assert (await env.post(url, body=body, **h, **{"X-Slack-Retry-Num": "1"}))[0] == 200
        assert await env.paid(ws) == FUNDS - (per_ws + 1) * PRICE, "slack retry charged again"

    await bounded((traffic(ws) for ws in spaces + broke), "mixed traffic")
    admitted = per_ws + 1  # the 500 was refunded, the Slack retry charged once
    for ws in spaces:
        assert await env.paid(ws) == FUNDS - admitted * PRICE

    store = env.gw.gateway.admin[STORE]
    flusher = Flusher(env.client, store, env.settings)
    res = await asyncio.wait_for(flusher.flush_once(force=True), BOUND_S)
    assert res.failed == 0, res
    assert res.batches > 0, res
    for ws in spaces:
        tot = await store.usage_totals(ws)
        assert tot.units == {"request": admitted}, (ws, tot)
        assert tot.amount_app == admitted * PRICE, (ws, tot)
        assert tot.amount_free == tot.amount_pool == 0, (ws, tot)
        assert not tot.refused, (ws, tot)
    for ws in broke:
        tot = await store.usage_totals(ws)
        assert tot.total_units == 0, (ws, tot)
        assert tot.amount == 0, (ws, tot)
        assert tot.refused == {"credits_exhausted": 1}, (ws, tot)
    # A second forced pass writes nothing more: every unit landed exactly once.
    await asyncio.wait_for(flusher.flush_once(force=True), BOUND_S)
    for ws in spaces:
        assert (await store.usage_totals(ws)).units == {"request": admitted}
