"""Channel authentication, tried as a hostile client would (docs/design.md §3).

For every scheme: forged, stale and missing credentials are 401 with the bot not called
and nothing metered (balances and the workspace's Redis keys unchanged); valid ones are
forwarded and charged. The Bot Framework keys come from a real OpenID metadata stand-in
on 127.0.0.1 with RSA keys made here, rotated mid-test. Real Redis, real sockets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from config import Settings
from config.fields import ChannelRule
from gateway.channels import MAX_BATCH, USER_HEADER
from gateway.json_pointer import MAX_WALK
from meter.accounts import channel_secrets
from meter.accounts.projection import read_balances
from meter.accounts.seeding import seed
from meter.redis_layer import keys
from meter.redis_layer.client import RedisClient
from meter.store import AppChannel
from tests.support.bot import Bot, WsBot, running_gateway, running_ws_bot, serve
from tests.support.channel_keys import (
    SECRET,
    AuthWorld,
    auth_settings,
    hs256,
    meta_headers,
    set_secret,
    slack_headers,
)
from tests.support.fresh import sample_now
from tests.support.rawhttp import RawConn
from tests.support.samples import sample

# Each test runs against both traffic servers (aiohttp, the fast path).
pytestmark = pytest.mark.usefixtures("traffic_server")

NOTIFY_AUD = "creditgate:notify"  # the audience of /notify tokens (README)

WS = "chauth"
APP = f"{WS}_app1"  # contact_center: $0.01 per request, $1 of its own funds
BROKE = f"{WS}_broke"  # no credit at all
SESS = f"{WS}_sess"  # automation: $0.20 per session
BARE = f"{WS}_bare"  # no credit and no channel secrets
FUNDS = 1_000_000
PRICE = 10_000
NOTIFY = "n0tify-" + "y" * 30
APP_ID_MS = "c9e8c047-2a74-40a2-b28a-b162d5f5327c"  # the bot's Microsoft App ID
ISSUER = "https://api.botframework.com"
SERVICE_URL = "https://smba.trafficmanager.net/amer/"


# ------------------------------------------------------------ signing, as channels do


@dataclass
class OpenId:
    """A stand-in for the Bot Framework's OpenID metadata and key set."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    endorsements: dict[str, Any] = field(default_factory=dict)  # kid -> its list, else msteams
    fetches: int = 0
    failing: bool = False  # answers 503 (an outage), counted in fetches
    odd_keys: list[Any] = field(default_factory=list)  # published beside the real ones
    padding: int = 0  # bytes of an extra member of the key set

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(
        self,
        kid: str,
        *,
        aud: str = APP_ID_MS,
        iss: str = ISSUER,
        exp_in: float = 300,
        key: rsa.RSAPrivateKey | None = None,
        serviceurl: str | None = SERVICE_URL,
        **claims: Any,
    ) -> str:
        """A token as the Bot Framework mints it: its ``serviceurl`` claim (lower case,
        botbuilder's SERVICE_URL_CLAIM) is the activity's; ``None`` leaves it out."""
        payload = {"iss": iss, "aud": aud, "exp": int(time.time() + exp_in), **claims}
        if serviceurl is not None:
            payload["serviceurl"] = serviceurl
        signer = key or self.keys[kid]
        return jwt.encode(payload, signer, algorithm="RS256", headers={"kid": kid})

    def app(self) -> web.Application:
        async def metadata(request: web.Request) -> web.Response:
            if self.failing:
                self.fetches += 1
                raise web.HTTPServiceUnavailable
            return web.json_response(
                {"issuer": ISSUER, "jwks_uri": f"{self.url}/keys", "authorization_endpoint": ""}
            )

        async def jwks(request: web.Request) -> web.Response:
            self.fetches += 1
            out = []
            for kid, key in self.keys.items():
                # Like Microsoft's: no "alg", with endorsements.
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                endorsed = self.endorsements.get(kid, ["msteams"])
                out.append({**jwk, "kid": kid, "use": "sig", "endorsements": endorsed})
            doc: dict[str, Any] = {"keys": [*out, *self.odd_keys]}
            if self.padding:
                doc["x-padding"] = "x" * self.padding
            return web.json_response(doc)

        app = web.Application()
        app.router.add_get("/.well-known/openidconfiguration", metadata)
        app.router.add_get("/keys", jwks)
        return app


@pytest.fixture
async def openid() -> AsyncIterator[OpenId]:
    o = OpenId()
    o.add_key("k1")
    async with serve(o.app()) as url:
        o.url = url
        yield o


# ------------------------------------------------------------------------ gateway


def settings_for(redis_url: str, tmp_path: Path, openid: OpenId, **kw: Any) -> Settings:
    return auth_settings(
        redis_url,
        tmp_path,
        msteams_openid_url=f"{openid.url}/.well-known/openidconfiguration",
        msteams_keys_min_refresh_s=0,
        **kw,
    )


async def seed_one(
    rclient: RedisClient, settings: Settings, app_id: str, upstream: str, product: str
) -> None:
    await seed(rclient, settings, WS, {app_id: {"product": product, "upstream_url": upstream,
                                                "funds": FUNDS}})  # fmt: skip


@dataclass
class World(AuthWorld):
    settings: Settings
    openid: OpenId

    async def post(
        self,
        path: str,
        body: bytes = b"{}",
        headers: dict[str, str] | None = None,
        method: str = "POST",
    ) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        async with self.http.request(method, self.gw.url + path, data=body, headers=h) as resp:
            raw = await resp.read()
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, json.loads(raw)
            return resp.status, raw


@pytest.fixture
async def world(
    redis_url: str,
    tmp_path: Path,
    rclient: RedisClient,
    bot: Bot,
    http: aiohttp.ClientSession,
    openid: OpenId,
) -> AsyncIterator[World]:
    rules = {c: ChannelRule(delivery_url=f"{bot.url}/out/{c}") for c in ("slack", "msteams", "web")}
    settings = settings_for(redis_url, tmp_path, openid, channels=rules)
    apps: dict[str, dict[str, Any]] = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS},
        BROKE: {"product": "automation", "upstream_url": bot.url, "use_free_credits": False},
        SESS: {"product": "automation", "upstream_url": bot.url, "funds": FUNDS},
        BARE: {"product": "automation", "upstream_url": bot.url, "use_free_credits": False},
    }
    await seed(rclient, settings, WS, apps)
    for app_id in (APP, BROKE, SESS):
        for channel in ("slack", "whatsapp", "web"):
            await set_secret(rclient, settings, app_id, channel)
        await set_secret(rclient, settings, app_id, "msteams", APP_ID_MS)
    async with running_gateway(settings) as gw:
        yield World(WS, gw, bot, rclient, http, settings, openid)


async def refused_unmetered(
    w: World, path: str, body: bytes, headers: dict[str, str], method: str = "POST"
) -> None:
    """The request is 401 invalid_channel_signature; nothing metered, bot not called."""
    before = await w.state()
    calls = w.bot.count()
    status, problem = await w.post(path, body, headers, method)
    assert status == 401, (status, problem)
    assert problem["code"] == "invalid_channel_signature"
    assert w.bot.count() == calls
    assert await w.state() == before


# ------------------------------------------------------------------------- slack


