"""Replays of signed WhatsApp bodies, on both traffic servers (gateway.channel_stamps).

Meta's signature holds no time: a captured signed body verified for ever. Replayed once
its message's idempotency record had expired (``IDEMPOTENCY_TTL_S``), it was a new
message, charged again, once a window; a captured delivery status reached the bot for
free, as often as it was sent. A signed item (message or status) whose own ``timestamp``
is older than the window less the clock skew allowed, more than that skew in the future,
missing or malformed is refused 401 ``invalid_channel_signature``: nothing metered, the
bot not called, the whole delivery.

Timestamps are chosen hours away from every bound, so no test depends on how long it runs.
Real Redis, a real gateway and bot on loopback sockets.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from config import Settings
from gateway.json_pointer import MAX_WALK
from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Bot, running_gateway
from tests.support.channel_keys import AuthWorld, auth_settings, meta_headers, set_secret
from tests.support.fresh import sample_now

pytestmark = pytest.mark.usefixtures("traffic_server")

WS = "wareplay"
APP = f"{WS}_app1"  # contact_center: $0.01 per request
BROKE = f"{WS}_broke"  # no credit at all: statuses must still reach its bot
OPEN = f"{WS}_open"  # no WhatsApp secret: unauthenticated
FUNDS = 10_000_000
PRICE = 10_000
HOUR = 3600


class World(AuthWorld):
    cfg: Settings

    async def post(self, body: bytes, app: str = APP, signed: bool = True) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(meta_headers(body) if signed else {})}
        url = f"{self.gw.url}/hooks/whatsapp/{app}"
        async with self.http.post(url, data=body, headers=h) as resp:
            raw = await resp.read()
            if "json" in resp.headers.get("Content-Type", ""):
                return resp.status, json.loads(raw)
            return resp.status, raw

    @property
    def oldest_s(self) -> float:
        """The age past which a signed item is refused (the window less the skew)."""
        return self.cfg.idempotency_ttl_s - self.cfg.channel_jwt_leeway_s


@pytest.fixture
async def world(
    redis_url: str, tmp_path: Path, rclient: RedisClient, bot: Bot, http: aiohttp.ClientSession
) -> AsyncIterator[World]:
    cfg = auth_settings(redis_url, tmp_path)
    apps: dict[str, dict[str, Any]] = {
        APP: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS},
        BROKE: {"product": "automation", "upstream_url": bot.url, "use_free_credits": False},
        OPEN: {"product": "contact_center", "upstream_url": bot.url, "funds": FUNDS},
    }
    await seed(rclient, cfg, WS, apps)
    for app in (APP, BROKE):
        await set_secret(rclient, cfg, app, "whatsapp")
    async with running_gateway(cfg) as gw:
        w = World(WS, gw, bot, rclient, http)
        w.cfg = cfg
        yield w


def delivery(*items: tuple[str, dict[str, Any]]) -> bytes:
    """A WhatsApp delivery: each item ``("messages" | "statuses", fields)`` over the
    sample's message or status (a field ``...``: left out), in a change of its own; the
    key may be spelt otherwise (``Statuses``)."""
    message = json.loads(sample_now("whatsapp-message.json"))["entry"][0]["changes"][0]
    status = json.loads(sample_now("whatsapp-status.json"))["entry"][0]["changes"][0]
    changes = []
    for kind, fields in items:
        change = json.loads(json.dumps(message if kind.lower() == "messages" else status))
        template = change["value"].pop(kind.lower())[0]
        change["value"][kind] = [{k: v for k, v in {**template, **fields}.items() if v is not ...}]
        changes.append(change)
    doc = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]}
    return json.dumps(doc).encode()


def at(seconds_from_now: float) -> str:
    return str(int(time.time() + seconds_from_now))


def message(wamid: str, ts: Any, user: str = "16505550001") -> tuple[str, dict[str, Any]]:
    return ("messages", {"from": user, "id": wamid, "timestamp": ts})


def status(wamid: str, ts: Any) -> tuple[str, dict[str, Any]]:
    return ("statuses", {"id": wamid, "timestamp": ts})


async def refused(world: World, body: bytes, app: str = APP) -> str:
    """``body``, signed, is refused 401 with nothing metered and the bot not called;
    the refusal's detail."""
    before, calls = await world.state(), world.bot.count()
    status_, problem = await world.post(body, app)
    assert (status_, problem["code"]) == (401, "invalid_channel_signature"), problem
    assert await world.state() == before
    assert world.bot.count() == calls
    return str(problem["detail"])


