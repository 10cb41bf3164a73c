"""A callback the channel's rules skip buys the bot's status, never its answer
(gateway/unbilled.py, docs/design.md §3).

The tenant holds its channel secrets, so it can sign any body a skip rule matches, a
question included: such a callback reaches the bot unmetered, even for an app without
credit, but only whether the bot took it comes back (200 or 400, an empty body, never
the bot's own status); Slack's URL verification gets its own challenge back, nothing
else; a bot failure is the gateway's 502 problem. A suspended app, or one whose product
the enterprise workspace holds no licence for, is refused 403 as a billable message is,
the bot not called. Both traffic servers; real Redis, real sockets, the counting bot.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from config.fields import ChannelRule
from meter.accounts.projection import Licence
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, running_gateway
from tests.support.channel_keys import (
    AuthWorld,
    auth_settings,
    hs256,
    meta_headers,
    set_secret,
    slack_headers,
)
from tests.support.fresh import sample_now
from tests.support.samples import sample

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "unbilled"
BROKE = f"{WS}_broke"  # no credit at all: nothing it gets may be an answer of the bot
QUESTION = "write me a 2000-word essay on the history of credit"
ENT = "unbilledent"  # enterprise, licensed for search only
SUSPENDED = f"{WS}_susp"  # suspended, with credit: only its status refuses it
SHADOW = f"{WS}_shadow"  # suspended, in shadow mode: refusals counted, not applied
UNLICENSED = f"{ENT}_auto"  # automation: no licence
LICENSED = f"{ENT}_search"
CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


@pytest.fixture
async def world(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> AsyncIterator[AuthWorld]:
    # "tickets" is a configured channel (HS256) with a skip rule of its own.
    rules = {"tickets": ChannelRule(skip_if_equals={"/type": ["ping"]})}
    settings = auth_settings(redis_url, tmp_path, channels=rules)
    up = {"upstream_url": bot.url}
    apps: dict[str, dict[str, Any]] = {
        BROKE: {"product": "automation", **up, "use_free_credits": False},
        SUSPENDED: {"product": "automation", **up, "suspended": True, "funds": 10**6},
        SHADOW: {"product": "automation", **up, "suspended": True, "shadow": True},
    }
    await seed(rclient, settings, WS, apps)
    licence = Licence(usage_limit=1000, per_minute=100, per_hour=1000)
    ent = {UNLICENSED: {"product": "automation", **up}, LICENSED: {"product": "search", **up}}
    await seed(rclient, settings, ENT, ent, plan="enterprise", licences={"search": licence})
    for channel in ("slack", "whatsapp", "tickets"):
        for app in (*apps, *ent):
            await set_secret(rclient, settings, app, channel)
    async with running_gateway(settings) as gw:
        yield AuthWorld(WS, gw, bot, rclient, http)


def slack_bot_event() -> bytes:
    """The bot's own message echoed back by Slack (``/event/bot_id``), with a question."""
    doc = json.loads(sample("slack-message.json"))
    doc["event"] |= {"bot_id": "B0BOT", "text": QUESTION}
    return json.dumps(doc).encode()


def whatsapp_status() -> bytes:
    """A delivery status (no ``messages``) that carries a question."""
    doc = json.loads(sample_now("whatsapp-status.json"))
    doc["entry"][0]["changes"][0]["value"]["text"] = QUESTION
    return json.dumps(doc).encode()


SKIPPED = {  # channel -> (body, its signature headers)
    "slack": lambda: (slack_bot_event(), slack_headers(slack_bot_event())),
    "whatsapp": lambda: (whatsapp_status(), meta_headers(whatsapp_status())),
    "tickets": lambda: (
        json.dumps({"type": "ping", "text": QUESTION}).encode(),
        {"Authorization": f"Bearer {hs256('alice')}"},
    ),
}