async def test_slack_signatures(world: World) -> None:
    body = sample("slack-message.json")
    path = f"/hooks/slack/{APP}/slack/events"
    other = "another-secret-" + "q" * 20
    forged = slack_headers(body, other)
    await refused_unmetered(world, path, body, forged)
    stale = slack_headers(body, ts=int(time.time()) - 301)
    await refused_unmetered(world, path, body, stale)
    future = slack_headers(body, ts=int(time.time()) + 400)
    await refused_unmetered(world, path, body, future)
    await refused_unmetered(world, path, body, {})
    good = slack_headers(body)
    await refused_unmetered(world, path, body, {"X-Slack-Signature": good["X-Slack-Signature"]})
    tampered = body.replace(b"order status", b"refund please")
    await refused_unmetered(world, path, tampered, good)
    await refused_unmetered(world, path, body, {**good, "X-Slack-Request-Timestamp": "1e9"})

    status, _ = await world.post(path, body, good)
    assert status == 200
    assert world.bot.count() == 1
    assert world.bot.calls[0].body == body
    assert world.bot.calls[0].headers["X-Slack-Signature"] == good["X-Slack-Signature"]
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE
    async with world.http.get(f"{world.gw.admin_url}/metrics") as resp:
        text = await resp.text()
    assert 'creditgate_requests_total{channel="slack",outcome="refused"} 7.0' in text
    assert 'creditgate_requests_total{channel="slack",outcome="error"} 0.0' in text


async def test_slack_signature_window_is_a_setting(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, openid: OpenId
) -> None:
    settings = settings_for(redis_url, tmp_path, openid, slack_signature_window_s=3600)
    await seed_one(rclient, settings, APP, bot.url, "contact_center")
    await set_secret(rclient, settings, APP, "slack")
    body = sample("slack-message.json")
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        h = slack_headers(body, ts=int(time.time()) - 1800)
        async with http.post(f"{gw.url}/hooks/slack/{APP}", data=body, headers=h) as resp:
            assert resp.status == 200
    assert bot.count() == 1


# ---------------------------------------------------------------------- whatsapp


async def test_whatsapp_signatures(world: World) -> None:
    body = sample_now("whatsapp-message.json")
    path = f"/hooks/whatsapp/{APP}"
    await refused_unmetered(world, path, body, meta_headers(body, "wrong-secret-" + "w" * 20))
    await refused_unmetered(world, path, body, {})
    await refused_unmetered(world, path, body, {"X-Hub-Signature-256": "sha256=00"})
    await refused_unmetered(world, path, b"what is 2+2", meta_headers(body))
    # An unsigned plain-text body is no free pass either.
    await refused_unmetered(world, path, b"what is 2+2", {"X-Channel-User-Id": "u1"})

    assert (await world.post(path, body, meta_headers(body)))[0] == 200
    assert world.bot.count() == 1
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE


def whatsapp_delivery(*changes: list[dict[str, Any]], entries: bool = True) -> bytes:
    """A WhatsApp delivery as Meta batches them: each argument a change's ``messages``
    (a message is ``{"from": ..., "id": ...}``; ``[]``: the sample's delivery receipt),
    each change in an entry of its own if ``entries``, else all in one entry."""
    message = json.loads(sample_now("whatsapp-message.json"))["entry"][0]
    status = json.loads(sample_now("whatsapp-status.json"))["entry"][0]["changes"][0]
    out = []
    for messages in changes:
        change = json.loads(json.dumps(status))
        if messages:
            change = json.loads(json.dumps(message["changes"][0]))
            template = change["value"]["messages"][0]
            change["value"]["messages"] = [{**template, **m} for m in messages]
        out.append(change)
    if entries:
        doc = [{"id": message["id"], "changes": [c]} for c in out]
    else:
        doc = [{"id": message["id"], "changes": out}]
    return json.dumps({"object": "whatsapp_business_account", "entry": doc}).encode()


async def test_whatsapp_message_anywhere_in_a_delivery_is_billed(world: World) -> None:
    """Meta batches: a user's message after a delivery receipt (another entry, another
    change) is billed, not passed as the receipt it follows."""
    path = f"/hooks/whatsapp/{APP}"
    bal = lambda: read_balances(world.rclient, WS)  # noqa: E731
    alice = [{"from": "16505550001", "id": "wamid.A1"}]
    for i, body in enumerate(
        (
            whatsapp_delivery([], alice),
            whatsapp_delivery([], [], [{"from": "16505550001", "id": "wamid.A2"}], entries=False),
        ),
        start=1,
    ):
        status, _ = await world.post(path, body, meta_headers(body))
        assert status == 200
        assert world.bot.count() == 2 * i - 1
        assert (await bal()).app[APP] == FUNDS - i * PRICE
        # ...and its id is the delivery's idempotency key: a redelivery is charged once
        assert (await world.post(path, body, meta_headers(body)))[0] == 200
        assert world.bot.count() == 2 * i
        assert (await bal()).app[APP] == FUNDS - i * PRICE
    # An entry that is an object ({"0": ...}, what entry[0] reads in JavaScript) too.
    doc = json.loads(whatsapp_delivery([{"from": "16505550002", "id": "wamid.B1"}]))
    doc["entry"] = {"0": doc["entry"][0]}
    body = json.dumps(doc).encode()
    assert (await world.post(path, body, meta_headers(body)))[0] == 200
    assert (await bal()).app[APP] == FUNDS - 3 * PRICE
    # Receipts alone are still not billed, even for an app without credit.
    body = whatsapp_delivery([], [])
    before = await world.state()
    assert (await world.post(f"/hooks/whatsapp/{BROKE}", body, meta_headers(body)))[0] == 200
    assert await world.state() == before