async def test_a_signed_message_older_than_the_window_is_refused(world: World) -> None:
    """The cheat: a captured signed message replayed once its record is gone (here: one
    never seen, as after the expiry) was charged as a new message, once a window."""
    stale = delivery(message("wamid.OLD", at(-world.cfg.idempotency_ttl_s - HOUR)))
    assert "older than" in await refused(world, stale)
    assert "older than" in await refused(world, stale)  # and every time after
    async with world.http.get(f"{world.gw.admin_url}/metrics") as resp:
        assert 'creditgate_refusals_total{reason="stale_delivery"} 2.0' in await resp.text()
    # Inside the window it is a message, charged once; its replays are redeliveries.
    recent = delivery(message("wamid.NEW", at(-world.oldest_s + HOUR)))
    for _ in range(2):
        assert (await world.post(recent))[0] == 200
    assert (await world.state())[0].app[APP] == FUNDS - PRICE
    assert world.bot.count() == 2
    # Unsigned (an app without a WhatsApp secret), anyone can write any time: the rule
    # is for signed bodies; such a channel bills every delivery as before.
    assert (await world.post(stale, OPEN, signed=False))[0] == 200
    assert (await world.state())[0].app[OPEN] == FUNDS - PRICE


async def test_a_signed_message_from_the_future_is_refused(world: World) -> None:
    """A stamp past the skew would pass as recent longer than its record lives."""
    far = delivery(message("wamid.FUTURE", at(world.cfg.channel_jwt_leeway_s + HOUR)))
    assert "in the future" in await refused(world, far)
    near = delivery(message("wamid.SKEWED", at(world.cfg.channel_jwt_leeway_s / 2)))
    assert (await world.post(near))[0] == 200
    # Seconds as a JSON integer are read as well.
    whole = delivery(message("wamid.INT", int(time.time())))
    assert (await world.post(whole))[0] == 200
    assert (await world.state())[0].app[APP] == FUNDS - 2 * PRICE


def unreadable(kind: str) -> Any:
    """A timestamp Meta never sends (``...``: none at all)."""
    now = int(time.time())
    return {
        "missing": ...,
        "null": None,
        "empty": "",
        "exponent": "1.7e9",
        "space": f" {now}",
        "fullwidth": "１７４９４１６３８３",  # int() reads them; not ASCII digits
        "millis": str(now * 1000),
        "float": float(now),
        "bool": True,
        "object": {"s": now},
    }[kind]


@pytest.mark.parametrize(
    "kind",
    ["missing", "null", "empty", "exponent", "space", "fullwidth", "millis", "float", "bool",
     "object"],
)  # fmt: skip
async def test_a_signed_item_without_a_readable_timestamp_is_refused(
    world: World, kind: str
) -> None:
    """It cannot be told from a replay: a message (billable) and a status (free) alike."""
    await refused(world, delivery(message("wamid.NOTS", unreadable(kind))))
    await refused(world, delivery(status("wamid.NOTS", unreadable(kind))), BROKE)


async def test_one_stale_item_refuses_the_whole_delivery(world: World) -> None:
    """All or none, as a batch's admission: a stale message or status beside fresh
    messages (of other users) refuses them all; no spelling of a key hides one."""
    old = at(-world.cfg.idempotency_ttl_s - HOUR)
    now = at(0)
    for body in (
        delivery(message("wamid.B1", now), message("wamid.B2", old, "447700900123")),
        delivery(message("wamid.B3", now), status("wamid.B4", old)),
        delivery(message("wamid.B5", now), ("Statuses", {"id": "wamid.B6", "timestamp": old})),
        delivery(message("wamid.B7", now), ("messages", {"id": "wamid.B8", "Timestamp": old})),
    ):
        await refused(world, body)
    assert (await world.state())[0].app[APP] == FUNDS


async def test_a_stale_signed_status_does_not_reach_the_bot(world: World) -> None:
    """A captured delivery status, never metered, reached the bot for free as often as
    it was replayed. Stale, it is refused; a recent one still passes unmetered to an app
    out of credit."""
    stale = delivery(status("wamid.S1", at(-world.cfg.idempotency_ttl_s - HOUR)))
    assert "older than" in await refused(world, stale, BROKE)
    before = await world.state()
    recent = delivery(status("wamid.S2", at(-HOUR)))
    assert (await world.post(recent, BROKE))[0] == 200
    assert world.bot.count() == 1
    assert world.bot.calls[0].body == recent
    assert await world.state() == before


async def test_a_signed_body_of_countless_statuses_is_refused_not_walked(world: World) -> None:
    """Each status's ``timestamp`` was looked up by a walk of its own, outside the walk's
    bound: a signed body of tens of thousands of statuses (free, in no rate window; any
    tenant signs its own) held a worker ~0.6 s a megabyte, its other traffic waiting.
    Past the bound it is refused 422 ``uninspectable_delivery``, as any body the walk
    cannot read; nothing metered, the bot not called."""
    now = int(time.time())
    statuses = [{"id": "s", "timestamp": now}] * (MAX_WALK // 2)
    doc = {"entry": [{"changes": [{"value": {"statuses": statuses}}]}]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    assert len(body) < world.cfg.max_body_bytes
    before = await world.state()
    status_, problem = await world.post(body)
    assert status_ == 422, (status_, problem)  # was 200, the bot called
    assert problem["code"] == "uninspectable_delivery"
    assert await world.state() == before
    assert world.bot.count() == 0
