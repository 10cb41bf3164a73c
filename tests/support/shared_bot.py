"""Two tenants' apps on one raw bot (:mod:`tests.support.rawbot`), for tests that a bot's
stray bytes never reach another tenant's message: the attacker's app answers on ``/a``,
the victim's on ``/b``, each workspace with :data:`FREE` micro-dollars of free credit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from meter.accounts.seeding import seed
from meter.redis_layer.client import RedisClient
from tests.support.bot import Running, SeededGateway, free_credit
from tests.support.rawbot import RawBot, running_raw_bot

FREE = 10_000_000
PRICE = 10_000  # contact_center: one cent a message


@dataclass
class Shared:
    """The gateway, the bot both apps share, and the attacker's workspace."""

    gw: Running
    bot: RawBot
    rclient: RedisClient
    ws: str

    async def spent(self) -> int:
        """Messages charged to the attacker's workspace."""
        return (FREE - await free_credit(self.rclient, self.ws)) // PRICE


@asynccontextmanager
async def shared_bot(
    seeded_gateway: SeededGateway, rclient: RedisClient, app: str, victim: str
) -> AsyncIterator[Shared]:
    """A gateway with ``app`` (workspace ``{ws}_...``) on the bot's ``/a`` and the
    ``victim`` app of another workspace on its ``/b``."""
    ws, other = app.rsplit("_", 1)[0], victim.rsplit("_", 1)[0]
    async with running_raw_bot() as bot:
        apps = {app: {"product": "contact_center", "upstream_url": bot.url + "/a"}}
        async with seeded_gateway(ws, apps, free=FREE) as gw:
            victims = {victim: {"product": "contact_center", "upstream_url": bot.url + "/b"}}
            await seed(rclient, gw.gateway.settings, other, victims, free=FREE)
            yield Shared(gw, bot, rclient, ws)