async def test_whatsapp_batches_are_billed_message_by_message(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """Several messages in one delivery (two users', one user's two, in two entries, in
    two changes) are one admission each, under each one's user and key: they were refused
    422 ``batched_delivery``, and Meta retried them as they were, never delivered. One
    beyond MAX_BATCH is still refused, counted by reason and logged with its app."""
    path = f"/hooks/whatsapp/{APP}"
    calls = world.bot.count()
    for i, (one, two, entries) in enumerate(
        (
            ({"from": "16505550001"}, {"from": "447700900123"}, None),  # two users'
            ({"from": "16505550001"}, {"from": "16505550001"}, None),  # one user's two
            ({"from": "16505550001"}, {"from": "447700900123"}, True),  # two entries
            ({"from": "16505550001"}, {"from": "447700900123"}, False),  # two changes
        )
    ):
        a, b = {**one, "id": f"wamid.{i}A"}, {**two, "id": f"wamid.{i}B"}
        if entries is None:
            body = whatsapp_delivery([a, b])
        else:
            body = whatsapp_delivery([], [a], [b], entries=entries)
        assert (await world.post(path, body, meta_headers(body)))[0] == 200
        assert world.bot.count() == calls + i + 1
        assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - 2 * (i + 1) * PRICE
    many = whatsapp_delivery([{"id": f"wamid.M{i}"} for i in range(MAX_BATCH + 1)])
    await refused_as(world, path, many, "batched_delivery")
    async with world.http.get(f"{world.gw.admin_url}/metrics") as resp:
        assert 'creditgate_refusals_total{reason="batched_delivery"} 1.0' in await resp.text()
    assert f"refused a batched whatsapp delivery to app {APP}" in caplog.text


async def refused_as(w: World, path: str, body: bytes, code: str) -> None:
    """A signed WhatsApp delivery refused 422 ``code``: nothing metered, bot not called."""
    before = await w.state()
    calls = w.bot.count()
    status, problem = await w.post(path, body, meta_headers(body))
    assert status == 422, (status, problem)
    assert problem["code"] == code
    assert w.bot.count() == calls
    assert await w.state() == before


def respelled(body: bytes, *path: str, key: str) -> bytes:
    """``body`` with the object at ``path`` holding its ``key`` under another spelling."""
    doc = json.loads(body)
    node = doc
    for step in path:
        node = node[int(step)] if isinstance(node, list) else node[step]
    node[key.capitalize()] = node.pop(key)
    return json.dumps(doc).encode()


async def test_whatsapp_messages_under_any_spelling_are_billed_and_counted(
    world: World,
) -> None:
    """Go's encoding/json, ASP.NET Core and Newtonsoft read ``Messages`` or ``Entry`` as
    ``messages`` and ``entry``: a bot behind one gets those messages, so they are billed
    and counted as the real fields (every spelling counts), never passed unbilled."""
    path = f"/hooks/whatsapp/{APP}"
    now = str(int(time.time()))  # a signed message must be recent (channel_stamps)
    alice = {"from": "16505550001", "id": "wamid.A1", "timestamp": now}
    bob = {"from": "447700900123", "id": "wamid.B1", "timestamp": now}
    value = ("entry", "0", "changes", "0", "value")
    # Each message its own id: a key redelivered in another body is 409.
    one = whatsapp_delivery([{**alice, "id": "wamid.A3"}])
    both = json.loads(whatsapp_delivery([{**alice, "id": "wamid.A2"}]))
    both["entry"][0]["changes"][0]["value"]["Messages"] = [
        {**alice, "id": f"wamid.X{i}"} for i in range(3)
    ]
    no_from = json.loads(whatsapp_delivery([alice, bob]))
    del no_from["entry"][0]["changes"][0]["value"]["messages"][1]["from"]
    del no_from["entry"][0]["changes"][0]["value"]["messages"][1]["id"]
    before = await world.state()
    body = json.dumps(no_from).encode()  # a message without from and id rides along
    status, problem = await world.post(path, body, meta_headers(body))
    assert (status, problem["code"]) == (400, "missing_channel_user")
    assert await world.state() == before
    assert world.bot.count() == 0
    # Each message under any spelling is a message: billed, once each.
    charged = 0
    for n, body in (
        (2, respelled(whatsapp_delivery([alice, bob]), *value, key="messages")),  # Messages
        (4, json.dumps(both).encode()),  # messages [1] and Messages [3]
        (1, respelled(one, *value, key="messages")),
        (1, respelled(whatsapp_delivery([{**bob, "id": "wamid.B3"}]), key="entry")),
    ):
        assert (await world.post(path, body, meta_headers(body)))[0] == 200
        charged += n
        assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - charged * PRICE
    assert world.bot.count() == 4
    # Entry, two messages
    two = [{**alice, "id": "wamid.E1"}, {**bob, "id": "wamid.E2"}]
    body = respelled(whatsapp_delivery(two), key="entry")
    assert (await world.post(path, body, meta_headers(body)))[0] == 200
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - (charged + 2) * PRICE
    # Receipts under another spelling are still receipts.
    receipts = respelled(whatsapp_delivery([]), key="entry")
    before = await world.state()
    assert (await world.post(f"/hooks/whatsapp/{BROKE}", receipts, meta_headers(receipts)))[
        0
    ] == 200
    assert await world.state() == before


async def test_whatsapp_deliveries_of_a_megabyte_of_receipts_are_read(world: World) -> None:
    """Meta batches receipts: a delivery of thousands of status entries (1 MB, the body
    limit) was refused 422 ``uninspectable_delivery`` by the walk's bound, for good (Meta
    retries it as it was). It passes unmetered now; a message at its end is billed."""
    path = f"/hooks/whatsapp/{APP}"
    n = 3300
    body = whatsapp_delivery(*[[] for _ in range(n)])
    while len(body) > world.settings.max_body_bytes - 1024:
        n -= 100
        body = whatsapp_delivery(*[[] for _ in range(n)])
    assert n >= 2500, n
    before = await world.state()
    status, answer = await world.post(path, body, meta_headers(body))
    assert status == 200, (status, answer)  # was 422 uninspectable_delivery
    assert await world.state() == before
    body = whatsapp_delivery(*[[] for _ in range(n - 1)], [{"from": "16505550001"}])
    assert (await world.post(path, body, meta_headers(body)))[0] == 200
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE


async def test_slack_bot_echo_under_one_spelling_of_event_is_billed(world: World) -> None:
    """A signed body whose ``event`` is the bot's echo (``bot_id``) and whose ``Event``,
    later, is a user's message reaches a bot behind Go's or .NET's reader as that
    message: not skipped as the echo (every spelling of the path must hold ``bot_id``).
    With its user it is two users' messages (422 ``batched_delivery``, as any two);
    without, one message, billed. The echo alone is still skipped."""
    path = f"/hooks/slack/{APP}/slack/events"
    doc = json.loads(sample("slack-message.json"))
    event = dict(doc["event"])
    echo = {**doc, "event": {**event, "bot_id": "B0BOT"}}
    body = json.dumps(echo).encode()
    assert (await world.post(path, body, slack_headers(body)))[0] == 200
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS
    assert world.bot.count() == 1
    body = json.dumps({**echo, "Event": {**event, "text": "a free question"}}).encode()
    status, problem = await world.post(path, body, slack_headers(body))
    assert status == 422, (status, problem)  # was 200: skipped as the echo, bot called
    assert problem["code"] == "batched_delivery"
    assert world.bot.count() == 1
    anon = {k: v for k, v in event.items() if k != "user"}
    body = json.dumps({**echo, "Event": {**anon, "text": "a free question"}}).encode()
    assert (await world.post(path, body, slack_headers(body)))[0] == 200
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE
    assert world.bot.count() == 2


async def test_whatsapp_deliveries_it_cannot_read_are_refused_not_passed(world: World) -> None:
    """A signed body orjson cannot read (a BOM, which .NET readers skip; gzip) holds no
    message the gateway can see: refused, never passed to the bot unbilled. So is a body
    whose fields lie past a bounded walk (a million empty arrays in ``entry``)."""
    path = f"/hooks/whatsapp/{APP}"
    one = whatsapp_delivery([{"from": "16505550001", "id": "wamid.A1"}])
    for body in (b"\xef\xbb\xbf" + one, gzip.compress(one), b"{" + one):
        await refused_as(world, path, body, "uninspectable_delivery")
    wide = b'{"entry":[' + b",".join([b"[]"] * (MAX_WALK + 1)) + b"]}"
    await refused_as(world, path, wide, "uninspectable_delivery")
    wide = json.dumps({"entry": [{f"k{i}": i for i in range(MAX_WALK + 1)}]}).encode()
    await refused_as(world, path, wide, "uninspectable_delivery")
    # An empty signed body holds nothing for any reader: not a message, as before.
    assert (await world.post(path, b"", meta_headers(b"")))[0] == 200
    assert (await world.post(path, one, meta_headers(one)))[0] == 200
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE


async def test_whatsapp_subscription_handshake_reaches_the_bot_unmetered(world: World) -> None:
    before = await world.state()
    q = "hub.mode=subscribe&hub.verify_token=mine&hub.challenge=1158201444"
    # The bot's answer is checked against the challenge (test_channel_auth_redteam.py);
    # this bot echoes JSON, so only its being reached, unmetered, is asserted here.
    async with world.http.get(f"{world.gw.url}/hooks/whatsapp/{BROKE}?{q}") as resp:
        await resp.read()
    assert world.bot.count() == 1
    assert world.bot.calls[0].path_qs == f"/?{q}"
    # Nothing in it is signed (the bot checks hub.verify_token itself).
    assert world.bot.calls[0].headers.getall("X-Creditgate-Channel-Auth") == ["none"]
    assert await world.state() == before
    # ...but only the bodiless GET handshake to the webhook itself: a POST with the same
    # query, or a GET to another path, is verified.
    await refused_unmetered(world, f"/hooks/whatsapp/{BROKE}?{q}", b"{}", {})
    await refused_unmetered(world, f"/hooks/whatsapp/{BROKE}/wa?{q}", b"", {}, method="GET")


# ----------------------------------------------------------------------- msteams


async def test_msteams_bot_framework_tokens(world: World) -> None:
    o = world.openid
    body = sample("msteams-message.json")
    path = f"/hooks/msteams/{APP}/api/messages"

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token in (
        o.token("k1", key=attacker),  # forged: the published kid, another key
        o.token("k1", exp_in=-3600),  # stale
        o.token("k1", aud="another-bot-app-id"),
        o.token("k1", iss="https://evil.example"),
        o.token("k1", serviceurl="https://evil.example/"),
        o.token("nope", key=attacker),  # a key the channel never published
        hs256(key=APP_ID_MS),  # HS256 with the (public) App ID: algorithm confusion
        "not.a.jwt",
    ):
        await refused_unmetered(world, path, body, auth(token))
    await refused_unmetered(world, path, body, {})
    await refused_unmetered(world, path, body, {"Authorization": "Basic abc"})

    status, _ = await world.post(path, body, auth(o.token("k1")))
    assert status == 200
    assert world.bot.count() == 1
    assert world.bot.calls[0].headers["Authorization"].startswith("Bearer ")  # the bot's too
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE

    # Rotation: the provider now signs with a new key; the gateway fetches it.
    fetched = o.fetches
    o.keys.clear()
    o.add_key("k2")
    again = json.loads(body)
    again["id"] = "second-activity"
    status, _ = await world.post(path, json.dumps(again).encode(), auth(o.token("k2")))
    assert status == 200
    assert o.fetches == fetched + 1
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - 2 * PRICE


async def test_msteams_token_binds_the_activity_service_url(world: World) -> None:
    """A token replayed with an activity of its choosing must not send the bot's reply
    (with the bot's credentials) elsewhere: the token's ``serviceurl`` claim, as Bot
    Framework names it, must be there and be the activity's ``serviceUrl``."""
    o = world.openid
    body = sample("msteams-message.json")
    path = f"/hooks/msteams/{APP}/api/messages"
    evil = "https://evil.example/"

    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def activity(**fields: Any) -> bytes:
        return json.dumps({**json.loads(body), **fields}).encode()

    await refused_unmetered(world, path, body, auth(o.token("k1", serviceurl=evil)))
    await refused_unmetered(world, path, body, auth(o.token("k1", serviceurl=None)))
    # the activity's serviceUrl is the replayer's; so are other spellings of it, which a
    # case-insensitive deserializer (Newtonsoft, the C# SDK's) reads as serviceUrl
    await refused_unmetered(world, path, activity(serviceUrl=evil), auth(o.token("k1")))
    await refused_unmetered(world, path, activity(ServiceUrl=evil), auth(o.token("k1")))
    await refused_unmetered(world, path, activity(serviceURL=evil), auth(o.token("k1")))
    camel = o.token("k1", serviceurl=None, serviceUrl=evil)  # the old spelling, still read
    await refused_unmetered(world, path, body, auth(camel))
    await refused_unmetered(world, path, b"not an activity", auth(o.token("k1")))
    await refused_unmetered(world, path, b"[1]", auth(o.token("k1")))

    status, _ = await world.post(path, body, auth(o.token("k1")))
    assert status == 200
    assert world.bot.count() == 1
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE


async def test_msteams_signing_key_must_endorse_the_activity_channel(world: World) -> None:
    """As botbuilder: the key's ``endorsements`` must list the activity's ``channelId``."""
    o = world.openid
    path = f"/hooks/msteams/{APP}/api/messages"
    body = sample("msteams-message.json")
    o.add_key("webchat-only")
    o.endorsements["webchat-only"] = ["webchat"]
    o.add_key("none")
    o.endorsements["none"] = None
    for kid in ("webchat-only", "none"):
        token = o.token(kid)
        await refused_unmetered(world, path, body, {"Authorization": f"Bearer {token}"})
    odd = json.dumps({**json.loads(body), "channelId": ["msteams"]}).encode()
    await refused_unmetered(world, path, odd, {"Authorization": f"Bearer {o.token('k1')}"})
    # Every spelling of channelId is read as it by a case-insensitive deserializer
    # (Newtonsoft, the C# SDK's: the last one wins), so each is checked, and they agree.
    webchat = {"Authorization": f"Bearer {o.token('webchat-only')}"}
    activity = {k: v for k, v in json.loads(body).items() if k != "channelId"}
    for spelled in (
        {"ChannelId": "msteams"},
        {"CHANNELID": "msteams"},
        {"channelId": "webchat", "ChannelId": "msteams"},
        {"ChannelId": "msteams", "channelId": "webchat"},
        {"channelId": "webchat", "ChannelId": 7},
    ):
        odd = json.dumps({**activity, **spelled}).encode()
        await refused_unmetered(world, path, odd, webchat)
    o.add_key("both")
    o.endorsements["both"] = ["webchat", "msteams"]
    both = {"Authorization": f"Bearer {o.token('both')}"}
    mixed = {**activity, "channelId": "webchat", "ChannelId": "msteams"}
    await refused_unmetered(world, path, json.dumps(mixed).encode(), both)  # which one?
    for ok, auth in (({"ChannelId": "webchat", "id": "wc-1"}, webchat), ({"id": "wc-2"}, webchat)):
        status, _ = await world.post(path, json.dumps({**activity, **ok}).encode(), auth)
        assert status == 200
    assert world.bot.count() == 2
    activity_ok = json.dumps({**activity, "channelId": "msteams", "id": "ms-1"}).encode()
    assert (await world.post(path, activity_ok, both))[0] == 200
    assert world.bot.count() == 3
    status, _ = await world.post(path, body, {"Authorization": f"Bearer {o.token('k1')}"})
    assert status == 200
    assert world.bot.count() == 4


async def test_msteams_websocket_upgrades_are_refused(world: World) -> None:
    """Bot Framework never opens a WebSocket, and its token names no user: a valid token
    does not let a client pick the charged user (X-Channel-User-Id, ?user=)."""
    before = await world.state()
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Authorization": f"Bearer {world.openid.token('k1')}",
        USER_HEADER: "mallory",
    }
    url = f"{world.gw.url}/hooks/msteams/{APP}/ws?user=mallory"
    async with world.http.get(url, headers=headers) as resp:
        assert resp.status == 401
        problem = await resp.json(content_type=None)
    assert problem["code"] == "invalid_channel_signature"
    assert "WebSocket" in problem["detail"]
    assert world.bot.count() == 0
    assert await world.state() == before


