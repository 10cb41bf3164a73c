"""Channel rules through the gateway: real channel payload samples (``tests/data/channels``)
metered by the user and idempotency key the rules find (the rules themselves:
tests/unit/test_channel_rules.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from meter.accounts.projection import read_balances
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, SeededGateway
from tests.support.samples import sample

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "chans"
APP = f"{WS}_app1"
BROKE = f"{WS}_broke"


@pytest.fixture
async def gw(seeded_gateway: SeededGateway) -> AsyncIterator[Running]:
    apps = {
        APP: {"product": "contact_center", "funds": 1_000_000},
        BROKE: {"product": "automation", "use_free_credits": False},
    }
    async with seeded_gateway(WS, apps) as running:
        yield running


async def post(http: aiohttp.ClientSession, url: str, body: bytes, **headers: str) -> int:
    h = {"Content-Type": "application/json", **headers}
    async with http.post(url, data=body, headers=h) as resp:
        await resp.read()
        return resp.status


async def test_slack_retry_reaches_bot_twice_charged_once(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    url = f"{gw.url}/hooks/slack/{APP}/slack/events"
    body = sample("slack-message.json")
    assert await post(http, url, body) == 200
    assert await post(http, url, body, **{"X-Slack-Retry-Num": "1"}) == 200
    assert bot.count("/slack/events") == 2
    assert bot.calls[1].body == body
    # contact_center bills per request ($0.01): one charge for the two deliveries
    assert (await read_balances(rclient, WS)).app[APP] == 1_000_000 - 10_000
    agg = await rclient.hgetall(keys.agg_key(WS, await _bucket(rclient)))
    field = keys.agg_field(APP, "slack", "contact_center", "request", "m").encode()
    assert int(agg[field]) == 1


async def _bucket(rclient: RedisClient) -> int:
    [b] = await rclient.zrange(keys.agg_index_key(WS), 0, -1)
    return int(b)


@pytest.mark.parametrize(
    ("channel", "file"),
    [
        ("slack", "slack-url-verification.json"),
        ("msteams", "msteams-typing.json"),
        ("whatsapp", "whatsapp-status.json"),
    ],
)
async def test_unauthenticated_callbacks_are_billable(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, channel: str, file: str
) -> None:
    """Without a channel secret the body is unverified: no free pass (the authenticated
    case is in test_channel_auth)."""
    url = f"{gw.url}/hooks/{channel}/{BROKE}/cb"
    # billable: refused for want of credit, or of a user when the body names none
    assert await post(http, url, sample(file)) in (400, 402)
    assert await post(http, url, sample(file), **{"X-Channel-User-Id": "u1"}) == 402
    assert bot.count() == 0


async def test_msteams_and_whatsapp_messages_are_metered_by_pointer(
    gw: Running, bot: Bot, http: aiohttp.ClientSession, rclient: RedisClient
) -> None:
    for channel in ("msteams", "whatsapp"):
        body = sample(f"{channel}-message.json")
        assert await post(http, f"{gw.url}/hooks/{channel}/{APP}", body) == 200
        assert await post(http, f"{gw.url}/hooks/{channel}/{APP}", body) == 200  # retry
    assert bot.count() == 4
    assert (await read_balances(rclient, WS)).app[APP] == 1_000_000 - 2 * 10_000
    payload = json.loads(sample("msteams-message.json"))
    payload["id"] = "another"
    del payload["from"]
    assert await post(http, f"{gw.url}/hooks/msteams/{APP}", json.dumps(payload).encode()) == 400