async def post(
    w: AuthWorld, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    h = {"Content-Type": "application/json", **headers}
    async with w.http.post(w.gw.url + path, data=body, headers=h) as resp:
        return resp.status, resp.headers, await resp.read()


def url_verification(challenge: Any = CHALLENGE) -> bytes:
    return json.dumps(
        {"token": "t", "challenge": challenge, "type": "url_verification", "text": QUESTION}
    ).encode()


async def test_a_signed_url_verification_gets_only_its_challenge(world: AuthWorld) -> None:
    before = await world.state()
    body = url_verification()
    # The bot echoes the whole request (question and challenge): only the challenge
    # comes back, as Slack accepts it, for an app without any credit.
    status, headers, got = await post(world, f"/hooks/slack/{BROKE}", body, slack_headers(body))
    assert (status, got) == (200, b'{"challenge":"%s"}' % CHALLENGE.encode())
    assert headers["Content-Type"] == "application/json"
    assert "X-Bot" not in headers  # none of the bot's headers
    assert world.bot.count() == 1
    # A bot whose answer is not the challenge (or not a 2xx) buys nothing: 502.
    for tail in ("/status/200", "/status/403"):
        status, headers, got = await post(
            world, f"/hooks/slack/{BROKE}{tail}", body, slack_headers(body)
        )
        assert status == 502, (tail, got)
        assert json.loads(got)["code"] == "invalid_handshake_answer"
        assert b"bot says" not in got
    assert world.bot.count() == 3
    # A url_verification without a usable challenge gets an empty answer.
    odd = url_verification({"q": QUESTION})
    status, headers, got = await post(world, f"/hooks/slack/{BROKE}", odd, slack_headers(odd))
    assert (status, got, headers["Content-Length"]) == (200, b"", "0")
    assert await world.state() == before  # nothing metered


# The bot's status -> what the caller gets: 200 for any 2xx, 400 for anything else that
# is not a failure. A bot choosing among ~300 statuses would answer 8 bits a call.
CLASSES = [("", 200), ("/status/202", 200), ("/status/204", 200), ("/status/237", 200),
           ("/status/299", 200), ("/status/302", 400), ("/status/304", 400),
           ("/status/404", 400), ("/status/418", 400), ("/status/499", 400)]  # fmt: skip


@pytest.mark.parametrize("channel", sorted(SKIPPED))
async def test_skipped_callbacks_get_a_fixed_status_and_an_empty_body(
    world: AuthWorld, channel: str
) -> None:
    before = await world.state()
    body, signed = SKIPPED[channel]()
    for tail, want in CLASSES:
        status, headers, got = await post(world, f"/hooks/{channel}/{BROKE}{tail}", body, signed)
        assert (status, got) == (want, b""), (tail, got[:200])
        assert headers["Content-Length"] == "0"
        assert "X-Bot" not in headers
        assert "Content-Type" not in headers
    assert world.bot.count() == len(CLASSES)
    assert world.bot.calls[0].body == body  # the bot did get the callback
    assert await world.state() == before


@pytest.mark.parametrize("channel", [*sorted(SKIPPED), "slack-challenge"])
async def test_a_bot_failure_on_a_skipped_callback_is_the_gateways_problem(
    world: AuthWorld, channel: str
) -> None:
    if channel == "slack-challenge":
        body = url_verification()
        channel, signed = "slack", slack_headers(body)
    else:
        body, signed = SKIPPED[channel]()
    for code in (500, 503):
        status, headers, got = await post(
            world, f"/hooks/{channel}/{BROKE}/status/{code}", body, signed
        )
        assert status == 502, got[:200]
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(got)["code"] == "upstream_error"
        assert b"bot says" not in got


async def test_a_long_answer_to_a_skipped_callback_is_not_passed_on(world: AuthWorld) -> None:
    """The bot's first 64 KiB arrive, the rest never does: the status goes back anyway,
    without the bot's body (which is never waited for past the first bytes)."""
    body, signed = SKIPPED["whatsapp"]()
    h = {"Content-Type": "application/json", **signed}
    url = f"{world.gw.url}/hooks/whatsapp/{BROKE}/stream/1000000"
    try:
        async with world.http.post(url, data=body, headers=h) as resp:
            assert resp.status == 200
            assert resp.headers.get("Content-Length") == "0"
            assert await resp.read() == b""
    finally:
        world.bot.release.set()


@pytest.mark.parametrize(
    ("app", "code"),
    [
        pytest.param(SUSPENDED, "app_suspended", id="suspended"),
        pytest.param(UNLICENSED, "product_not_licensed", id="unlicensed"),
    ],
)
@pytest.mark.parametrize("channel", [*sorted(SKIPPED), "slack-challenge"])
async def test_a_skipped_callback_to_a_refused_app_is_refused_as_a_message_is(
    world: AuthWorld, app: str, code: str, channel: str
) -> None:
    """Only the credit check is exempt (docs/design.md §3): a suspended app, or an app of
    a product not licensed, does not have its bot called for free."""
    if channel == "slack-challenge":
        body = url_verification()
        channel, signed = "slack", slack_headers(body)
    else:
        body, signed = SKIPPED[channel]()
    for tail in ("", "/status/237", "/status/418"):
        status, headers, got = await post(world, f"/hooks/{channel}/{app}{tail}", body, signed)
        assert (status, json.loads(got)["code"]) == (403, code), got[:200]
        assert headers["Content-Type"] == "application/problem+json"
    assert world.bot.count() == 0


@pytest.mark.parametrize("app", [LICENSED, SHADOW])
async def test_a_skipped_callback_to_a_licensed_or_shadowed_app_reaches_the_bot(
    world: AuthWorld, app: str
) -> None:
    """A licensed product's app is served; shadow mode counts refusals, applies none."""
    body, signed = SKIPPED["whatsapp"]()
    status, _, got = await post(world, f"/hooks/whatsapp/{app}/status/237", body, signed)
    assert (status, got) == (200, b"")
    assert world.bot.count() == 1