async def test_msteams_unknown_kids_refetch_keys_at_a_bounded_rate(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, openid: OpenId
) -> None:
    settings = settings_for(redis_url, tmp_path, openid).model_copy(
        update={"msteams_keys_min_refresh_s": 3600.0}
    )
    await seed_one(rclient, settings, APP, bot.url, "contact_center")
    await set_secret(rclient, settings, APP, "msteams", APP_ID_MS)
    body = sample("msteams-message.json")
    url = f"/hooks/msteams/{APP}"
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        for i in range(20):
            token = (
                openid.token("k1") if i == 0 else openid.token(f"forged{i}", key=openid.keys["k1"])
            )
            h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with http.post(gw.url + url, data=body, headers=h) as resp:
                assert resp.status == (200 if i == 0 else 401)
    assert openid.fetches == 1
    assert bot.count() == 1


# ----------------------------------------------------------- HS256 (web, SDKs, ...)


async def test_hs256_sub_is_the_charged_user(world: World) -> None:
    path = f"/hooks/web/{SESS}/chat"
    bal = lambda: read_balances(world.rclient, WS)  # noqa: E731
    h = {"Authorization": f"Bearer {hs256('alice')}", "X-Channel-User-Id": "mallory"}
    assert (await world.post(path, b"hi", h))[0] == 200
    assert world.bot.calls[-1].headers["X-Channel-User-Id"] == "alice"  # not the header's
    assert (await bal()).app[SESS] == FUNDS - 200_000
    # alice's session goes on whatever user header comes along: no new charge
    h = {"Authorization": f"Bearer {hs256('alice')}", "X-Channel-User-Id": "carol"}
    assert (await world.post(path, b"again", h))[0] == 200
    assert (await bal()).app[SESS] == FUNDS - 200_000
    # bob is another user: another session
    assert (await world.post(path, b"hi", {"Authorization": f"Bearer {hs256('bob')}"}))[0] == 200
    assert (await bal()).app[SESS] == FUNDS - 400_000
    assert world.bot.count() == 3


