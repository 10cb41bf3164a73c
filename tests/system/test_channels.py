"""Channel rules: user and idempotency key from headers or JSON pointers, billable or not,
with real channel payload samples (``tests/data/channels``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config.fields import ChannelRule
from gateway.channels import Channels, parse_pointer, resolve
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, Running, running_gateway
from tests.support.settings import make_settings

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

# Copies of the platform payload samples the product contract ships; kept in the repo so
# the tests never depend on anything outside it.
SAMPLES = Path(__file__).resolve().parents[1] / "data" / "channels"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# ------------------------------------------------------------------ unit rules


def test_json_pointer() -> None:
    doc = {"a": [{"b/c": 1, "d~e": "x"}], "": 2}
    assert resolve(doc, parse_pointer("/a/0/b~1c")) == 1
    assert resolve(doc, parse_pointer("/a/0/d~0e")) == "x"
    assert resolve(doc, parse_pointer("/")) == 2
    assert resolve(doc, parse_pointer("")) == doc
    missing = resolve(doc, parse_pointer("/a/1"))
    assert missing is resolve(doc, parse_pointer("/nope"))
    with pytest.raises(ValueError, match="must start with '/'"):
        parse_pointer("a/b")


@pytest.mark.parametrize(
    ("channel", "file", "billable", "user", "key"),
    [
        ("slack", "slack-message.json", True, "U2147483697", "Ev0PV52K21"),
        ("slack", "slack-url-verification.json", False, "", ""),
        (
            "msteams",
            "msteams-message.json",
            True,
            "29:1XJKJMvc5GBtc2JwZq0oj8tHZmzrQgFmB39ATiQWA85gQtHieVkKilBZ9XHoq9j7Zaqt7CZ-NJWi7me2kHTL3Bw",
            "1485983408511",
        ),
        ("msteams", "msteams-typing.json", False, "", ""),
        (
            "whatsapp",
            "whatsapp-message.json",
            True,
            "16505551234",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        ),
        ("whatsapp", "whatsapp-status.json", False, "", ""),
    ],
)
def test_builtin_rules_on_samples(
    channel: str, file: str, billable: bool, user: str, key: str
) -> None:
    rule = Channels({}).get(channel)
    assert rule.needs_body
    msg = rule.inspect({}, sample(file), authenticated=True)
    assert msg.billable is billable
    if billable:
        assert (msg.user, msg.key) == (user, key)
    # An unverified body never buys a free pass.
    assert rule.inspect({}, sample(file), authenticated=False).billable


def test_headers_win_and_request_id_is_the_last_resort() -> None:
    rule = Channels({}).get("slack")
    body = sample("slack-message.json")
    msg = rule.inspect(
        {"X-Channel-User-Id": "hdr", "Idempotency-Key": "k"}, body, authenticated=False
    )
    assert (msg.user, msg.key) == ("hdr", "k")
    # A signed body's own user and key win over headers nobody signed.
    msg = rule.inspect(
        {"X-Channel-User-Id": "hdr", "Idempotency-Key": "k"}, body, authenticated=True
    )
    assert (msg.user, msg.key) == ("U2147483697", "Ev0PV52K21")
    msg = rule.inspect({"X-Request-Id": "rid"}, body, authenticated=True)
    assert msg.key == "Ev0PV52K21"
    assert Channels({}).get("web").label == "web"  # built in, header-only
    other = Channels({}).get("sms")
    assert not other.needs_body
    assert other.label == "other"
    assert other.inspect({"X-Request-Id": "rid"}, None, authenticated=False).key == "rid"


def test_configured_channels_and_overrides() -> None:
    chans = Channels(
        {
            "voice": ChannelRule(user_pointer="/caller", skip_if_equals={"/kind": ["ping"]}),
            "slack": ChannelRule(delivery_url="http://127.0.0.1:9/slack"),
        }
    )
    voice = chans.get("voice")
    assert voice.label == "voice"
    assert voice.inspect({}, b'{"caller": 42}', authenticated=True).user == "42"
    assert not voice.inspect({}, b'{"kind": "ping"}', authenticated=True).billable
    assert voice.inspect({}, b'{"kind": "ping"}', authenticated=False).billable
    assert voice.inspect({}, b"not json", authenticated=True).billable
    slack = chans.get("slack")  # only delivery_url overridden; built-in pointers stay
    assert slack.delivery_url == "http://127.0.0.1:9/slack"
    msg = slack.inspect({}, sample("slack-message.json"), authenticated=True)
    assert msg.user == "U2147483697"


# ----------------------------------------------------------- through the gateway

WS = "chans"
APP = f"{WS}_app1"
BROKE = f"{WS}_broke"


@pytest.fixture
async def gw(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot
) -> AsyncIterator[Running]:
    settings = make_settings(redis_url, tmp_path)
    apps: dict[str, dict[str, Any]] = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": 1_000_000},
        BROKE: {"product": "automation", "upstream_url": bot.url, "use_free_credits": False},
    }
    await seed(rclient, settings, WS, apps)
    async with running_gateway(settings) as running:
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