async def test_hs256_forged_stale_and_missing(world: World) -> None:
    path = f"/hooks/web/{APP}/chat"
    none_alg = jwt.encode({"sub": "a", "exp": int(time.time()) + 60}, None, algorithm="none")
    for token in (
        hs256(key="another-key-" + "k" * 30),
        hs256(exp_in=-3600),
        hs256(sub=None),  # no user in it
        jwt.encode({"sub": "a"}, SECRET, algorithm="HS256"),  # never expires: refused
        hs256(sub=""),
        none_alg,
        hs256() + "x",
    ):
        await refused_unmetered(world, path, b"hi", {"Authorization": f"Bearer {token}"})
    await refused_unmetered(world, path, b"hi", {"X-Channel-User-Id": "u1"})
    await refused_unmetered(world, path + f"?token={hs256()}", b"hi", {})  # WebSocket only


async def test_the_bot_is_told_whether_the_channel_was_verified(world: World) -> None:
    """Anyone may call an app on a channel it has no secret for (unless
    REQUIRE_CHANNEL_AUTH), with any X-Channel-User-Id: the bot tells a secured channel's
    message from such a one by X-Creditgate-Channel-Auth, never by the client's."""
    h = {"Authorization": f"Bearer {hs256('alice')}", "X-Creditgate-Channel-Auth": "none"}
    assert (await world.post(f"/hooks/web/{APP}/chat", b"hi", h))[0] == 200
    call = world.bot.calls[-1]
    assert call.headers.getall("X-Creditgate-Channel-Auth") == ["verified"]
    assert call.headers["X-Channel-User-Id"] == "alice"
    # Another name of the same app's route, no secret: served, and the bot is told.
    forged = {"X-Channel-User-Id": "alice", "X-Creditgate-Channel-Auth": "verified"}
    assert (await world.post(f"/hooks/web2/{APP}/chat", b"hi", forged))[0] == 200
    call = world.bot.calls[-1]
    assert call.headers.getall("X-Creditgate-Channel-Auth") == ["none"]
    assert call.headers["X-Channel-User-Id"] == "alice"
    # A notification's bot (the delivery endpoint) is told too.
    token = hs256(sub=None, aud=NOTIFY_AUD)
    h = {"Authorization": f"Bearer {token}", "X-Creditgate-Channel-Auth": "none"}
    assert (await world.post(f"/notify/web/{APP}/send", b"note", h))[0] == 200
    assert world.bot.calls[-1].headers.getall("X-Creditgate-Channel-Auth") == ["verified"]


async def test_a_notification_redelivered_as_another_form_is_refused(world: World) -> None:
    """A notification's key (charged once) cannot carry a second, different message by
    the same bytes read as another Content-Type (as a6a77a0 for traffic)."""
    path = f"/notify/web/{APP}/send"
    token = hs256(sub=None, aud=NOTIFY_AUD)
    body = b'{"q":"one","z":"&q=two&"}'
    h = {"Authorization": f"Bearer {token}", "Idempotency-Key": "n-1"}
    assert (await world.post(path, body, h))[0] == 200
    charged = (await read_balances(world.rclient, WS)).app[APP]
    calls = world.bot.count()
    form = {**h, "Content-Type": "application/x-www-form-urlencoded"}
    status, problem = await world.post(path, body, form)
    assert (status, problem["code"]) == (409, "duplicate_delivery"), problem
    assert world.bot.count() == calls
    assert (await world.post(path, body, h))[0] == 200  # the same message again: served
    assert (await read_balances(world.rclient, WS)).app[APP] == charged


async def test_refusal_never_echoes_the_token(world: World) -> None:
    token = hs256(exp_in=-3600)
    status, problem = await world.post(
        f"/hooks/web/{APP}", b"hi", {"Authorization": f"Bearer {token}"}
    )
    assert status == 401
    text = json.dumps(problem)
    assert token not in text
    assert token.split(".")[1] not in text
    assert "expired" in problem["detail"]


# --------------------------------------------------------------------- WebSocket


@pytest.fixture
async def wsbot() -> AsyncIterator[WsBot]:
    async with running_ws_bot() as b:
        yield b


async def test_websocket_token_in_query(
    redis_url: str, tmp_path: Path, rclient: RedisClient, openid: OpenId, wsbot: WsBot
) -> None:
    settings = settings_for(redis_url, tmp_path, openid)
    await seed_one(rclient, settings, SESS, wsbot.url, "automation")
    await set_secret(rclient, settings, SESS, "web")
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        base = gw.url.replace("http", "ws") + f"/hooks/web/{SESS}/ws"
        for bad in ("", f"?token={hs256(exp_in=-3600)}", f"?token={hs256(key='k' * 40)}"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await http.ws_connect(base + bad + ("&" if bad else "?") + "user=mallory")
            assert err.value.status == 401
        assert wsbot.upgrades == []
        assert (await read_balances(rclient, WS)).app[SESS] == FUNDS

        async with http.ws_connect(f"{base}?lang=en&token={hs256('alice')}&v=2") as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str()) == "echo:hello"
        assert wsbot.upgrades == [("/ws?lang=en&v=2", "alice")]
        assert wsbot.auth == ["verified"]
        assert (await read_balances(rclient, WS)).app[SESS] == FUNDS - 200_000


# ------------------------------------------------------------ required everywhere


async def test_require_channel_auth_refuses_channels_without_secret(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, openid: OpenId
) -> None:
    settings = settings_for(redis_url, tmp_path, openid, require_channel_auth=True)
    await seed_one(rclient, settings, APP, bot.url, "contact_center")
    await set_secret(rclient, settings, APP, "web")
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        h = {"X-Channel-User-Id": "u1"}
        async with http.post(f"{gw.url}/hooks/voice/{APP}", data=b"hi", headers=h) as resp:
            assert resp.status == 403
            assert (await resp.json())["code"] == "channel_not_authenticated"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(gw.url.replace("http", "ws") + f"/hooks/voice/{APP}/ws?user=u")
        assert err.value.status == 403
        h = {"Authorization": f"Bearer {hs256()}"}
        async with http.post(f"{gw.url}/hooks/web/{APP}", data=b"hi", headers=h) as resp:
            assert resp.status == 200
    assert bot.count() == 1
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS - PRICE


# --------------------------------------------------------------------- billability


@pytest.mark.parametrize(
    ("channel", "file"),
    [
        ("slack", "slack-url-verification.json"),
        ("msteams", "msteams-typing.json"),
        ("whatsapp", "whatsapp-status.json"),
    ],
)
async def test_authenticated_non_messages_pass_unmetered_even_without_credit(
    world: World, channel: str, file: str
) -> None:
    body = sample_now(file)

    def signed(b: bytes) -> dict[str, str]:
        if channel == "slack":
            return slack_headers(b)
        if channel == "whatsapp":
            return meta_headers(b)
        return {"Authorization": f"Bearer {world.openid.token('k1')}"}

    before = await world.state()
    status, _ = await world.post(f"/hooks/{channel}/{BROKE}/cb", body, signed(body))
    assert status == 200
    assert world.bot.calls[0].body == body
    assert await world.state() == before
    # ...while a real message of the same channel is refused for want of credit
    message = sample_now(f"{channel}-message.json")
    status, problem = await world.post(f"/hooks/{channel}/{BROKE}/cb", message, signed(message))
    assert (status, problem["code"]) == (402, "credits_exhausted")
    assert world.bot.count() == 1
    # ...and the same callback on an unauthenticated channel is billed
    status, _ = await world.post(f"/hooks/{channel}/{BARE}/cb", body, {"X-Channel-User-Id": "u1"})
    assert status == 402
    assert world.bot.count() == 1


# ------------------------------------------------------------------------- notify


async def test_notify_needs_a_token_signed_with_the_channel_secret(world: World) -> None:
    path = f"/notify/web/{APP}/send"
    await refused_unmetered(world, path, b"note", {})
    await refused_unmetered(
        world, path, b"note", {"Authorization": f"Bearer {hs256(key='z' * 40, aud=NOTIFY_AUD)}"}
    )
    await refused_unmetered(
        world, path, b"note", {"Authorization": f"Bearer {hs256(exp_in=-3600, aud=NOTIFY_AUD)}"}
    )
    # An end user's chat token (signed with the same secret) is no notify token.
    await refused_unmetered(world, path, b"note", {"Authorization": f"Bearer {hs256()}"})
    token = hs256(sub=None, aud=NOTIFY_AUD)
    status, _ = await world.post(path, b"note", {"Authorization": f"Bearer {token}"})
    assert status == 200
    call = world.bot.calls[-1]
    assert call.path_qs == "/out/web/send"
    assert "Authorization" not in call.headers  # the gateway's credential stays here
    assert (await read_balances(world.rclient, WS)).app[APP] < FUNDS


async def test_notify_refused_on_channels_without_a_notify_key(world: World) -> None:
    before = await world.state()
    # no secret at all on "voice"; msteams' secret is an App ID (public), no notify_secret
    for path, key in ((f"/notify/voice/{APP}", SECRET), (f"/notify/msteams/{APP}", APP_ID_MS)):
        h = {"Authorization": f"Bearer {hs256(key=key, aud=NOTIFY_AUD)}"}
        status, problem = await world.post(path, b"note", h)
        assert (status, problem["code"]) == (403, "channel_not_authenticated"), problem
    assert world.bot.count() == 0
    assert await world.state() == before
    await set_secret(world.rclient, world.settings, APP, "msteams", APP_ID_MS, notify=NOTIFY)
    h = {"Authorization": f"Bearer {hs256(key=NOTIFY, aud=NOTIFY_AUD)}"}
    status = 0
    for _ in range(300):  # each worker follows a change within channel_secret_max_age_s
        status = (await world.post(f"/notify/msteams/{APP}", b"note", h))[0]
        if status != 403:
            break
        await asyncio.sleep(0.01)
    assert status == 200
    assert world.bot.count() == 1


# ------------------------------------------------------------------ start-up check


async def test_secrets_that_cannot_be_decrypted_stop_start_up(
    redis_url: str, tmp_path: Path, openid: OpenId
) -> None:
    from config import SettingsError
    from meter.store import open_store

    settings = settings_for(redis_url, tmp_path, openid)
    async with open_store(settings.store_url) as store:
        await store.migrate()
        assert await channel_secrets.check_key(store, settings) == 0
        async with store.connection() as c:
            await c.execute(
                "INSERT INTO users (id, email, name, token_hash, created_at) "
                "VALUES ('u1', 'a@b.c', 'A', 'h', 0)"
            )
            await c.execute(
                "INSERT INTO workspaces (id, name, owner_id, created_at) "
                f"VALUES ('{WS}', 'W', 'u1', 0)"
            )
            await c.execute(
                "INSERT INTO apps (id, workspace_id, name, product, owner_id, created_at) "
                f"VALUES ('{APP}', '{WS}', 'A', 'automation', 'u1', 0)"
            )
        f = channel_secrets.cipher(settings)
        assert f is not None
        await store.put_app_channel(
            AppChannel(APP, "web", "jwt_hs256", f.encrypt(b"x" * 32).decode(), 0)
        )
        assert await channel_secrets.check_key(store, settings) == 1
        with pytest.raises(SettingsError, match="SECRET_KEY"):
            await channel_secrets.check_key(store, settings.model_copy(update={"secret_key": None}))
        other = settings.model_copy(update={"secret_key": "another-key-" + "o" * 20})
        with pytest.raises(SettingsError, match="does not decrypt"):
            await channel_secrets.check_key(store, other)
        # Rotation: with the old key as the previous one, the stored secret is read and
        # re-encrypted under the new key, so the old key may then go.
        rotating = other.model_copy(update={"secret_key_previous": settings.secret_key})
        assert await channel_secrets.check_key(store, rotating) == 1
        (row,) = await store.list_app_channels()
        new = channel_secrets.cipher(other)
        assert new is not None
        assert channel_secrets.decrypt(new, row.secret_enc) == "x" * 32
        assert await channel_secrets.check_key(store, other) == 1
        with pytest.raises(SettingsError, match="does not decrypt"):
            await channel_secrets.check_key(store, settings)
        # A secret set while the check re-encrypts wins: the re-encryption writes only
        # over the row it read.
        stale = dataclasses.replace(row, secret_enc="read-before-a-new-set")
        newer = dataclasses.replace(row, secret_enc="x")
        assert not await store.reencrypt_app_channel(stale, newer)
        assert [r.secret_enc for r in await store.list_app_channels()] == [row.secret_enc]
        await store.put_app_channel(
            AppChannel(APP, "web", "jwt_hs256", f.encrypt(b"x" * 32).decode(), 0)
        )
    # `creditgate serve` says so and exits 2 before it serves anything
    from tests.support.serving import CREDITGATE, creditgate_env

    env = creditgate_env(redis_url=redis_url, store_url=settings.store_url, host="127.0.0.1",
                         traffic_port=0, admin_port=0, workers=1,
                         secret_key=other.secret_key)  # fmt: skip
    res = await asyncio.to_thread(
        subprocess.run, [CREDITGATE, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stderr
    assert "CREDITGATE_SECRET_KEY" in res.stderr
    assert "does not decrypt" in res.stderr


async def test_a_worker_without_the_key_refuses_instead_of_passing(world: World) -> None:
    """A secret this worker cannot decrypt is never treated as 'no secret'."""
    wrong = world.settings.model_copy(update={"secret_key": "another-key-" + "o" * 20})
    await set_secret(world.rclient, wrong, APP, "web")
    status, problem = await world.post(
        f"/hooks/web/{APP}", b"hi", {"Authorization": f"Bearer {hs256()}"}
    )
    assert (status, problem["code"]) == (503, "channel_auth_unavailable")
    assert world.bot.count() == 0


def test_the_redis_projection_keeps_secrets_encrypted() -> None:
    ch = AppChannel(APP, "slack", "slack_v0", "gAAAA-token", 0, "gAAAA-notify")
    doc = json.loads(channel_secrets.projected(ch))
    assert doc == {"scheme": "slack_v0", "secret": "gAAAA-token", "notify": "gAAAA-notify"}
    assert channel_secrets.field_of("slack") == "ch:slack"
    assert keys.CHANNEL_RE.match("slack")


# ------------------------------------------------------------- through the admin API


async def test_channel_secret_via_admin_api_is_never_shown(
    redis_url: str, tmp_path: Path, bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.support.adminkit import admin_server, admin_settings
    from tests.support.settings import OPERATOR_TOKEN

    caplog.set_level(logging.DEBUG)
    settings = admin_settings(redis_url, tmp_path)
    secret = "web-sdk-signing-key-" + "v" * 20
    async with admin_server(settings, traffic=True) as admin, aiohttp.ClientSession() as http:
        token, ws = await admin.owner_workspace()
        app = await admin.ok(
            "POST", f"/v1/workspaces/{ws}/apps", token,
            {"name": "Bot", "product": "automation", "upstream_url": bot.url},
        )  # fmt: skip
        app_id = app["id"]
        answers = []
        status, body = await admin.api("PUT", f"/v1/apps/{app_id}/channels/web", token,
                                       {"secret": "short"})  # fmt: skip
        assert status == 422
        assert body["field"] == "secret"
        assert "short" not in json.dumps(body)
        out = await admin.ok("PUT", f"/v1/apps/{app_id}/channels/web", token, {"secret": secret})
        answers.append(out)
        assert out["scheme"] == "jwt_hs256"
        assert out["enabled"]
        assert out["notify"]
        assert out["updated_at"]
        answers.append(await admin.ok("GET", f"/v1/apps/{app_id}/channels", token))
        assert [c["channel"] for c in answers[-1]["items"]] == ["web"]
        answers.append(await admin.ok("GET", f"/v1/apps/{app_id}", token))
        answers.append(await admin.ok("GET", f"/v1/workspaces/{ws}/plan-usage", token))

        url = f"{admin.traffic_url}/hooks/web/{app_id}"
        async with http.post(url, data=b"hi", headers={"X-Channel-User-Id": "u"}) as resp:
            assert resp.status == 401
        h = {"Authorization": f"Bearer {hs256('alice', key=secret)}"}
        async with http.post(url, data=b"hi", headers=h) as resp:
            assert resp.status == 200
        assert bot.count() == 1

        # stored encrypted, projected encrypted, audited without it
        [row] = await admin.store.list_app_channels(app_id)
        assert secret not in row.secret_enc
        ws_id = keys.workspace_of(app_id)
        assert ws_id is not None
        projected = await admin.redis.hget(keys.app_key(ws_id, app_id), "ch:web")
        assert projected is not None
        assert secret.encode() not in projected
        audit = await admin.store.list_audit(target=f"app:{app_id}")
        assert any(e.action == "channel.set" for e in audit)
        assert secret not in repr(audit)

        answers.append(await admin.ok("DELETE", f"/v1/apps/{app_id}/channels/web", token))
        assert answers[-1]["enabled"] is False
        assert (await admin.ok("GET", f"/v1/apps/{app_id}/channels", token))["items"] == []
        # unauthenticated again (within channel_secret_max_age_s): a header user is billed
        status = 0
        for _ in range(300):
            async with http.post(url, data=b"hi", headers={"X-Channel-User-Id": "u"}) as resp:
                status = resp.status
            if status != 401:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        assert bot.count() == 2
        status, _ = await admin.api("PUT", f"/v1/apps/{app_id}/channels/Bad!", OPERATOR_TOKEN,
                                    {"secret": secret})  # fmt: skip
        assert status == 404
    assert secret not in json.dumps(answers)
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text


# ----------------------------------------------- a real Slack Bolt app behind us


async def test_slack_bolt_app_behind_the_gateway(
    redis_url: str, tmp_path: Path, rclient: RedisClient, openid: OpenId
) -> None:
    """Acceptance: Bolt verifies Slack's signature itself on what the gateway forwards."""
    from slack_bolt.async_app import AsyncApp
    from slack_bolt.authorization import AuthorizeResult

    async def authorize(**_: Any) -> AuthorizeResult:  # no call to Slack's API
        return AuthorizeResult(enterprise_id=None, team_id="T061EG9R6", bot_user_id="UBOT",
                               bot_id="BBOT", bot_token="xoxb-not-used")  # fmt: skip

    signing_secret = "8f742231b10e8888abcd99yyyzzz85a5"
    bolt = AsyncApp(signing_secret=signing_secret, authorize=authorize)
    handled: list[dict[str, Any]] = []

    @bolt.event("message")
    async def on_message(event: dict[str, Any]) -> None:
        handled.append(event)

    settings = settings_for(redis_url, tmp_path, openid)
    async with serve(bolt.web_app(path="/slack/events")) as bolt_url:
        upstream = f"{bolt_url}/slack/events"
        await seed_one(rclient, settings, APP, upstream, "contact_center")
        await set_secret(rclient, settings, APP, "slack", signing_secret)
        async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
            url = f"{gw.url}/hooks/slack/{APP}"
            body = sample("slack-message.json")
            h = {"Content-Type": "application/json", **slack_headers(body, signing_secret)}
            async with http.post(url, data=body, headers=h) as resp:
                assert resp.status == 200, await resp.text()
            # Slack's URL check is answered by Bolt, unmetered
            check = sample("slack-url-verification.json")
            h = {"Content-Type": "application/json", **slack_headers(check, signing_secret)}
            async with http.post(url, data=check, headers=h) as resp:
                assert resp.status == 200
                assert (await resp.json())["challenge"] == json.loads(check)["challenge"]
            # a forged one never reaches Bolt
            h = {"Content-Type": "application/json", **slack_headers(body, "f" * 32)}
            async with http.post(url, data=body, headers=h) as resp:
                assert resp.status == 401
    assert [e["user"] for e in handled] == ["U2147483697"]
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS - PRICE


async def test_msteams_keys_unreachable_is_503_not_a_pass(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, openid: OpenId
) -> None:
    from tests.support.servers import free_port

    settings = settings_for(redis_url, tmp_path, openid).model_copy(
        update={"msteams_openid_url": f"http://127.0.0.1:{free_port()}/openid"}
    )
    await seed_one(rclient, settings, APP, bot.url, "contact_center")
    await set_secret(rclient, settings, APP, "msteams", APP_ID_MS)
    body = sample("msteams-message.json")
    h = {"Authorization": f"Bearer {openid.token('k1')}", "Content-Type": "application/json"}
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(f"{gw.url}/hooks/msteams/{APP}", data=body, headers=h) as resp:
                assert resp.status == 503
                assert (await resp.json())["code"] == "channel_auth_unavailable"
    assert bot.count() == 0
    assert (await read_balances(rclient, WS)).app[APP] == FUNDS


async def test_msteams_unknown_kid_during_an_outage_is_401_once_keys_were_fetched(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, openid: OpenId
) -> None:
    # 503 channel_auth_unavailable is the gateway's own error (it pages): while the
    # provider fails, an outsider's token naming a kid never published must not produce
    # it once a key set is in hand. A known kid still passes (503 only before any fetch:
    # test_msteams_keys_unreachable_is_503_not_a_pass).
    settings = settings_for(redis_url, tmp_path, openid)  # refetch on every unknown kid
    await seed_one(rclient, settings, APP, bot.url, "contact_center")
    await set_secret(rclient, settings, APP, "msteams", APP_ID_MS)
    body = json.loads(sample("msteams-message.json"))
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with running_gateway(settings) as gw, aiohttp.ClientSession() as http:

        async def post(token: str, activity: str) -> int:
            h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            data = json.dumps({**body, "id": activity}).encode()
            async with http.post(f"{gw.url}/hooks/msteams/{APP}", data=data, headers=h) as resp:
                return resp.status

        assert await post(openid.token("k1"), "a1") == 200
        openid.failing = True
        fetches = openid.fetches
        assert [await post(openid.token(f"zz{i}", key=attacker), "x") for i in range(3)] == [
            401
        ] * 3
        assert openid.fetches > fetches  # the provider was asked, and failed
        assert await post(openid.token("k1"), "a2") == 200
    assert bot.count() == 2


async def test_a_signed_body_without_its_user_takes_none_from_a_header(world: World) -> None:
    # A Slack team_join's event.user is an object: no signed user. The header named one,
    # so the same signed event replayed with other user headers opened a session each.
    body = json.dumps({"type": "event_callback", "event_id": "EvJoin1",
                       "event": {"type": "team_join", "user": {"id": "U1"}}}).encode()  # fmt: skip
    path = f"/hooks/slack/{APP}/slack/events"
    good = slack_headers(body)
    for i in range(3):
        status, answer = await world.post(path, body, {**good, "X-Channel-User-Id": f"x{i}"})
        assert (status, answer["code"]) == (400, "missing_channel_user"), (status, answer)
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS
    assert not world.bot.calls


async def test_a_replayed_signed_body_cannot_be_recharged_with_other_headers(
    world: World,
) -> None:
    # Within Slack's 5-minute window a captured signed event can be replayed; headers are
    # not signed, so a forged user or key header must not turn it into new messages.
    body = sample("slack-message.json")
    path = f"/hooks/slack/{APP}/slack/events"
    good = slack_headers(body)
    statuses = []
    for i in range(8):
        forged = {**good, "X-Channel-User-Id": f"victim{i}", "Idempotency-Key": f"k{i}"}
        statuses.append((await world.post(path, body, forged))[0])
    assert statuses == [200] * 5 + [409] * 3  # one message, honoured at most 5 times
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE
    # The bot is told the user and key that were metered, never the forged ones.
    assert {c.headers.get("X-Channel-User-Id") for c in world.bot.calls} == {"U2147483697"}
    assert {c.headers.get("Idempotency-Key") for c in world.bot.calls} == {"Ev0PV52K21"}


async def test_the_bot_is_told_the_signed_user_not_the_clients(world: World) -> None:
    """WhatsApp signs the body, not the headers: a client's user and key headers beside
    a signed message never reach the bot, on a callback that is not metered either."""
    body = sample_now("whatsapp-message.json")
    path = f"/hooks/whatsapp/{APP}"
    forged = {"X-Channel-User-Id": "victim", "X-CHANNEL-USER-ID": "victim2"}
    assert (await world.post(path, body, {**meta_headers(body), **forged}))[0] == 200
    call = world.bot.calls[-1]
    assert call.headers.getall("X-Channel-User-Id") == ["16505551234"]
    assert "Idempotency-Key" not in call.headers  # none came: none is made up
    wamid = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="
    keyed = {**meta_headers(body), "Idempotency-Key": "k9"}
    assert (await world.post(path, body, keyed))[0] == 200  # the same message: no charge
    assert world.bot.calls[-1].headers.getall("Idempotency-Key") == [wamid]
    assert (await read_balances(world.rclient, WS)).app[APP] == FUNDS - PRICE
    status = sample_now("whatsapp-status.json")  # not a user message: unmetered
    assert (await world.post(path, status, {**meta_headers(status), **forged}))[0] == 200
    assert "X-Channel-User-Id" not in world.bot.calls[-1].headers
    assert world.bot.count() == 3


async def test_a_forged_msteams_token_is_refused_before_the_body_is_read(world: World) -> None:
    """As a bearer token or a missing signature (test_expect_upgrade): what the head alone
    refuses gets the refusal instead of a 100, and no body is asked for. A forged Bot
    Framework token had the gateway answer 100 and read up to MAX_BODY_BYTES first."""
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    o = world.openid
    body = sample("msteams-message.json")

    def head(token: str) -> bytes:  # the body announced and asked for (100-continue)
        return (
            f"POST /hooks/msteams/{APP}/api/messages HTTP/1.1\r\nHost: gw\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
        ).encode()

    for token in (
        o.token("k1", key=attacker),  # the published kid, another key
        o.token("k1", exp_in=-3600),
        o.token("k1", aud="another-bot-app-id"),
        o.token("k1", serviceurl=None),
        o.token("nope", key=attacker),
        "not.a.jwt",
    ):
        before = await world.state()
        async with RawConn.open(world.gw.url) as c:
            c.send(head(token))
            resp = await c.response()  # a 100 here fails the status below
            assert resp.status == 401, (resp.status, resp.body[:200])
            assert json.loads(resp.body)["code"] == "invalid_channel_signature"
        assert world.bot.count() == 0
        assert await world.state() == before
    # A valid token is still asked for its body and served.
    async with RawConn.open(world.gw.url) as c:
        c.send(head(o.token("k1")))
        assert (await c.response()).status == 100
        c.send(body)
        assert (await c.response()).status == 200
    assert world.bot.count() == 1


async def test_a_malformed_published_key_is_skipped_not_a_500(world: World) -> None:
    """A key PyJWT cannot even read (an ``alg`` that is a list raised TypeError out of
    the key set: 500 for every Teams request) is skipped; the others verify."""
    o = world.openid
    o.odd_keys = [{"kty": "RSA", "kid": "odd", "n": "AQAB", "e": "AQAB", "alg": ["RS256"]}]
    body = sample("msteams-message.json")
    path = f"/hooks/msteams/{APP}/api/messages"
    status, _ = await world.post(path, body, {"Authorization": f"Bearer {o.token('k1')}"})
    assert status == 200
    assert world.bot.count() == 1


async def test_an_oversized_key_set_is_a_failed_fetch(world: World) -> None:
    """The key set is read up to 1 MiB (Microsoft's is ~10 KB): one past it is not
    taken (503 while no key set was ever fetched), so whoever answers for the provider
    cannot fill a worker's memory."""
    o = world.openid
    o.padding = 1 << 20
    body = sample("msteams-message.json")
    path = f"/hooks/msteams/{APP}/api/messages"
    status, problem = await world.post(path, body, {"Authorization": f"Bearer {o.token('k1')}"})
    assert (status, problem["code"]) == (503, "channel_auth_unavailable")
    assert world.bot.count() == 0
    o.padding = 0
    status, _ = await world.post(path, body, {"Authorization": f"Bearer {o.token('k1')}"})
    assert status == 200
